"""Rebuild science-v2 records from run directories and the bench's log, when the records file was lost.

    python -m bench.science.salvage --log science.log --runs RUNS_DIR --machine-from OTHER_RECORDS \\
        --presets "avblend:shared=0,avblend:shared=0.5" --records docs/records/science-v2.jsonl

Used once, for the H200 run of 2026-11-28: its avblend records files had a name the device tool does
not copy back, but each run's checkpoint (whose ``metrics`` hold what ``bench/science/v2.py`` records:
validation and test accuracy, best epoch, the label-smoothing match), its ``metrics.jsonl`` (the
validation curve) and the log line of every landed run did come back. A rebuilt record is the
bench's record except that ``cpu_seconds`` is the log's whole seconds, wall ``seconds`` is null
(not kept) and ``salvaged`` says so. The machine is copied from a record of the same run
(``--machine-from``). A run whose checkpoint disagrees with its log line is an error; only runs
with a log line (landed) are rebuilt, and keys already in ``--records`` are left alone.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from bench.science import v2 as science

LINE = re.compile(r"^\[(?P<ts>[^\]]+)\] (?P<preset>\S+) (?P<direction>\S+->\S+) (?P<row>.+) seed (?P<seed>\d+) "
                  r"(?P<budget>fixed|converged|teacher) (?P<epochs>\d+) ep: val (?P<val>[\d.]+) "
                  r"test (?P<test>[\d.]+) \((?P<cpu>\d+) cpu-s\)$")
NOTE = ("rebuilt by bench/science/salvage.py from the run's checkpoint metrics, its metrics.jsonl and the "
        "bench's log line (the records file did not come back); cpu_seconds to whole seconds, wall seconds not kept")


def rebuild(m: re.Match, runs: Path, bench: science.Bench, machine: dict) -> dict:
    preset, direction, row = m["preset"], m["direction"], m["row"]
    seed, budget, epochs = int(m["seed"]), m["budget"], int(m["epochs"])
    mod = science.DIRECTIONS[direction]
    if row == "teacher":
        run = runs / science.tag(preset, direction, "teacher")
        ckpt, curve_file = run / f"teacher.{mod}.pt", run / f"teacher.{mod}.metrics.jsonl"
        extra = []
    else:
        run = runs / science.tag(preset, direction, row, budget, epochs, "s" + str(seed))
        ckpt, curve_file = run / "student.pt", run / "metrics.jsonl"
        sets = science.ROWS[row if row in science.ROWS else "none"] if row != science.PICKED else None
        extra = sets if sets is not None else _picked_sets(run)
    import torch

    metrics = torch.load(ckpt, map_location="cpu", weights_only=False)["metrics"]
    for name, logged in (("val_acc", m["val"]), ("test_acc", m["test"])):
        if abs(100 * metrics[name] - float(logged)) > 0.051:
            raise SystemExit(f"{ckpt}: {name} {100 * metrics[name]:.2f} disagrees with its log line ({logged})")
    curve = [round(json.loads(line)["val_acc"], 5) for line in curve_file.read_text().splitlines()]
    job = bench.job(preset, direction, row, seed, budget, epochs, extra)
    rec = {k: job[k] for k in ("preset", "direction", "row", "seed", "budget", "epochs")}
    rec.update({"val_acc": metrics["val_acc"], "test_acc": metrics["test_acc"], "best_epoch": metrics["epoch"],
                "val_curve": curve, "seconds": None, "cpu_seconds": float(m["cpu"]), "threads": 1})
    for k in ("label_smoothing", "teacher_entropy", "label_smoothing_temperature", "test_unseen_accent_acc"):
        if k in metrics:
            rec[k] = metrics[k]
    if budget == "converged":
        rec["flat"] = science.is_flat(curve)
    rec["sets"] = [s for s in job["sets"] if not s.startswith(("runs_dir=", "data.cache_dir=", "teacher.checkpoint=",
                                                                 "name="))]
    rec.update({"machine": machine, "finished": m["ts"], "salvaged": NOTE})
    return rec


def _picked_sets(run: Path) -> list[str]:
    """The val-picked fd row's overrides, read back from the weights its run was trained with."""
    import yaml

    fd = yaml.safe_load((run / "student.config.yaml").read_text())["distill"]["fd"]
    for row, w in science.SWEEP.items():
        if fd["w_low"] == w and fd["w_high"] == w:
            return science.ROWS[row]
    return science.ROWS["fd"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log", type=Path, required=True)
    ap.add_argument("--runs", type=Path, required=True, help="the bench's --out directory, as it came back")
    ap.add_argument("--machine-from", type=Path, required=True, help="records of the same run (machine is copied)")
    ap.add_argument("--presets", required=True, help="comma-separated presets to rebuild")
    ap.add_argument("--records", type=Path, required=True, help="appended to; keys already there are skipped")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="the run's own --set overrides")
    a = ap.parse_args()
    machine = json.loads(a.machine_from.read_text().splitlines()[0])["machine"]
    bench = science.Bench.__new__(science.Bench)  # naming and sets only: no records read, no machine probed
    bench.args = science.parse_args(["--full", *(x for s in a.sets for x in ("--set", s))])
    bench.info = machine  # the machine the runs trained on (its device decides the memory-format pin)
    have = set()
    if a.records.exists():
        have = {science.Bench.key(json.loads(line)) for line in a.records.read_text().splitlines() if line.strip()}
    wanted = set(a.presets.split(","))
    new = []
    for line in a.log.read_text().splitlines():
        m = LINE.match(line.strip())
        if not m or m["preset"] not in wanted:
            continue
        rec = rebuild(m, a.runs, bench, machine)
        if science.Bench.key(rec) not in have:
            have.add(science.Bench.key(rec))
            new.append(rec)
    with open(a.records, "a") as f:
        for rec in new:
            f.write(json.dumps(rec) + "\n")
    print(f"{len(new)} records rebuilt into {a.records}")


if __name__ == "__main__":
    main()
