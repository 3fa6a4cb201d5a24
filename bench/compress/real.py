"""Compression measured on networks users ship (issue 30 item 5): train real students with fdkd's own stages, then
time every graph the run made against torch eager and ONNX Runtime FP32, interleaved.

    .venv-models/bin/python -m bench.compress.real /tmp/real-compress --rounds 5       # data, runs, records
    .venv-models/bin/python -m bench.compress.real /tmp/real-compress --only resnet18 --skip-train
    python -m bench.compress.results --results docs/results/compress.md                 # the tables

The students (``STUDENTS``): ``timm:resnet18`` and ``timm:mobilenetv3_small_100`` on 3x224x224 images taught by the
built-in conv on the pairs' 3 s clips, and the built-in conv audio student on the 3 s clips (log-mel 1x40x301) taught
by the built-in conv on the images (resized to 32x32: only the student's input size matters here). The data is
``bench.compress.real_data``'s generated task (1,000 pairs, 10 classes, split 60/10/30: 300 test rows). Each student
is trained briefly from random weights (no weights are downloaded; fixed epochs, KD from the teacher's logits, no
weight average: ``tests/models/runs.py`` says why for MobileNetV3) and goes through fdkd's export, calibration,
quantize (the INT8 gate search runs where a graph fails its gate) and validation stages as ``fdkd run`` makes them;
then ``bench.compress.run`` times that run directory's graphs at batch 1, 8 and 64 in interleaved rounds and appends
one record per (graph, batch) to ``docs/records/compress-real.jsonl``. Run it from the models venv (timm needs
torch 2.14.1 + torchvision 0.29.1; ``.ci/run`` builds it).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from bench.compress import real_data
from bench.compress import run as compress_run

RECORDS = compress_run.ROOT / "docs" / "records" / "compress-real.jsonl"
# settings every run shares: fixed epochs, a fully labelled manifest, KD, no weight average, parity and calibration
# sized for 224x224 networks (calibration keeps every activation of its rows for entropy/percentile: 128 rows of
# ResNet-18 at 224 are about 1.3 GB; 512, the default, would be 5 GB on a shared 24 GB machine); the INT8 gate search
# off (its passes re-calibrate and re-validate a 224x224 network several times: not in this round's time), so the
# graphs timed are the quantize stage's plain ones and the records say so
COMMON = ["data.source=manifest", "data.labelled=1", "data.manifest.split_fractions=[0.6,0.1,0.3]",
          "data.manifest.clip_seconds=3", "teacher.optim.stop=epochs", "distill.optim.stop=epochs",
          "distill.method=kd", "distill.optim.ema_decay=null", "distill.augment.enabled=false",
          "distill.grad_norm_every=0", "export.parity_atol=1e-3", "validate.gates.fp32_max_abs_logit=1e-3",
          "quantize.calib_samples=128", "quantize.search=false", "validate.latency_repeats=2",
          "validate.latency_batch=8"]
# name -> (manifest, student arch, settings of its own)
STUDENTS = {
    "resnet18": ("audio-teacher.csv", "timm:resnet18",
                 ["teacher.modality=audio", "data.manifest.teacher_modality=audio", "data.manifest.image_channels=3",
                  "teacher.optim.epochs=2", "distill.optim.epochs=5", "distill.optim.batch_size=16",
                  "distill.optim.lr=0.02"]),
    "mobilenetv3_small_100": ("audio-teacher.csv", "timm:mobilenetv3_small_100",
                              ["teacher.modality=audio", "data.manifest.teacher_modality=audio",
                               "data.manifest.image_channels=3", "teacher.optim.epochs=2", "distill.optim.epochs=8",
                               "distill.optim.batch_size=16", "distill.optim.lr=0.01"]),
    "conv-audio-3s": ("image-teacher.csv", "conv",
                      ["data.manifest.image_size=[32,32]", "data.manifest.image_channels=3", "teacher.optim.epochs=3",
                       "distill.optim.epochs=8"]),
}


def train(root: Path, name: str, csv: str, arch: str, sets: list[str]) -> Path:
    """``fdkd run`` of one student (in a subprocess: its own torch threads and memory); returns its run directory.
    A finished run (``validation.json`` there) is kept: the stages' own resume makes a rerun a no-op."""
    run_dir = root / "runs" / name
    args = [f"runs_dir={root}/runs", f"data.cache_dir={root}/data", f"name={name}",
            f"data.manifest.path={root / 'pairs' / csv}", f"distill.student.arch={arch}", *COMMON, *sets]
    cmd = [sys.executable, "-m", "fdkd", "run", *[a for s in args for a in ("--set", s)]]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    (root / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if not (run_dir / "validation.json").exists():
        raise RuntimeError(f"fdkd run of {name} ended without validation.json (exit {proc.returncode}); "
                           f"see {root / f'{name}.log'}:\n{proc.stderr[-3000:]}")
    print(f"{name}: fdkd run {time.time() - t0:.0f} s (exit {proc.returncode})", flush=True)
    return run_dir


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path, help="folder for the generated data, the runs and their logs")
    ap.add_argument("--only", nargs="+", choices=list(STUDENTS), default=list(STUDENTS))
    ap.add_argument("--skip-train", action="store_true", help="time the runs already there")
    ap.add_argument("--skip-bench", action="store_true", help="train only")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=40, help="timed calls at batch 1 per graph (fewer at larger)")
    ap.add_argument("--min-repeats", type=int, default=10)
    ap.add_argument("--records", type=Path, default=RECORDS)
    ap.add_argument("--no-records", action="store_true")
    ap.add_argument("--note", default="")
    args = ap.parse_args(argv)
    real_data.make(args.root / "pairs", 1000, 10)
    for name in args.only:
        csv, arch, sets = STUDENTS[name]
        run_dir = args.root / "runs" / name if args.skip_train else train(args.root, name, csv, arch, sets)
        if args.skip_bench:
            continue
        bench_args = [str(run_dir), "--repeats", str(args.repeats), "--batches", "1", "8", "64", "--rounds",
                      str(args.rounds), "--min-repeats", str(args.min_repeats), "--no-emulated", "--student", arch,
                      "--records", str(args.records), "--note",
                      args.note or f"{name}: bench.compress.real, INT8 gate search off (the quantize stage's graphs)"]
        compress_run.main(bench_args + (["--no-records"] if args.no_records else []))


if __name__ == "__main__":
    main()
