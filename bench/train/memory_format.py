"""Training speed of the built-in run's two trained stages in NCHW (contiguous) vs NHWC (channels_last).

    python -m bench.train.memory_format                          # 2 epochs per stage and format, 2 rounds
    python -m bench.train.memory_format --epochs 3 --rounds 3
    python -m bench.train.memory_format --render                 # docs/results/memory-format.md from the records

The teacher (``fdkd teacher``: the image teacher, conv width 64) and the student (``fdkd distill``
with the built-in ``auto`` candidates ``none`` and ``fd`` trained together, augmentation on) are
trained on the built-in avdigits data with ``accel.channels_last`` off and on, interleaved over
``--rounds`` rounds in this one process; the median training-loop seconds per epoch (validation
excluded, from each stage's metrics file) are compared as a ratio, since the machine is shared and
noisy. One JSON record per bench run is appended to ``--records`` (committed), with the CPU model and
flags; ``--render`` writes the section between ``<!-- memory-format:begin -->`` and
``<!-- memory-format:end -->`` of docs/results/memory-format.md from them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from bench import common
from fdkd.serving.runtime.cpu_isa import cpu_model, simd_flags

ROOT = Path(__file__).resolve().parents[2]

RECORDS = ROOT / "docs" / "records" / "memory-format.jsonl"
RESULTS = ROOT / "docs" / "results" / "memory-format.md"
BEGIN, END = "<!-- memory-format:begin -->", "<!-- memory-format:end -->"
FORMATS = {"NCHW (contiguous)": "off", "NHWC (channels_last)": "on"}


def _epoch_seconds(path: Path) -> list[float]:
    return [json.loads(line)["epoch_seconds"] for line in path.read_text().splitlines() if line.strip()]


# The student row times the built-in run of 2026-12-03: every label, `auto`'s none and fd trained together (the
# built-in run keeps 5 % of the labels and trains four candidates since 2026-12-06)
FULLY_LABELLED_NONE_FD = ["data.labelled=1.0", 'distill.auto.candidates=[{"name": "none", "method": "none"}, '
                          '{"name": "fd", "method": "fd"}]']


def measure(epochs: int, rounds: int, out: Path) -> dict:
    import torch

    from fdkd import artifacts
    from fdkd.pipeline import distill, teacher
    from fdkd.pipeline.config import load_config

    seconds: dict[str, dict[str, list[float]]] = {"teacher": {}, "student": {}}
    for _ in range(rounds):
        for fmt, value in FORMATS.items():
            sets = [f"runs_dir={out}", f"name=memory-format-{value}", f"accel.channels_last={value}",
                    f"teacher.optim.epochs={epochs}", f"distill.optim.epochs={epochs}", "distill.grad_norm_every=0",
                    *FULLY_LABELLED_NONE_FD]
            cfg = load_config(None, sets)
            teacher.run(cfg)
            seconds["teacher"].setdefault(fmt, []).extend(
                _epoch_seconds(cfg.run_dir / artifacts.TEACHER_METRICS.format(modality=cfg.teacher.modality)))
            distill.run(cfg)
            seconds["student"].setdefault(fmt, []).extend(_epoch_seconds(cfg.run_dir / artifacts.METRICS)[::2])
    return {"epochs": epochs, "rounds": rounds, "seconds_per_epoch": seconds,
            "cpu_model": cpu_model(), "cpu_flags": simd_flags(), "nproc": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "loadavg": round(os.getloadavg()[0], 2),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": f"python -m bench.train.memory_format --epochs {epochs} --rounds {rounds}"}


def render(records: list[dict]) -> str:
    """One table per record (newest last): median s/epoch per stage and format, and NHWC / NCHW."""
    out = []
    for r in records:
        nchw, nhwc = FORMATS
        out += [f"`{r['command']}` ({r['time'][:10]}; {r['cpu_model']}, flags {' '.join(r['cpu_flags']) or '-'}; "
                f"{r['torch_threads']} torch threads, torch {r['torch']}; median training-loop seconds per epoch, "
                f"{r['epochs']} epochs x {r['rounds']} rounds per cell):", "",
                f"| stage | {nchw} | {nhwc} | NHWC / NCHW |", "|---|---|---|---|"]
        for stage, what in (("teacher", "teacher (image, conv width 64)"),
                            ("student", "student: `auto`'s none + fd together (audio, conv width 16)")):
            a = statistics.median(r["seconds_per_epoch"][stage][nchw])
            b = statistics.median(r["seconds_per_epoch"][stage][nhwc])
            out.append(f"| {what} | {a:.2f} | {b:.2f} | **{b / a:.2f}** |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-memory-format")
    ap.add_argument("--records", type=Path, default=RECORDS)
    ap.add_argument("--render", action="store_true", help="write docs/results/memory-format.md from the records")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.render:
        records = [json.loads(line) for line in args.records.read_text().splitlines() if line.strip()]
        common.write_section(args.results, BEGIN, END, "\n" + render(records))
        print(f"wrote {len(records)} record(s) into {args.results}")
        return
    rec = measure(args.epochs, args.rounds, args.out.resolve())
    with args.records.open("a") as f:
        f.write(json.dumps(rec) + "\n")
    print(render([rec]))
    print(f"reproduce: {rec['command']}")


if __name__ == "__main__":
    main()
