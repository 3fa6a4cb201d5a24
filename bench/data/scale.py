"""Real-size data through every stage of ``fdkd run``: time, samples/s, peak PSS of the process tree, disk (issue 29).

    nice python -m bench.data.scale --sizes 2000,10000            # audio pairs at 2k and 10k
    nice python -m bench.data.scale --sizes 50000                 # one size again (resumes where it stopped)
    nice python -m bench.data.scale --sizes 2000 --kinds depth    # the RGB -> 16-bit depth variant
    python -m bench.data.scale --tables                           # docs/results/data-scale.md from the records
    python -m bench.data.scale --tiny --work /tmp/x --records /tmp/x/r.jsonl   # 24 pairs of 32x32 + 0.2 s (tests)

For each kind (``audio``: 224x224 RGB JPEG teacher + 3 s mono 16-bit WAV at 44.1 kHz student; ``depth``: the same
JPEG teacher + a 224x224 16-bit depth PNG student) and each N (``bench.data.generate``: seeded, class-dependent
content plus noise):

1. ``generate``: the files and their CSV manifest (skipped when the manifest exists);
2. ``fdkd run`` (the installed CLI, as a user runs it) on the manifest with the dataset forced to stream
   (``data.in_memory=false``, where this fdkd has it; otherwise the old in-memory path, recorded as ``path: old``)
   through data build, one teacher epoch, one distillation epoch, export, calibration, quantization, build
   (skipped without a GPU) and validation. The stage a moment belongs to is read from the run's own console (a
   line naming the stage starts it); the tree's PSS (``bench.data.pss``: the process and all its descendants,
   DataLoader workers and torchrun ranks included) is sampled every 0.2 s. ``data`` includes the CLI's start-up.
3. ``raw_decode``: every row's two source files read and decoded by ``fdkd.pipeline.data.kinds.decode`` (with the
   built dataset's column specs where it has them) in one process, in a tight loop: the rate a loader is held to;
4. ``loader``, right after it (the shared machine's load changes by the minute: the two rates are compared only
   when measured back to back): every row of both columns through ``StreamRows.batches`` (batches of 64, 2
   DataLoader workers) over the built on-disk dataset: decode plus the frontends (streaming fdkd only);
5. the sources are deleted (``--keep-sources`` keeps them).

Models: the built-in ``conv`` encoder for both, width 16, depth 3 (its stem halves inputs of 32 px and more, and
each later block halves again: about 0.1 GFLOP per 224x224 image), SGD, batch 64, one epoch each, ``distill.method
kd`` (one student, not ``auto``'s four). Samples/s divides the rows a stage walks by its wall time: data N pairs,
teacher and distill the training rows, export the parity rows, calibrate and quantize the calibration rows,
validate the test rows (each artifact runs them again, so that one is a lower bound).

Records (one JSON object per stage, appended as each stage finishes, with the load average, CPU model and flags,
commit and path) go to ``--records`` (docs/records/data-scale.jsonl); a size is resumable: a rerun skips the files
that exist and the stages ``fdkd run`` finds up to date (no record is written for those), and the decode/loader
phases that already have a record for (kind, N, path) unless ``--redo``. ``--redo`` deletes the size's run and
dataset first. ``--tables`` writes docs/results/data-scale.md's generated section from the records.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench import common
from bench.data import generate
from bench.data.pss import TreeSampler

ROOT = Path(__file__).resolve().parents[2]
RECORDS = ROOT / "docs" / "records" / "data-scale.jsonl"
RESULTS = ROOT / "docs" / "results" / "data-scale.md"
BEGIN, END = "<!-- data-scale:begin -->", "<!-- data-scale:end -->"
RUN_STAGES = ("data", "teacher", "distill", "export", "calibrate", "quantize", "build", "validate")
BATCH, WORKERS = 64, 2
MIN_FREE_GB = 20.0
# issue 29's targets
PSS_RATIO_TARGET, PSS_ABS_TARGET_MIB, LOADER_TARGET = 1.2, 3e9 / 2**20, 0.80  # 3 GB = 2,861 MiB
TINY = {"shape": generate.Shape(size=32, seconds=0.2, rate=44100, classes=4), "width": 4, "depth": 2, "batch": 8}


def _sets(kind: str, n: int, manifest: Path, work: Path, tiny: bool, streaming: bool) -> list[str]:
    width, depth, batch = (TINY["width"], TINY["depth"], TINY["batch"]) if tiny else (16, 3, BATCH)
    sets = [f"name={run_name(kind, n, tiny)}", f"runs_dir={work / 'runs'}", f"data.cache_dir={work / 'data'}",
            "data.source=manifest", f"data.manifest.path={manifest}", "accel.device=cpu",
            f"teacher.model.width={width}", f"teacher.model.depth={depth}",
            "teacher.optim.stop=epochs", "teacher.optim.epochs=1", f"teacher.optim.batch_size={batch}",
            "distill.method=kd", f"distill.student.width={width}", f"distill.student.depth={depth}",
            "distill.optim.stop=epochs", "distill.optim.epochs=1", f"distill.optim.batch_size={batch}"]
    if kind == "depth":
        sets.append("data.manifest.student_modality=depth")
    if streaming:
        sets.append("data.in_memory=false")
    if tiny:  # a handful of rows: calibration takes what there is; gates judge 4 test rows (not what is measured)
        sets += ["quantize.calib_samples=16", "quantize.calib_methods=[minmax]", "build.int8_method=minmax",
                 "validate.gates.fp16_max_acc_drop_pt=100", "validate.gates.int8_max_acc_drop_pt=100",
                 "validate.gates.fp16_min_agree_pct=0", "validate.gates.int8_min_agree_pct=0"]
    return sets


def run_name(kind: str, n: int, tiny: bool) -> str:
    return f"scale-{kind}-{n}" + ("-tiny" if tiny else "")


def streaming_available() -> bool:
    """Whether this fdkd has the streaming dataset (``data.in_memory``, ``load_dataset(..., in_memory=)``)."""
    from fdkd.pipeline.config.data import DataConfig
    from fdkd.pipeline.data.dataset import load_dataset

    return "in_memory" in DataConfig.model_fields and "in_memory" in inspect.signature(load_dataset).parameters


def du_mb(path: Path | None) -> float | None:
    """Bytes on disk under ``path`` (a file or a folder), in MB; None when it does not exist."""
    if path is None or not path.exists():
        return None
    if path.is_file():
        return path.stat().st_blocks * 512 / 1e6
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6


def dataset_path(run_dir: Path) -> Path | None:
    """The run's dataset on disk (the folder of a store, or the old single .npz) from its manifest.json."""
    try:
        m = json.loads((run_dir / "manifest.json").read_text())
        p = Path(m["artifacts"]["dataset"]["path"])
    except (OSError, KeyError, ValueError):
        return None
    p = p if p.is_absolute() else run_dir / p
    return p.parent if p.name == "dataset.json" else p


def same_datasets(cache: Path, kind: str, n: int) -> list[Path]:
    """The dataset folders under ``cache`` holding ``n`` rows with a ``kind`` student column."""
    out = []
    for record in sorted(cache.glob("*/dataset.json")) if cache.exists() else []:
        try:
            d = json.loads(record.read_text())
            student = d["meta"]["modalities"]["student"]
        except (OSError, KeyError, TypeError, ValueError):
            continue
        if d.get("rows") == n and student == kind:
            out.append(record.parent)
    return out


def split_counts(ds: Path) -> dict[str, int]:
    """Rows per split (train/val/test) of a dataset folder (its index.npz) or an old .npz, without its features."""
    import numpy as np

    path = ds / "index.npz" if ds.is_dir() else ds
    with np.load(path, allow_pickle=False) as z:
        split = z["split"]
    return {name: int((split == i).sum()) for i, name in enumerate(("train", "val", "test"))}


def stage_rows(stage: str, n: int, counts: dict[str, int], cfg: dict) -> int | None:
    """The rows ``stage`` walks (see the module docstring); None where it walks none (build)."""
    calib = min(int(cfg.get("quantize", {}).get("calib_samples", 512)), counts.get("train", 0))
    parity = cfg.get("export", {}).get("parity_rows")
    return {"data": n, "teacher": counts.get("train"), "distill": counts.get("train"),
            "export": min(int(parity), counts.get("val", 0)) if parity else counts.get("val"),
            "calibrate": calib, "quantize": calib, "validate": counts.get("test")}.get(stage)


def _base_record(args, kind: str, n: int, path: str, shape: generate.Shape) -> dict:
    from fdkd.serving.runtime.cpu_isa import cpu_model, simd_flags

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return {"bench": "data-scale", "session": args.session, "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
            "cpu": cpu_model(), "flags": simd_flags(), "cpus": os.cpu_count(), "commit": commit, "path": path,
            "note": args.note, "kind": kind, "n": n, "tiny": args.tiny,
            "shape": {"size": shape.size, "seconds": shape.seconds, "rate": shape.rate, "student": shape.student}}


def _emit(args, base: dict, **fields) -> dict:
    rec = base | {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load": _load()} | fields
    if rec.get("rows") and rec.get("wall_s"):
        rec["samples_per_s"] = round(rec["rows"] / rec["wall_s"], 2)
    common.append_records(args.records, [rec])
    print(f"  {rec['stage']:<10} {json.dumps({k: v for k, v in fields.items() if k != 'stage'})}", flush=True)
    return rec


def _have(args, base: dict, stage: str) -> bool:
    """Whether the records hold ``stage`` for this kind, N and path measured at this commit (a resumed size)."""
    if args.redo or not args.records.exists():
        return False
    key = ("kind", "n", "path", "tiny", "commit")
    for line in args.records.read_text().splitlines():
        r = json.loads(line)
        if r.get("stage") == stage and all(r.get(k) == base[k] for k in key):
            return True
    return False


def _specs(ds: Path) -> dict | None:
    """The built dataset's column specs by modality (the store's ``dataset.json``)."""
    try:
        from fdkd.pipeline.data.store import Store
    except ImportError:
        return None
    return dict(Store(ds).columns)


def raw_decode_rate(manifest: Path, shape: generate.Shape, limit: int | None = None, specs: dict | None = None) -> dict:
    """Every row's two files read and decoded (``kinds.decode``) in this process: rows/s. ``specs``: the built
    dataset's column specs (teacher image first); None: what the manifest build does with the defaults."""
    from fdkd.pipeline.data.kinds import ColumnSpec, decode

    image = ColumnSpec("image", size=(shape.size, shape.size), channels=3)
    if shape.student == "depth":
        student = ColumnSpec("depth", size=(shape.size, shape.size))
    else:  # resampled to 16 kHz, the clips' own length
        student = ColumnSpec("audio", sample_rate=16000, clip_samples=int(round(16000 * shape.seconds)))
    if specs:
        image, student = specs.get("image", image), specs.get(shape.student, student)
    root = manifest.parent
    rows = [line.split(",")[:2] for line in manifest.read_text().splitlines()[1:]][:limit]
    decode(image, (root / rows[0][0]).read_bytes())  # imports (PIL, scipy) and first-call costs out of the timing
    decode(student, (root / rows[0][1]).read_bytes())
    t0 = time.perf_counter()
    for t, s in rows:
        decode(image, (root / t).read_bytes())
        decode(student, (root / s).read_bytes())
    wall = time.perf_counter() - t0
    return {"wall_s": round(wall, 2), "rows": len(rows)}


def loader_rate(ds_path: Path) -> dict:
    """Every row of both columns through ``StreamRows.batches`` (batches of ``BATCH``, ``WORKERS`` workers) over
    the on-disk dataset, with peak PSS of this process tree while it runs."""
    import numpy as np

    from fdkd.pipeline.data.dataset import load_dataset

    ds = load_dataset(ds_path, in_memory=False)
    n = len(ds.y)
    batches = [np.arange(lo, min(lo + BATCH, n)) for lo in range(0, n, BATCH)]
    sampler = TreeSampler(os.getpid()).start()
    t0 = time.perf_counter()
    for x in ds.x.values():
        for _ in x.batches(batches, WORKERS):
            pass
    wall = time.perf_counter() - t0
    sampler.stop()
    kb, procs, count = sampler.peak()
    return {"wall_s": round(wall, 2), "rows": n, "peak_pss_mib": _kib(kb), "procs": procs, "pss_samples": count,
            "modalities": list(ds.x)}


def fdkd_run(args, base: dict, kind: str, n: int, manifest: Path, shape: generate.Shape, streaming: bool) -> None:
    """``fdkd run`` under the PSS sampler; one record per stage it ran, one for the whole run."""
    run_dir = args.work / "runs" / run_name(kind, n, args.tiny)
    cmd = [str(Path(sys.executable).parent / "fdkd"), "run",
           *[a for s in _sets(kind, n, manifest, args.work, args.tiny, streaming) for a in ("--set", s)]]
    env = os.environ | {"COLUMNS": "200"}  # rich wraps at the terminal width: keep each stage's line whole
    log = (args.work / "logs" / f"{run_name(kind, n, args.tiny)}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
    sampler = TreeSampler(proc.pid).start()
    # the stage now running: name, start, whether fdkd found it up to date, load average at its start
    cur = {"stage": "data", "t0": t_start, "skipped": False, "load_start": _load()}
    ran: list[str] = []

    def finish(t1: float, failed: bool = False) -> None:
        if cur["skipped"]:
            return
        ran.append(cur["stage"])
        ds = dataset_path(run_dir)
        counts = split_counts(ds) if ds is not None and ds.exists() else {}
        kb, procs, count = sampler.peak(cur["t0"], t1)
        _emit(args, base, stage=cur["stage"], status="failed" if failed else "done", wall_s=round(t1 - cur["t0"], 2),
              rows=stage_rows(cur["stage"], n, counts, _run_config(run_dir)), peak_pss_mib=_kib(kb), procs=procs,
              pss_samples=count, disk_dataset_mb=_mb(du_mb(ds)), disk_run_mb=_mb(du_mb(run_dir)), splits=counts,
              load_start=cur["load_start"])

    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        for line in proc.stdout:
            now = time.monotonic()
            out.write(line)
            text = line.strip()
            stage = next((s for s in RUN_STAGES if text in (s, f"{s}: up to date, skipped")), None)
            if stage is None:
                continue
            if stage == cur["stage"]:  # the data stage's own line comes after the build ``fdkd run`` starts with
                cur["skipped"] = text.endswith("skipped")
                continue
            finish(now)  # each stage's record is appended as it ends: a killed bench keeps what finished
            cur.update(stage=stage, t0=now, skipped=text.endswith("skipped"), load_start=_load())
    rc = proc.wait()
    t_end = time.monotonic()
    sampler.stop()
    finish(t_end, failed=rc != 0)
    ds = dataset_path(run_dir)
    kb, procs, count = sampler.peak()
    _emit(args, base, stage="run", status="done" if rc == 0 else f"exit {rc}", wall_s=round(t_end - t_start, 2),
          rows=n, peak_pss_mib=_kib(kb), procs=procs, pss_samples=count, disk_dataset_mb=_mb(du_mb(ds)),
          disk_run_mb=_mb(du_mb(run_dir)), stages_run=ran, test_accuracy=_accuracy(run_dir), log=str(log),
          command=" ".join(["fdkd", "run", *cmd[2:]]))
    if rc != 0:
        print(f"  fdkd run exited {rc}; its output: {log}", flush=True)


def _accuracy(run_dir: Path) -> dict[str, float]:
    """Test accuracy of the teacher and the trained student (validation.json), {} before validation ran."""
    try:
        arts = json.loads((run_dir / "validation.json").read_text())["artifacts"]
    except (OSError, KeyError, ValueError):
        return {}
    return {a["name"]: a["metrics"]["accuracy"] for a in arts
            if a["name"] in ("teacher", "student.pt") and "accuracy" in a.get("metrics", {})}


def _mb(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def _kib(kb: int | None) -> float | None:
    return None if kb is None else round(kb / 1024, 1)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _run_config(run_dir: Path) -> dict:
    import yaml

    try:
        return yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except OSError:
        return {}


def bench_size(args, kind: str, n: int) -> None:
    shape = TINY["shape"] if args.tiny else generate.Shape()
    shape = generate.Shape(shape.size, shape.seconds, shape.rate, student=kind, classes=shape.classes)
    streaming = streaming_available()
    path = "stream" if streaming else "old"
    base = _base_record(args, kind, n, path, shape)
    src = args.work / "sources" / (f"{kind}-{n}" + ("-tiny" if args.tiny else ""))
    run_dir = args.work / "runs" / run_name(kind, n, args.tiny)
    print(f"{kind} N={n} ({path} path): {src}", flush=True)
    if args.redo:  # the run, and every dataset of this kind and size in the work's cache: a copy built from an
        # earlier sources folder of the same content would otherwise answer the data stage (seen at 10k: 1.5 s)
        for p in (run_dir, dataset_path(run_dir), *same_datasets(args.work / "data", kind, n)):
            if p is not None and p.exists():
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    free_gb = shutil.disk_usage(args.work).free / 1e9
    if free_gb < MIN_FREE_GB and not args.tiny:
        raise SystemExit(f"{args.work}: {free_gb:.1f} GB free, under the {MIN_FREE_GB:.0f} GB this bench stops at")
    manifest = src / generate.MANIFEST
    if not manifest.exists():
        t0 = time.perf_counter()
        generate.write_pairs(src, n, args.seed, shape, workers=args.gen_workers)
        _emit(args, base, stage="generate", status="done", wall_s=round(time.perf_counter() - t0, 2), rows=n,
              disk_sources_mb=_mb(du_mb(src)))
    fdkd_run(args, base, kind, n, manifest, shape, streaming)
    ds = dataset_path(run_dir)
    if not _have(args, base, "raw_decode"):
        specs = _specs(ds) if streaming and ds is not None and ds.exists() else None
        _emit(args, base, stage="raw_decode", status="done", load_start=_load(),
              **raw_decode_rate(manifest, shape, specs=specs))
    if streaming and ds is not None and ds.exists() and not _have(args, base, "loader"):
        _emit(args, base, stage="loader", status="done", workers=WORKERS, batch=BATCH, load_start=_load(),
              **loader_rate(ds))
    if not args.keep_sources:
        shutil.rmtree(src, ignore_errors=True)


# ---- the generated document ----

def _fmt(v, spec: str = "") -> str:
    return "-" if v is None else format(v, spec)


def render(records: list[dict]) -> str:
    """The generated section of docs/results/data-scale.md: per session, per kind and N, every stage's numbers, then
    the targets read against them."""
    recs = [r for r in records if r.get("bench") == "data-scale" and not r.get("tiny")]
    out = []
    if not recs:
        return "\n\nNo records yet.\n\n"
    sessions = list(dict.fromkeys(r["session"] for r in recs))
    for session in sessions:
        mine = [r for r in recs if r["session"] == session]
        first = mine[0]
        out += ["", f"### Session {session} ({first['cpu']}, {first['cpus']} CPUs, commit {first['commit']}, "
                f"{first['path']} path)", "", *([f"Tree: {first['note']}", ""] if first.get("note") else []),
                f"CPU flags: {' '.join(first['flags']) or '-'}.", "",
                "| kind | N | stage | status | wall s | rows | samples/s | peak PSS MiB (procs) | sources MB "
                "| dataset MB | run MB | load 1/5/15 |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in mine:
            out.append(f"| {r['kind']} | {r['n']} | {r['stage']} | {r['status']} | {_fmt(r.get('wall_s'))} | "
                       f"{_fmt(r.get('rows'))} | {_fmt(r.get('samples_per_s'))} | "
                       f"{_fmt(r.get('peak_pss_mib'))}{' (' + str(r['procs']) + ')' if r.get('procs') else ''} | "
                       f"{_fmt(r.get('disk_sources_mb'))} | {_fmt(r.get('disk_dataset_mb'))} | "
                       f"{_fmt(r.get('disk_run_mb'))} | "
                       f"{' / '.join(map(str, r['load']))} |")
        out += ["", *verdicts(mine)]
    return "\n".join(out) + "\n\n"


def verdicts(recs: list[dict]) -> list[str]:
    """The issue's two benchmark targets read against one session's records: only what they support."""
    lines = []
    for kind in dict.fromkeys(r["kind"] for r in recs):
        runs = {r["n"]: r for r in recs if r["kind"] == kind and r["stage"] == "run"}
        if runs:
            lo, hi = min(runs), max(runs)
            a, b = runs[lo]["peak_pss_mib"], runs[hi]["peak_pss_mib"]
            text = f"- {kind}, peak PSS of `fdkd run`'s tree: {a:.0f} MiB at N={lo}"
            if hi != lo:
                ratio = b / a
                text += (f", {b:.0f} MiB at N={hi}: {ratio:.2f}x (target <= {PSS_RATIO_TARGET}x between 2,000 and "
                         f"50,000 pairs")
                if (lo, hi) == (2000, 50000):
                    text += f"): {'met' if ratio <= PSS_RATIO_TARGET else 'not met'}"
                else:
                    text += "; these sizes are not that pair: a trend, no verdict on the target)"
            text += (f"; target < 3 GB ({PSS_ABS_TARGET_MIB:,.0f} MiB) at 50,000: "
                     + (f"{'met' if runs[50000]['peak_pss_mib'] < PSS_ABS_TARGET_MIB else 'not met'}" if 50000 in runs
                        else "not measured (no 50,000 record)") + ".")
            acc = [f"N={k}: teacher {r['test_accuracy']['teacher']:.2f}, student {r['test_accuracy']['student.pt']:.2f}"
                   for k, r in sorted(runs.items()) if {"teacher", "student.pt"} <= set(r.get("test_accuracy", {}))]
            if acc:
                text += " Test accuracy after one epoch each: " + "; ".join(acc) + "."
            if any(r["status"] != "done" for r in runs.values()):
                text += " Not every run ended cleanly: " + ", ".join(f"N={k} {r['status']}" for k, r in runs.items()
                                                                  if r["status"] != "done") + "."
            lines.append(text)
        sizes = sorted({r["n"] for r in recs if r["kind"] == kind and r.get("peak_pss_mib")})
        if len(sizes) > 1:  # each stage's peak at the smallest and the largest N: which stage grows with N
            lo, hi = sizes[0], sizes[-1]
            peaks = {(r["n"], r["stage"]): r["peak_pss_mib"] for r in recs
                     if r["kind"] == kind and r.get("peak_pss_mib") and r["stage"] in RUN_STAGES}
            both = [s for s in RUN_STAGES if (lo, s) in peaks and (hi, s) in peaks]
            if both:
                lines.append(f"- {kind}, each stage's peak PSS, N={lo} -> N={hi}: " + "; ".join(
                    f"{s} {peaks[lo, s]:.0f} -> {peaks[hi, s]:.0f} MiB ({peaks[hi, s] / peaks[lo, s]:.2f}x)"
                    for s in both) + ".")
        for n in sorted({r["n"] for r in recs if r["kind"] == kind}):
            raw = next((r for r in recs if (r["kind"], r["n"], r["stage"]) == (kind, n, "raw_decode")), None)
            ld = next((r for r in recs if (r["kind"], r["n"], r["stage"]) == (kind, n, "loader")), None)
            if raw and ld:
                share = ld["samples_per_s"] / raw["samples_per_s"]
                lines.append(f"- {kind}, N={n}: loader {ld['samples_per_s']:.0f} rows/s with {ld.get('workers')} "
                             f"workers (decode + frontends, both columns) vs raw decode {raw['samples_per_s']:.0f} "
                             f"rows/s in one process: {100 * share:.0f} % (target >= {100 * LOADER_TARGET:.0f} %): "
                             f"{'met' if share >= LOADER_TARGET else 'not met'} on this machine at this load "
                             f"(1-min load {raw['load'][0]} after the decode loop, {ld['load'][0]} after the loader"
                             f"{'; not measured back to back' if ld.get('load_start') is None else ''}).")
            elif raw:
                lines.append(f"- {kind}, N={n}: raw decode {raw['samples_per_s']:.0f} rows/s; no loader record "
                             "(the old path has no streaming loader).")
    return lines


def write_tables(records_path: Path, results: Path) -> None:
    records = [json.loads(x) for x in records_path.read_text().splitlines() if x.strip()] \
        if records_path.exists() else []
    common.write_section(results, BEGIN, END, render(records))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="2000,10000,50000", help="comma-separated N")
    p.add_argument("--kinds", default="audio", help="comma-separated: audio, depth")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "scale-bench",
                   help="sources, datasets, runs and logs")
    p.add_argument("--records", type=Path, default=RECORDS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gen-workers", type=int, default=2)
    p.add_argument("--tiny", action="store_true", help="24-pair sizes of 32x32 and 0.2 s clips, tiny models")
    p.add_argument("--redo", action="store_true", help="delete each size's run and dataset and measure again")
    p.add_argument("--keep-sources", action="store_true")
    p.add_argument("--note", default="", help="what tree this is, where the commit alone does not say (records)")
    p.add_argument("--tables", action="store_true", help=f"write {RESULTS.relative_to(ROOT)} from --records")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.tables:
        write_tables(args.records, args.results)
        print(args.results.read_text())
        return
    from fdkd.serving.runtime.cpu_isa import describe

    args.session = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    args.work.mkdir(parents=True, exist_ok=True)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    bad = [k for k in kinds if k not in ("audio", "depth")]
    if bad:
        p.error(f"--kinds: unknown {bad}; audio or depth")
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"cpu: {describe()}\nload: {os.getloadavg()}", flush=True)
    for kind in kinds:
        for n in sizes:
            bench_size(args, kind, n)
    records = [json.loads(x) for x in args.records.read_text().splitlines() if x.strip()]
    print(render([r for r in records if r.get("session") == args.session] if not args.tiny else
                 [r | {"tiny": False} for r in records if r.get("session") == args.session]))
    print(f"cpu: {describe()}")
    print("reproduce: nice python -m bench.data.scale " + " ".join(sys.argv[1:] if argv is None else argv)
          + "; then python -m bench.data.scale --tables")


if __name__ == "__main__":
    main()
