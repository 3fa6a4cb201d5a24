"""Time one training epoch of `fd` against `none` (teacher cached) and against a teacher-every-step loop.

    python -m bench.train.epoch_time                 # on the built-in avdigits data, 3 epochs each, interleaved
    python -m bench.train.epoch_time --epochs 5
    python -m bench.train.epoch_time --render        # docs/results/epoch-time.md from the records

Every variant runs in this one process, interleaved over ``--rounds`` rounds, and the median
training-loop seconds per epoch (evaluation excluded) are compared as ratios: the machine is
shared and noisy, absolute times are not the point. Each run appends one record (every epoch's
seconds per variant, the CPU model and flags, torch, threads, load average) to ``--records``;
``--render`` writes docs/results/epoch-time.md (results.md section 2) from all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

BEGIN, END = "<!-- epoch-time:begin (bench/train/epoch_time.py --render) -->", "<!-- epoch-time:end -->"
TARGET = 1.15  # fd (teacher cached) / none, per epoch, on the CPU (issue 21)

VARIANTS = {
    "none": ["distill.method=none"],
    "fd (teacher cached)": ["distill.method=fd"],
    "fd (teacher every step)": ["distill.method=fd", "distill.teacher_cache=false"],
}


SPREAD_MAX = 1.5  # a record whose epochs' slowest/fastest exceeds this (shared machine) decides nothing


def render(records: list[dict]) -> str:
    out = ["", "| date | CPU (flags) | torch, threads | epochs x rounds | variant | median s / epoch (min-max) "
           "| x none |",
           "|---|---|---|---|---|---|---|"]
    verdicts = []
    for r in records:
        ref = statistics.median(r["seconds"]["none"])
        for name, s in r["seconds"].items():
            x = statistics.median(s) / ref
            mark = f"**{x:.2f}**" if name == "fd (teacher cached)" else f"{x:.2f}"
            out.append(f"| {r['date']} | {r['cpu']} ({' '.join(r['flags'])}) | {r['torch']}, {r['threads']} | "
                       f"{r['epochs']} x {r['rounds']} | {name} | "
                       f"{statistics.median(s):.2f} ({min(s):.2f}-{max(s):.2f}) | {mark} |")
        fd = statistics.median(r["seconds"]["fd (teacher cached)"]) / ref
        spread = max(max(s) / min(s) for s in r["seconds"].values())
        fastest = min(r["seconds"]["fd (teacher cached)"]) / min(r["seconds"]["none"])
        if spread > SPREAD_MAX:  # the fastest epochs are the least disturbed ones (timeit's rule)
            verdict = (f"inconclusive on the median: one variant's epochs spread {spread:.1f}x (limit {SPREAD_MAX}x), "
                       f"the machine was shared; on the fastest epoch of each, {fastest:.2f}x: "
                       f"{'met' if fastest <= TARGET else 'not met'} by that measure")
        else:
            verdict = "met" if fd <= TARGET else "not met"
        verdicts.append(f"- {r['date']} on {r['cpu']}: fd (teacher cached) {fd:.2f}x none; target <= {TARGET}x "
                        f"{verdict} (load average {r['load']:.1f} at the start).")
    return "\n".join([*out, "", *verdicts, ""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-epoch"))
    ap.add_argument("--records", type=Path, default=ROOT / "docs" / "records" / "epoch-time.jsonl")
    ap.add_argument("--render", action="store_true", help="write docs/results/epoch-time.md; no timing")
    ap.add_argument("--results", type=Path, default=ROOT / "docs" / "results" / "epoch-time.md")
    args = ap.parse_args()
    if args.render:
        from bench import common

        records = [json.loads(s) for s in args.records.read_text().splitlines() if s.strip()]
        common.write_section(args.results, BEGIN, END, render(records))
        print(f"wrote section 2 of {args.results} from {len(records)} records")
        return

    import torch

    from fdkd.pipeline import distill, teacher
    from fdkd.pipeline.config import load_config
    from fdkd.serving.runtime.cpu_isa import cpu_model, describe, simd_flags

    load = os.getloadavg()[0]
    # every label kept (the built-in run keeps 5 %): the target compares fd with none on fully labelled pairs
    base = [f"runs_dir={args.out}", "name=timing", "data.labelled=1.0", f"distill.optim.epochs={args.epochs}",
            "distill.grad_norm_every=0"]
    cfg = load_config(None, base)
    if not (cfg.run_dir / "teacher.image.pt").exists():
        teacher.run(cfg)
    seconds: dict[str, list[float]] = {k: [] for k in VARIANTS}
    for _ in range(args.rounds):
        for name, sets in VARIANTS.items():
            distill.run(load_config(None, base + sets))
            recs = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
            seconds[name] += [r["epoch_seconds"] for r in recs]
    rec = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_model(), "flags": simd_flags(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "epochs": args.epochs, "rounds": args.rounds, "load": load,
           "seconds": seconds}
    with open(args.records, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(render([rec]))
    print(f"cpu: {describe()}")
    print(f"reproduce: python -m bench.train.epoch_time --epochs {args.epochs} --rounds {args.rounds}; "
          "then python -m bench.train.epoch_time --render")


if __name__ == "__main__":
    main()
