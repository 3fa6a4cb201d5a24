"""The science table v3: does a teacher pay where labels are scarce or noisy, against controls without it?

    python -m bench.science.v3 --plan          # every run of the table, the ones recorded, what is left
    nice -n 19 python -m bench.science.v3      # the whole table (resumable; ~5 single-thread CPU hours)
    nice -n 19 python -m bench.science.v3 --part prototype --jobs 1   # the class-prototype control (issue 31)
    python -m bench.science.v3 --smoke         # 1 seed, 2 epochs, 300 avdigits images: record/resume check
    python -m bench.science.v3_tables          # docs/results/science-v3.md and its plot

Started from its own session (setsid, nohup), ``nice`` alone does not yield: with Linux autogroup scheduling
(/proc/sys/kernel/sched_autogroup_enabled = 1) each session's group gets an equal share whatever its processes'
nice values, so the bench took half the CPU from the main job beside it (seen 2026-12-06). Lower the group too:
``echo 19 > /proc/<bench pid>/autogroup``.

Two axes, image -> audio, on avdigits and avmnist (one clip per image, width-8 student, the v2 augmentation
and memory format):

- **fraction**: ``data.labelled`` in {5 %, 100 %, 1 %, 20 %} (that order: the targets first). A run is one
  ``method: auto`` training of every row below as a candidate: the same initial weights, batches and teacher
  cache, each candidate's epoch picked on the select half of validation, the shipped one judged on the other
  half by ``auto``'s margin rule (``fdkd.pipeline.auto``). Rows: ``none`` (the labelled pairs only), ``self-training``
  (no teacher: the control that says whether the teacher or the unlabelled audio earned a gain), ``pseudo``,
  ``kd``, ``fd`` at the reference weights and at w = 10 and 100 (``fd (val-picked w)``: the sweep weight with
  the best mean select-half validation over seeds), ``fd`` with the shuffled teacher. At 100 % self-training
  and pseudo have no unlabelled pair to act on (they are ``none``) and are left out.
- **noise**: ``data.label_noise`` in {0, 20 %, 40 %} on avdigits, labels otherwise complete; rows ``none``,
  ``none+LS`` (smoothing matched to the teacher's entropy), ``kd``, ``fd``, each teacher row with its
  shuffled teacher; ``none`` at noise 0 is the clean-label bound.

The teacher is trained once per preset (seed 0, every training image's label: image labels are cheap, public
data) and loaded by every run (``teacher.checkpoint``). Budget: ``--epochs`` (20); a run where any candidate's
validation curve is not flat (``science.is_flat``) is run again at ``--cap`` (40) and the tables use the longer.
Every run appends one JSON record to ``--records`` (committed) as it lands, keyed by (preset, axis, level, seed,
epochs), and is skipped when that key is present; records hold each candidate's select/judge/test accuracy,
epoch and curve, the winner, the label counts, CPU and wall seconds, the CPU model and flags. Records written
since issue 31 also hold what replays ``auto``'s rules without retraining (``bench.science.v3_replay``): every
candidate's correctness on every validation row after every epoch (``val_right``, packed bits), its test accuracy
per epoch (``test_curve``, reported, never chosen on), the halves (``half0``) and each validation row's voice.

``--part prototype`` (issue 31): the noise cells with ``kd``, its shuffled teacher and its **class-prototype
teacher** (``distill.teacher_prototype``: every pair gets the mean teacher output over the training pairs of its
teacher-predicted class; label correction kept, the pair's own knowledge removed), paired in one run; ``none`` is
auto's baseline. Its records carry ``"part": "prototype"`` and never mix with the main part's.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np

from bench.science import common
from bench.science.common import is_flat, parse_preset, tag

# row -> (method, overrides inside distill): the auto candidates
CANDIDATES = {
    "none": ("none", {}),
    "self-training": ("self-training", {}),
    "pseudo": ("pseudo", {}),
    "none+LS": ("none", {"label_smoothing.epsilon": "teacher"}),
    "kd": ("kd", {}),
    "kd shuffled teacher": ("kd", {"teacher_shuffle": True}),
    "fd": ("fd", {}),
    "fd w=10": ("fd", {"fd.w_low": 10, "fd.w_high": 10}),
    "fd w=100": ("fd", {"fd.w_low": 100, "fd.w_high": 100}),
    "fd shuffled teacher": ("fd", {"teacher_shuffle": True}),
    "kd prototype teacher": ("kd", {"teacher_prototype": True}),
}
SWEEP = {"fd": 1, "fd w=10": 10, "fd w=100": 100}  # the rows behind "fd (val-picked w)"
FRACTION_ROWS = ["none", "self-training", "pseudo", "kd", "fd", "fd w=10", "fd w=100", "fd shuffled teacher"]
FULL_ROWS = [r for r in FRACTION_ROWS if r not in ("self-training", "pseudo")]
NOISE_ROWS = ["none", "none+LS", "kd", "kd shuffled teacher", "fd", "fd shuffled teacher"]
# the prototype part (issue 31): kd beside both of its controls, paired within one run
PROTOTYPE_ROWS = ["none", "kd", "kd shuffled teacher", "kd prototype teacher"]
PROTOTYPE_CELLS = [("avdigits", "noise", 0.4), ("avdigits", "noise", 0.0), ("avdigits", "noise", 0.2)]
AXES = {"fraction": "data.labelled", "noise": "data.label_noise"}
# (preset, axis, level) in the order they run: the targets (5 % and the 100 % bound) first
CELLS = [("avdigits", "fraction", 0.05), ("avdigits", "fraction", 1.0), ("avmnist", "fraction", 0.05),
         ("avmnist", "fraction", 1.0), ("avdigits", "noise", 0.2), ("avdigits", "noise", 0.4),
         ("avdigits", "noise", 0.0), ("avdigits", "fraction", 0.01), ("avdigits", "fraction", 0.2),
         ("avmnist", "fraction", 0.01), ("avmnist", "fraction", 0.2)]


def rows_for(axis: str, level: float, part: str = "main") -> list[str]:
    if part == "prototype":
        return PROTOTYPE_ROWS
    if axis == "noise":
        return NOISE_ROWS
    return FULL_ROWS if level >= 1 else FRACTION_ROWS


def candidates_override(rows: list[str]) -> str:
    cands = [{"name": r, "method": CANDIDATES[r][0], "set": CANDIDATES[r][1]} for r in rows]
    return "distill.auto.candidates=" + json.dumps(cands)


# ---- one run (in a worker process) --------------------------------------------------------

def run_job(job: dict) -> dict:
    """Train the preset's teacher, or one auto run of a cell's rows; returns its record's measured fields."""
    import torch

    from fdkd.pipeline import auto, data, distill, teacher
    from fdkd.pipeline.config import load_config
    from fdkd.pipeline.data.dataset import row_arrays

    torch.set_num_threads(job["threads"])
    cfg = load_config(None, job["sets"])
    t0, c0 = time.perf_counter(), time.process_time()
    if job["kind"] == "teacher":
        _, m = teacher.run(cfg)
        return {"val_acc": m["val_acc"], "test_acc": m["test_acc"], "seconds": round(time.perf_counter() - t0, 2),
                "cpu_seconds": round(time.process_time() - c0, 2)}
    _, res = distill.run(cfg)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    m = res["student"]
    curves: dict[str, list[float]] = {}
    for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        curves.setdefault(r["direction"].split(":", 1)[1], []).append(round(r["val_acc"], 5))
    rows = auto.load_rows(cfg.run_dir / auto.ROWS_FILE.format(direction="student"))
    n_val = len(rows["val_rows"])
    cands = []
    for c in m["auto"]["candidates"]:
        cands.append({k: c[k] for k in ("name", "method", "val_acc", "judge_acc", "test_acc", "epoch",
                                        "lead_judge_pt", "se_judge_pt", "passes_margin")}
                     | {"curve": curves[c["name"]], "flat": is_flat(curves[c["name"]]),
                        "fold_epochs": c.get("fold_epochs"), "test_curve": c.get("test_curve"),
                        "val_right": [pack(e[:n_val]) for e in rows["candidates"][c["name"]]]})
    ds = data.load(cfg)
    z = row_arrays(ds.path)  # the built-in data's voice per row (not in PairedDataset)
    voice = z["voice"][rows["val_rows"]].tolist() if "voice" in z else None
    return {"winner": m["auto"]["winner"], "judge": m["auto"].get("judge"), "margin_se": m["auto"]["margin_se"],
            "judge_rows": m["auto"]["judge_rows"], "shipped_test_acc": m["test_acc"], "candidates": cands,
            "half0": pack(np.isin(np.arange(n_val), rows["halves"][0])), "val_voice": voice,
            "labels": m.get("labels"), "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
            "threads": job["threads"]}


def pack(bits) -> str:
    """Booleans as a hex string (numpy packbits, big-endian bit order): a record's per-row correctness."""
    return np.packbits(np.asarray(bits, bool)).tobytes().hex()


def unpack(text: str, n: int) -> np.ndarray:
    """``pack``'s booleans back (the first ``n``)."""
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), np.uint8))[:n].astype(bool)


# ---- the schedule -------------------------------------------------------------------------

class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.file = common.RecordFile(args.records)
        self.path, self.records = self.file.path, self.file.records
        self.info = {**common.machine(), "rev": common.git_rev()}
        self.failed: list[str] = []

    def find(self, **key) -> dict | None:
        """The first record with these fields; a run's of this ``--part`` (records before parts are the main part's),
        a teacher's of any part (every part loads the same teacher)."""
        part = self.args.part
        return next((r for r in self.records if (r.get("kind") == "teacher" or r.get("part", "main") == part)
                     and all(k in r and r[k] == v for k, v in key.items())), None)

    def base_sets(self, preset: str) -> list[str]:
        return common.base_sets(preset, self.args, self.info["device"], "teacher.modality=image")

    def teacher_path(self, preset: str) -> Path:
        return Path(self.args.out) / tag(preset, "teacher") / "teacher.image.pt"

    def teacher_job(self, preset: str) -> dict:
        return {"kind": "teacher", "preset": preset, "threads": self.args.threads,
                "sets": [*self.base_sets(preset), f"name={tag(preset, 'teacher')}", "seed=0"]}

    def run_job_for(self, preset, axis, level, seed, epochs, rows: list[str] | None = None) -> dict:
        """One run; ``rows``: the candidates (a rerun at ``--cap`` trains its first attempt's, whatever ``--rows``
        says now), else the cell's rows restricted by ``--rows``."""
        rows = rows or [r for r in rows_for(axis, level, self.args.part)
                        if not self.args.rows or r in self.args.rows.split(",")]
        if "none" not in rows:
            rows = ["none", *rows]  # auto's baseline
        sets = [*self.base_sets(preset), f"{AXES[axis]}={level}", "distill.method=auto", candidates_override(rows),
                f"distill.optim.epochs={epochs}", f"seed={seed}", f"teacher.checkpoint={self.teacher_path(preset)}",
                f"name={tag(preset, axis, level, epochs, 's' + str(seed), *self.part_tag())}"]
        head = {"kind": "run", "preset": preset, "axis": axis, "level": level, "seed": seed, "epochs": epochs}
        if self.args.part != "main":
            head["part"] = self.args.part
        return {**head, "rows": rows, "sets": sets, "threads": self.args.threads}

    def part_tag(self) -> list[str]:
        return [] if self.args.part == "main" else [self.args.part]

    def cells(self) -> list[tuple[str, str, float]]:
        return [c for c in (self.args.cells or (PROTOTYPE_CELLS if self.args.part == "prototype" else CELLS))]

    def wanted(self) -> list[dict]:
        """The runs still to do, given the records: a preset's teacher first, then its cells' first attempts, then
        the doubled ones (in ``CELLS`` order)."""
        a, out, ready = self.args, [], set()
        for preset in dict.fromkeys(p for p, _, _ in self.cells()):
            if self.find(kind="teacher", preset=preset) is None or not self.teacher_path(preset).exists():
                out.append(self.teacher_job(preset))
            else:
                ready.add(preset)
        for preset, axis, level in self.cells():
            if preset not in ready:
                continue
            for seed in range(a.seeds):
                key = {"kind": "run", "preset": preset, "axis": axis, "level": level, "seed": seed}
                first = self.find(**key, epochs=a.epochs)
                if first is None:
                    out.append(self.run_job_for(preset, axis, level, seed, a.epochs))
                elif a.cap > a.epochs and not all(c["flat"] for c in first["candidates"]) \
                        and self.find(**key, epochs=a.cap) is None:
                    out.append(self.run_job_for(preset, axis, level, seed, a.cap, rows=first.get("rows")))
        return out

    def land(self, job: dict, rec: dict) -> None:
        full = self.file.land({k: v for k, v in job.items() if k not in ("sets", "threads")}, rec, job["sets"],
                              self.info)
        if job["kind"] == "teacher":
            print(f"[{full['finished']}] teacher {job['preset']}: val {100 * rec['val_acc']:.1f} "
                  f"({rec['cpu_seconds']:.0f} cpu-s)", flush=True)
            return
        tests = " ".join(f"{c['name']} {100 * c['test_acc']:.1f}" for c in rec["candidates"])
        print(f"[{full['finished']}] {job['preset']} {job['axis']}={job['level']} seed {job['seed']} "
              f"{job['epochs']} ep: ships {rec['winner']}; test {tests} ({rec['cpu_seconds']:.0f} cpu-s)", flush=True)

    def run(self) -> None:
        from fdkd.pipeline import data
        from fdkd.pipeline.config import load_config

        for preset in dict.fromkeys(p for p, _, _ in self.cells()):  # build each dataset once, before workers race
            data.prepare(load_config(None, self.base_sets(preset)))
        if self.args.jobs <= 1:
            while jobs := self.wanted():
                self._one(jobs[0], lambda j=jobs[0]: run_job(j))
                if len(self.failed) > 3 * len(CELLS):
                    break
        else:
            self._pooled()
        if self.failed:
            raise SystemExit(f"{len(self.failed)} run(s) failed (named above); rerun to retry them")

    def _pooled(self) -> None:
        """Keep ``--jobs`` runs in flight, re-planning as each lands (a landed teacher releases its cells)."""
        name = lambda j: j["sets"][-1] if j["kind"] == "run" else f"teacher {j['preset']}"  # noqa: E731
        pool = ProcessPoolExecutor(self.args.jobs, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=common.init_worker, initargs=(self.args.threads,))
        flight: dict = {}
        tried: set[str] = set()
        try:
            while True:
                busy = {name(j) for j in flight.values()}
                for j in self.wanted():
                    if len(flight) >= self.args.jobs:
                        break
                    if name(j) not in busy and name(j) not in tried:
                        flight[pool.submit(run_job, j)] = j
                        busy.add(name(j))
                if not flight:
                    break
                done, _ = wait(flight, return_when=FIRST_COMPLETED)
                for fut in done:
                    j = flight.pop(fut)
                    tried.add(name(j))  # a failed run is retried by the next invocation, not this one
                    self._one(j, fut.result)
        finally:
            pool.shutdown()

    def _one(self, job: dict, result) -> None:
        try:
            self.land(job, result())
        except Exception as e:  # noqa: BLE001 - one failed run must not stop the others; the next call retries
            what = f"{job['preset']} {job.get('axis', 'teacher')}={job.get('level', '')} seed {job.get('seed', 0)}"
            self.failed.append(what)
            print(f"FAILED {what}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)


def print_plan(bench: Bench) -> None:
    a = bench.args
    print("| preset | axis | level | rows | seeds recorded (first attempt) | doubled |\n|---|---|---|---|---|---|")
    left = 0
    for preset, axis, level in bench.cells():
        got = [bench.find(kind="run", preset=preset, axis=axis, level=level, seed=s, epochs=a.epochs)
               for s in range(a.seeds)]
        doubled = [bench.find(kind="run", preset=preset, axis=axis, level=level, seed=s, epochs=a.cap)
                   for s in range(a.seeds)]
        left += sum(g is None for g in got)
        n_rows = len(rows_for(axis, level, a.part))
        print(f"| {preset} | {axis} | {level} | {n_rows} | {sum(g is not None for g in got)}"
              f"/{a.seeds} | {sum(d is not None for d in doubled)} |")
    print(f"\n{left} first attempts left (plus doubled attempts where a curve is not flat).")


def parse_cells(spec: str) -> list[tuple[str, str, float]]:
    """``avdigits:fraction=0.05,avmnist:noise=0.2`` -> cells."""
    out = []
    for item in filter(None, spec.split(",")):
        preset, _, kv = item.partition(":")
        axis, _, level = kv.partition("=")
        if axis not in AXES or not level:
            raise SystemExit(f"cell {item!r}: expected preset:fraction=L or preset:noise=L")
        parse_preset(preset)
        out.append((preset, axis, float(level)))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=parse_cells, default=None,
                    help="restrict to these cells, e.g. avdigits:fraction=0.05,avdigits:noise=0.4 (default: CELLS)")
    ap.add_argument("--rows", default="", help="restrict to these rows (comma-separated names; none is kept)")
    ap.add_argument("--part", choices=("main", "prototype"), default="main",
                    help="prototype: the noise cells' kd with its shuffled and class-prototype teachers (issue 31), "
                         "its own records (field part), first at 40 epochs, 80 where a curve is not flat")
    ap.add_argument("--epochs", type=int, default=None, help="first attempt (20; the prototype part 40)")
    ap.add_argument("--cap", type=int, default=None,
                    help="the doubled attempt where a curve is not flat (40; the prototype part 80)")
    common.add_run_args(ap, "docs/records/science-v3.jsonl", "runs/bench-science-v3")
    ap.add_argument("--plan", action="store_true", help="print the cells and what is recorded; train nothing")
    ap.add_argument("--smoke", action="store_true",
                    help="1 seed, 2 epochs (doubled 4), 300 avdigits images, cell avdigits fraction 5 %%; "
                         "records to runs/bench-science-v3-smoke/")
    args = ap.parse_args(argv)
    first, cap = (40, 80) if args.part == "prototype" else (20, 40)
    args.epochs = first if args.epochs is None else args.epochs
    args.cap = cap if args.cap is None else args.cap
    if args.part == "prototype" and args.seeds == ap.get_default("seeds"):
        args.seeds = 3  # the noise axis' seeds
    if args.smoke:
        args.seeds, args.epochs, args.cap, args.teacher_epochs = 1, 2, 4, 2
        args.cells = [("avdigits", "fraction", 0.05)]
        common.smoke_paths(ap, args, "runs/bench-science-v3-smoke")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    bench = Bench(args)
    print(common.host_line(bench.info))
    if args.plan:
        print_plan(bench)
        return
    bench.run()
    print_plan(bench)
    print("\nreproduce: python -m bench.science.v3" + (" --smoke" if args.smoke else "")
          + "; tables: python -m bench.science.v3_tables")


if __name__ == "__main__":
    main()
