"""Time one training epoch of `fd` against `none` (teacher cached) and against a teacher-every-step loop.

    python bench/epoch_time.py                 # on the built-in avdigits data, 3 epochs each, interleaved
    python bench/epoch_time.py --epochs 5

Every variant runs in this one process, interleaved over ``--rounds`` rounds, and the median
training-loop seconds per epoch (evaluation excluded) are compared as ratios: the machine is
shared and noisy, absolute times are not the point.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

VARIANTS = {
    "none": ["distill.method=none"],
    "fd (teacher cached)": ["distill.method=fd"],
    "fd (teacher every step)": ["distill.method=fd", "distill.teacher_cache=false"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-epoch"))
    args = ap.parse_args()

    from pipeline import distill, teacher
    from pipeline.config import load_config

    base = [f"runs_dir={args.out}", "name=timing", f"distill.optim.epochs={args.epochs}", "distill.grad_norm_every=0"]
    cfg = load_config(None, base)
    if not (cfg.run_dir / "teacher.image.pt").exists():
        teacher.run(cfg)
    seconds: dict[str, list[float]] = {k: [] for k in VARIANTS}
    for _ in range(args.rounds):
        for name, sets in VARIANTS.items():
            distill.run(load_config(None, base + sets))
            recs = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
            seconds[name] += [r["epoch_seconds"] for r in recs]
    ref = statistics.median(seconds["none"])
    print("| variant | median s / epoch | x none |\n|---|---|---|")
    for name, s in seconds.items():
        print(f"| {name} | {statistics.median(s):.2f} | {statistics.median(s) / ref:.2f} |")
    from host_cpu import describe

    print(f"\ncpu: {describe()}")
    print(f"reproduce: python bench/epoch_time.py --epochs {args.epochs} --rounds {args.rounds}")


if __name__ == "__main__":
    main()
