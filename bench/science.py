"""The science table: every method, both directions, several seeds, plus the FD weight sweep and ablations.

    python bench/science.py                      # full table (about an hour on 2 CPU cores)
    python bench/science.py --seeds 1 --epochs 3 # a quick look

Each finished run is appended to ``<out>/science.jsonl`` and skipped when the script is run
again, so an interrupted benchmark resumes. Prints a markdown table (test accuracy of the
student's own head, checkpoint chosen on validation; mean +- std over seeds) and the command.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

DIRECTIONS = {  # name -> (teacher modality, overrides)
    "image->audio": ("image", []),
    "audio->image": ("audio", []),
}
METHODS = ["none", "kd", "feat", "dkd", "dist", "fd"]
VARIANTS = {  # FD weight sweep and ablations (all method=fd)
    "fd w=10": ["distill.fd.w_low=10", "distill.fd.w_high=10"],
    "fd w=100": ["distill.fd.w_low=100", "distill.fd.w_high=100"],
    "fd w=1000": ["distill.fd.w_low=1000", "distill.fd.w_high=1000"],
    "fd no band split": ["distill.fd.band_split=false"],
    "fd no shared classifier": ["distill.fd.shared_classifier=false"],
    "fd LogMSE->MSE": ["distill.fd.log_mse=false"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-science"))
    ap.add_argument("--directions", default=",".join(DIRECTIONS))
    ap.add_argument("--no-variants", action="store_true", help="skip the FD weight sweep and ablations")
    args = ap.parse_args()

    from pipeline import distill, teacher
    from pipeline.config import load_config

    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "science.jsonl"
    done = {(r["direction"], r["variant"], r["seed"]): r for r in map(json.loads, log.read_text().splitlines())} \
        if log.exists() else {}
    base = [f"runs_dir={args.out}", f"distill.optim.epochs={args.epochs}", "distill.grad_norm_every=0"]
    variants = {m: [f"distill.method={m}"] for m in METHODS}
    if not args.no_variants:
        variants.update({k: ["distill.method=fd", *v] for k, v in VARIANTS.items()})
    for direction in args.directions.split(","):
        t_mod, extra = DIRECTIONS[direction]
        tag = direction.replace("->", "-to-")
        tcfg = load_config(None, [*base, *extra, f"name={tag}-teacher", f"teacher.modality={t_mod}"])
        tpath = tcfg.run_dir / f"teacher.{t_mod}.pt"
        if not tpath.exists():
            _, tm = teacher.run(tcfg)
            print(f"teacher {direction}: {tm}", file=sys.stderr)
        for variant, sets in variants.items():
            for seed in range(args.seeds):
                key = (direction, variant, seed)
                if key in done:
                    continue
                name = f"{tag}-{variant.replace(' ', '_').replace('>', '').replace('=', '')}-s{seed}"
                cfg = load_config(None, [*base, *extra, *sets, f"name={name}", f"seed={seed}",
                                         f"teacher.modality={t_mod}", f"teacher.checkpoint={tpath}"])
                t0 = time.perf_counter()
                _, res = distill.run(cfg)
                rec = {"direction": direction, "variant": variant, "seed": seed, "epochs": args.epochs,
                       "test_acc": res["student"]["test_acc"], "val_acc": res["student"]["val_acc"],
                       "best_epoch": res["student"]["epoch"], "seconds": round(time.perf_counter() - t0, 1)}
                with open(log, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                done[key] = rec
                print(json.dumps(rec), file=sys.stderr)
    print(table(done.values()))
    print(f"\nreproduce: python bench/science.py --seeds {args.seeds} --epochs {args.epochs}"
          + ("" if args.directions == ",".join(DIRECTIONS) else f" --directions {args.directions}"))


def table(records) -> str:
    groups: dict[tuple[str, str], list[float]] = {}
    for r in records:
        groups.setdefault((r["variant"], r["direction"]), []).append(100 * r["test_acc"])
    directions = sorted({d for _, d in groups}, key=list(DIRECTIONS).index)
    variants = [v for v in [*METHODS, *VARIANTS] if any((v, d) in groups for d in directions)]
    lines = ["| method | " + " | ".join(f"{d} (test acc %)" for d in directions) + " |",
             "|---|" + "---|" * len(directions)]
    for v in variants:
        cells = []
        for d in directions:
            accs = groups.get((v, d), [])
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            cells.append(f"{statistics.mean(accs):.1f} ± {sd:.1f} (n={len(accs)})" if accs else "-")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
