"""A busy machine slows the main job's distill epoch, never stalls it: quiet vs one spinning process per core.

    python -m bench.train.busy                 # default OpenMP wait policy vs fdkd's, quiet vs busy, one run
    python -m bench.train.busy --steps 4 --cap 150
    python -m bench.train.busy --render        # docs/results/busy.md from docs/records/busy.jsonl

Each cell times the first ``--steps`` steps of the main job's distill epoch (built-in config, ``method: auto``:
``bench.train.slice``) in a child process whose environment the OpenMP runtime reads at load: ``default`` (no
``OMP_WAIT_POLICY``, ``KMP_BLOCKTIME`` or ``MKL_DYNAMIC``: libgomp spins before sleeping) and ``fdkd`` (what
``fdkd`` sets before torch loads: ``fdkd.pipeline.numerics.OPENMP_ENV``), both at torch's default thread count.
``busy``: one ``while True: pass`` process per CPU in the background, started before the cell and stopped after
it. A cell still running after ``--cap`` seconds is stopped and recorded as at least that long. The weights'
hash of every finished cell is recorded: the wait policy must not change the numerics. Ratios are within this
one run (the machine is shared; its load average is recorded before each cell). One record per run is appended
to ``docs/records/busy.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- busy:begin (bench/train/busy.py --render) -->", "<!-- busy:end -->"
TARGET = 2.0  # busy / quiet of a distill epoch (issue 31)
POLICIES = ("default", "fdkd")
SPIN = "while True:\n    pass\n"


def _env(policy: str) -> dict:
    from fdkd.pipeline.numerics import OPENMP_ENV

    env = {k: v for k, v in os.environ.items() if k not in OPENMP_ENV and k != "OMP_NUM_THREADS"}
    if policy == "fdkd":
        env.update(OPENMP_ENV)
    env["FDKD_QUIET"] = "1"
    return env


def _cell(policy: str, busy: bool, args) -> dict:
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(os.cpu_count() or 1)] if busy else []
    load = os.getloadavg()[0]
    cmd = [sys.executable, "-m", "bench.train.slice", "--runs-dir", str(args.runs_dir), "--steps", str(args.steps),
           *[a for s in args.sets for a in ("--set", s)]]
    t0 = time.perf_counter()
    try:
        out = subprocess.run(cmd, env=_env(policy), cwd=ROOT, capture_output=True, text=True, timeout=args.cap)
        wall = time.perf_counter() - t0
        if out.returncode != 0:
            raise SystemExit(f"{policy} {'busy' if busy else 'quiet'}: the slice failed:\n{out.stderr[-2000:]}")
        rec = json.loads(out.stdout.strip().splitlines()[-1])
        rec.update(stopped=False)
    except subprocess.TimeoutExpired:
        wall = time.perf_counter() - t0
        rec = {"seconds": None, "steps": args.steps, "weights": None, "stopped": True}
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    return {"policy": policy, "busy": busy, "load": round(load, 2), "wall": round(wall, 2), **rec}


def _seconds(c: dict, cap: float) -> tuple[float, str]:
    return (c["seconds"], f"{c['seconds']:.1f}") if not c["stopped"] else (cap, f">= {cap:.0f} (stopped)")


def render(records: list[dict]) -> str:
    out = ["", "| date | CPU, cores | policy | threads | quiet s | busy s | busy / quiet | weights same |",
           "|---|---|---|---|---|---|---|---|"]
    notes = []
    for r in records:
        for pol in POLICIES:
            q = next(c for c in r["cells"] if c["policy"] == pol and not c["busy"])
            b = next(c for c in r["cells"] if c["policy"] == pol and c["busy"])
            (qs, qt), (bs, bt) = _seconds(q, r["cap"]), _seconds(b, r["cap"])
            ratio = f"{'>= ' if b['stopped'] else ''}{bs / qs:.1f}x"
            same = "yes" if q["weights"] and q["weights"] == b["weights"] else ("-" if b["stopped"] else "no")
            out.append(f"| {r['date']} | {r['cpu']}, {r['cpus']} | {pol} | {q.get('threads', '-')} | {qt} | {bt} | "
                       f"{ratio} | {same} |")
        fd = [c for c in r["cells"] if c["policy"] == "fdkd"]
        q, b = (next(c for c in fd if c["busy"] is x) for x in (False, True))
        ratio = _seconds(b, r["cap"])[0] / _seconds(q, r["cap"])[0]
        hashes = {c["weights"] for c in r["cells"] if c["weights"]}
        dq = next(c for c in r["cells"] if c["policy"] == "default" and not c["busy"])
        slow = _seconds(dq, r["cap"])[0] / _seconds(q, r["cap"])[0]
        notes.append(f"- {r['date']}: {r['steps']} steps of the main job's distill epoch per cell; fdkd's policy busy "
                     f"/ quiet {ratio:.1f}x, target <= {TARGET:.0f}x {'met' if ratio <= TARGET * 1.1 else 'not met'}"
                     f"; the weights {'agree' if len(hashes) == 1 else 'differ'} across the finished cells "
                     f"({len(hashes)} hash{'es' if len(hashes) != 1 else ''}). The machine was shared: load average "
                     f"{', '.join(str(c['load']) for c in r['cells'])} at the start of each cell, in the order "
                     f"{', '.join(c['policy'] + (' busy' if c['busy'] else ' quiet') for c in r['cells'])}; "
                     f"on the machine as it was (not idle), the default policy's quiet cell took {slow:.1f}x fdkd's.")
    return "\n".join([*out, "", *notes, ""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--cap", type=float, default=150.0, help="seconds after which a cell is stopped")
    ap.add_argument("--runs-dir", type=Path, default=Path("runs/bench-busy"))
    ap.add_argument("--set", dest="sets", action="append", default=[], help="a config override for every cell")
    ap.add_argument("--records", type=Path, default=ROOT / "docs" / "records" / "busy.jsonl")
    ap.add_argument("--results", type=Path, default=ROOT / "docs" / "results" / "busy.md")
    ap.add_argument("--render", action="store_true", help="write docs/results/busy.md; no timing")
    args = ap.parse_args()
    if not args.render:
        from fdkd.serving.runtime.cpu_isa import cpu_model

        args.runs_dir = args.runs_dir.resolve()
        # data and teacher first (not timed): the first cell would otherwise build them
        subprocess.run([sys.executable, "-m", "bench.train.slice", "--runs-dir", str(args.runs_dir), "--steps", "1",
                        *[a for s in args.sets for a in ("--set", s)]], env=_env("fdkd"), cwd=ROOT, check=True,
                       capture_output=True)
        cells = [_cell(pol, busy, args) for busy in (False, True) for pol in reversed(POLICIES)]
        rec = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_model(), "cpus": os.cpu_count(),
               "steps": args.steps, "cap": args.cap, "cells": cells}
        with open(args.records, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(render([rec]))
        print(f"reproduce: python -m bench.train.busy --steps {args.steps} --cap {args.cap:.0f}; "
              "then python -m bench.train.busy --render")
    from bench import common

    records = [json.loads(s) for s in args.records.read_text().splitlines() if s.strip()]
    common.write_section(args.results, BEGIN, END, render(records))
    print(f"wrote {args.results} from {len(records)} record(s)")


if __name__ == "__main__":
    main()
