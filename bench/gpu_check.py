"""Distill `none` and `fd` on CUDA (if present) and on the CPU; print samples/s, peak memory, accuracy.

Run through ``bench/gpu_check.sh``; the table goes into docs/results.md with the card named.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--out", type=Path, default=Path("runs/gpu-check"))
    args = ap.parse_args()

    import torch

    from pipeline import distill, teacher
    from pipeline.config import load_config

    devices = (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]
    base = [f"runs_dir={args.out}", f"distill.optim.epochs={args.epochs}", "distill.grad_norm_every=0", *args.sets]
    rows = []
    for device in devices:
        tcfg = load_config(None, [*base, f"name=teacher-{device}", f"accel.device={device}"])
        tpath = tcfg.run_dir / "teacher.image.pt"
        if not tpath.exists():
            teacher.run(tcfg)
        for method in ("none", "fd"):
            cfg = load_config(None, [*base, f"name={method}-{device}", f"accel.device={device}",
                                     f"distill.method={method}", f"teacher.checkpoint={tpath}"])
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            _, res = distill.run(cfg)
            wall = time.perf_counter() - t0
            recs = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
            n_train = 0
            from pipeline import data

            n_train = len(data.load(cfg).indices("train"))
            epoch_s = sorted(r["epoch_seconds"] for r in recs)[len(recs) // 2]
            peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")
            name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
            rows.append((device, name, method, n_train / epoch_s, peak, res["student"]["test_acc"], wall,
                         res["student"].get("band_split", "-")))
    print("| device | card | method | train samples/s | peak GPU MiB | test acc % | wall s | band split |")
    print("|---|---|---|---|---|---|---|---|")
    for d, name, m, sps, peak, acc, wall, bs in rows:
        print(f"| {d} | {name} | {m} | {sps:.0f} | {peak:.0f} | {100 * acc:.1f} | {wall:.0f} | {bs} |")
    print(f"\nreproduce: bash bench/gpu_check.sh  (epochs={args.epochs})")


if __name__ == "__main__":
    main()
