"""The science table v2: does a method transfer the teacher's knowledge, or only regularise / speed up?

    python -m bench.science.v2 --plan                    # every run, and the estimated hours on 2 cores
    python -m bench.science.v2 --jobs 2                  # the whole table (resumable; ~4 h on 2 cores)
    python -m bench.science.v2 --smoke                   # 1 seed, 2 epochs, 2 methods: record/resume check
    python -m bench.science.v2_tables                    # docs/results/science-v2.md from the records

Presets (``--presets``; a preset's knobs after a colon, e.g. ``avblend:shared=0.5``): avdigits,
avblend at shared 0 / 0.5 / 1 (instance-paired; class-level at 0), avmnist (all 5,000 MNIST
images, one clip each). Directions: image -> audio everywhere, audio -> image for avblend; a
direction is kept only where the teacher has headroom (teacher validation accuracy at least
``HEADROOM_PT`` above the student trained alone, seed 0, fixed budget), otherwise its other rows
are skipped and the generator says so.

Rows (``ROWS``): none, none + label smoothing matched to the teacher's soft-target entropy, kd and
kd with the within-class shuffled teacher, feat, dkd, dist, fd at the reference weights, at w = 10
and 100 (the validation sweep; ``fd (val-picked w)`` is the weight with the best mean validation
accuracy), fd with the shuffled teacher, the ablations (no band split, no shared classifiers, MSE
instead of LogMSE, pre-activation tap) and the reference recipe (lr 0.01, poly decay, no weight
decay). Budgets: ``fixed`` (every row ``--epochs`` epochs, plus ``none (equal wall time)``: the
student alone given the CPU time of teacher training + the fd run) and ``converged`` (``CONVERGED``
rows, ``--conv-epochs`` epochs, doubled once where the validation curve is not flat: ``flat`` means
the last third of the epochs raised the best validation accuracy by less than ``PLATEAU_PT``).

Every run appends one JSON record to ``--records`` (committed) the moment it lands and is skipped
when its key (preset, direction, row, seed, budget, epochs) is present. Runs go to a process pool
(``--jobs``; each run single-threaded), records hold CPU and wall seconds, the validation curve,
the device and the CPU model. Run outputs go under ``--out`` (not committed).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from bench.science import common
from bench.science.common import PRESETS, is_flat, parse_preset, tag

DEFAULT_PRESETS = "avdigits,avblend:shared=0,avblend:shared=0.5,avblend:shared=1,avmnist"
DIRECTIONS = {"image->audio": "image", "audio->image": "audio"}  # name -> teacher modality
HEADROOM_PT = 1.0

FD = ["distill.method=fd"]
ROWS = {  # row -> overrides
    "none": ["distill.method=none"],
    "none+LS": ["distill.method=none", "distill.label_smoothing.epsilon=teacher"],
    "kd": ["distill.method=kd"],
    "kd shuffled teacher": ["distill.method=kd", "distill.teacher_shuffle=true"],
    "feat": ["distill.method=feat"],
    "dkd": ["distill.method=dkd"],
    "dist": ["distill.method=dist"],
    "fd": FD,
    "fd w=10": [*FD, "distill.fd.w_low=10", "distill.fd.w_high=10"],
    "fd w=100": [*FD, "distill.fd.w_low=100", "distill.fd.w_high=100"],
    "fd shuffled teacher": [*FD, "distill.teacher_shuffle=true"],
    "fd no band split": [*FD, "distill.fd.band_split=false"],
    "fd no shared classifiers": [*FD, "distill.fd.shared_classifier=false"],
    "fd MSE (no LogMSE)": [*FD, "distill.fd.log_mse=false"],
    "fd pre-activation tap": [*FD, "distill.feature_tap=pre"],
    "fd reference recipe": [*FD, "distill.optim.lr=0.01", "distill.optim.weight_decay=0"],
}
SWEEP = {"fd": 1, "fd w=10": 10, "fd w=100": 100}  # row -> feature weight; the sweep behind "fd (val-picked w)"
PICKED = "fd (val-picked w)"
WALL = "none (equal wall time)"
CONVERGED = ["none", "none+LS", "kd", "kd shuffled teacher", "fd", PICKED, "fd shuffled teacher"]
CORE = ["none", "none+LS", "kd", "kd shuffled teacher", "fd", "fd w=10", "fd w=100", "fd shuffled teacher"]
# what each preset gets, sized to fit ~4 h on 2 cores: (rows, converged budget?); unlisted: every row, converged
SCOPE = {
    "avblend:shared=0": (CORE, True),
    "avblend:shared=0.5": (CORE, False),
    "avmnist": (CORE, False),
}

# Plan: single-thread CPU seconds per 1,000 training rows per epoch (validation included), by
# (student modality, image side); measured 2026-11-28 on this project's 2-core dev machine for width-8
# students (audio 1.02, 8x8 image 0.15; the 28x28 image cost is scaled by pixels, not measured) and
# width-64 teachers (audio 18.0 = 1.02 x 18, 8x8 image 2.94 = 0.15 x 20). Recorded runs replace these.
COST = {("audio", 8): 1.02, ("audio", 28): 1.02, ("image", 8): 0.15, ("image", 28): 1.2}
TEACHER_X = {"audio": 18.0, "image": 20.0}
METHOD_X = {"none": 1.0, "kd": 1.05, "feat": 1.1, "dkd": 1.05, "dist": 1.05, "fd": 1.15}
OVERHEAD_S = 6.0  # data load, teacher cache, test evaluation, checkpoint
DOUBLED_FRACTION = 0.3  # converged runs assumed to need the second (doubled) attempt


# ---- one run (in a worker process) --------------------------------------------------------

def run_job(job: dict) -> dict:
    """Train one teacher or one student; returns its record (without the shared fields)."""
    import torch

    from fdkd.pipeline import distill, teacher
    from fdkd.pipeline.config import load_config

    torch.set_num_threads(job["threads"])
    cfg = load_config(None, job["sets"])
    t0, c0 = time.perf_counter(), time.process_time()
    if job["row"] == "teacher":
        path, m = teacher.run(cfg)
        m = {**m, "teacher_sha256": _sha256(path)}
        curve_file = cfg.run_dir / f"teacher.{cfg.teacher.modality}.metrics.jsonl"
    else:
        _, res = distill.run(cfg)
        m = res["student"]
        curve_file = cfg.run_dir / "metrics.jsonl"
        m = {**m, "teacher_sha256": _sha256(cfg.teacher.checkpoint)}
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    curve = [round(json.loads(line)["val_acc"], 5) for line in curve_file.read_text().splitlines()]
    rec = {"val_acc": m["val_acc"], "test_acc": m["test_acc"], "best_epoch": m["epoch"], "val_curve": curve,
           "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "threads": job["threads"]}
    for k in ("label_smoothing", "teacher_entropy", "label_smoothing_temperature", "test_unseen_accent_acc",
              "teacher_sha256"):
        if k in m:
            rec[k] = m[k]
    if job["budget"] == "converged":
        rec["flat"] = is_flat(curve)
    return rec


def _sha256(path) -> str:
    """The first 16 hex digits of a checkpoint's SHA-256: which teacher a run distilled from."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


# ---- the schedule -------------------------------------------------------------------------

class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.file = common.RecordFile(args.records)
        self.records_path, self.records = self.file.path, self.file.records
        self.info = {**common.machine(), "rev": common.git_rev()}
        self.failed: list[str] = []

    # keys and look-ups
    @staticmethod
    def key(r: dict) -> tuple:
        return (r["preset"], r["direction"], r["row"], r["seed"], r["budget"], r["epochs"])

    def find(self, preset, direction, row, seed, budget, epochs=None) -> dict | None:
        key = {"preset": preset, "direction": direction, "row": row, "seed": seed, "budget": budget}
        return self.file.find(**key) if epochs is None else self.file.find(**key, epochs=epochs)

    def base_sets(self, spec: str, direction: str) -> list[str]:
        return common.base_sets(spec, self.args, self.info["device"], f"teacher.modality={DIRECTIONS[direction]}")

    def teacher_path(self, spec: str, direction: str) -> Path:
        return Path(self.args.out) / tag(spec, direction, "teacher") / f"teacher.{DIRECTIONS[direction]}.pt"

    def job(self, spec, direction, row, seed, budget, epochs, extra=()) -> dict:
        sets = [*self.base_sets(spec, direction)]
        if row == "teacher":
            sets += [f"name={tag(spec, direction, 'teacher')}", "seed=0"]
        else:
            sets += [*extra, f"distill.optim.epochs={epochs}", f"seed={seed}",
                     f"teacher.checkpoint={self.teacher_path(spec, direction)}",
                     f"name={tag(spec, direction, row, budget, epochs, 's' + str(seed))}"]
        return {"preset": spec, "direction": direction, "row": row, "seed": seed, "budget": budget, "epochs": epochs,
                "sets": sets, "threads": self.args.threads}

    def retrain_job(self, spec: str, direction: str) -> dict:
        """The teacher's record is here but its checkpoint is not (it trained on another machine): train it again,
        same config and seed, and record that as its own run (budget ``retrained``, seed = the how-many-th), so the
        runs that land afterwards, which name their teacher's checkpoint hash, can be told apart in the tables."""
        n = len(self.get_all(spec, direction, "teacher", "retrained"))
        return {**self.job(spec, direction, "teacher", 0, "teacher", self.args.teacher_epochs), "seed": n,
                "budget": "retrained"}

    def get_all(self, preset, direction, row, budget) -> list[dict]:
        return [r for r in self.records if (r["preset"], r["direction"], r["row"], r["budget"]) ==
                (preset, direction, row, budget)]

    # the runs each phase wants, given the records so far
    def headroom(self, spec, direction) -> bool | None:
        t = self.find(spec, direction, "teacher", 0, "teacher")
        n = self.find(spec, direction, "none", 0, "fixed", self.args.epochs)
        if t is None or n is None:
            return None
        return 100 * (t["val_acc"] - n["val_acc"]) >= HEADROOM_PT

    def cells(self):
        for spec in self.args.presets.split(","):
            name, _ = parse_preset(spec)
            for direction in PRESETS[name][2]:
                if self.args.directions and direction not in self.args.directions.split(","):
                    continue
                yield spec, direction

    def picked_weight(self, spec, direction) -> str | None:
        """The sweep row with the best mean validation accuracy over seeds (fixed budget); None until all landed."""
        means = {}
        for row in SWEEP:
            recs = [self.find(spec, direction, row, s, "fixed", self.args.epochs) for s in self.seeds]
            if any(r is None for r in recs):
                return None
            means[row] = statistics.mean(r["val_acc"] for r in recs)
        return max(means, key=lambda r: (means[r], -SWEEP[r]))

    @property
    def seeds(self) -> list[int]:
        return list(range(self.args.seeds))

    def rows(self, spec: str) -> list[str]:
        scope = SCOPE.get(spec, (list(ROWS), True))[0] if not self.args.full else list(ROWS)
        return [r for r in scope if not self.args.rows or r in self.args.rows.split(",")]

    def converged(self, spec: str) -> list[str]:
        if self.args.conv_epochs <= 0 or not (self.args.full or SCOPE.get(spec, (None, True))[1]):
            return []
        return [r for r in CONVERGED if not self.args.rows or r in self.args.rows.split(",") or r == PICKED]

    def wanted(self, phase: str) -> list[dict]:
        a, out = self.args, []
        for spec, direction in self.cells():
            if phase == "teacher":
                out.append(self.job(spec, direction, "teacher", 0, "teacher", a.teacher_epochs))
                recorded = self.find(spec, direction, "teacher", 0, "teacher")
                if recorded and not self.teacher_path(spec, direction).exists():
                    out.append(self.retrain_job(spec, direction))
                continue
            if self.find(spec, direction, "teacher", 0, "teacher") is None:
                continue
            if phase == "headroom":
                out.append(self.job(spec, direction, "none", 0, "fixed", a.epochs, ROWS["none"]))
                continue
            if self.headroom(spec, direction) is not True:
                continue
            if phase == "fixed":
                out += [self.job(spec, direction, row, s, "fixed", a.epochs, ROWS[row])
                        for row in self.rows(spec) for s in self.seeds]
            elif phase == "derived":
                out += self._derived(spec, direction)
        return [j for j in out if self.find(j["preset"], j["direction"], j["row"], j["seed"], j["budget"],
                                            j["epochs"]) is None]

    def _derived(self, spec, direction) -> list[dict]:
        a, out = self.args, []
        t = self.find(spec, direction, "teacher", 0, "teacher")
        for s in self.seeds if a.wall else []:
            fd = self.find(spec, direction, "fd", s, "fixed", a.epochs)
            none = self.find(spec, direction, "none", s, "fixed", a.epochs)
            if fd and none:  # the student alone, given the CPU time of the teacher + the fd student
                epochs = round(a.epochs * (t["cpu_seconds"] + fd["cpu_seconds"]) / none["cpu_seconds"])
                out.append(self.job(spec, direction, WALL, s, "fixed", min(max(epochs, a.epochs), 2 * a.conv_epochs),
                                    ROWS["none"]))
        picked = self.picked_weight(spec, direction)
        for row in self.converged(spec):
            if row == PICKED:
                if picked is None or picked == "fd":  # at w = 1 the picked run is the `fd` row itself
                    continue
                sets = ROWS[picked]
            else:
                sets = ROWS[row]
            for s in self.seeds:
                first = self.find(spec, direction, row, s, "converged", a.conv_epochs)
                if first is None:
                    out.append(self.job(spec, direction, row, s, "converged", a.conv_epochs, sets))
                elif not first["flat"] and a.conv_cap > a.conv_epochs:
                    out.append(self.job(spec, direction, row, s, "converged", a.conv_cap, sets))
        return out

    # running
    def land(self, job: dict, rec: dict) -> None:
        full = self.file.land({k: job[k] for k in ("preset", "direction", "row", "seed", "budget", "epochs")}, rec,
                              job["sets"], self.info)
        print(f"[{full['finished']}] {full['preset']} {full['direction']} {full['row']} seed {full['seed']} "
              f"{full['budget']} {full['epochs']} ep: val {100 * full['val_acc']:.1f} test {100 * full['test_acc']:.1f}"
              f" ({full['cpu_seconds']:.0f} cpu-s)", flush=True)

    def build_data(self) -> None:
        """Build every preset's dataset once, here, before workers need it (they would race to build it)."""
        from fdkd.pipeline import data
        from fdkd.pipeline.config import ConfigError, load_config

        for spec, direction in self.cells():
            try:
                cfg = load_config(None, self.base_sets(spec, direction))
            except ConfigError as e:
                raise SystemExit(f"preset {spec!r} cannot be configured in this checkout "
                                 f"(drop it with --presets):\n{e}") from None
            data.prepare(cfg)

    def run_phase(self, jobs: list[dict], pool) -> None:
        if not jobs:
            return
        if pool is None:
            for j in jobs:
                try:
                    self.land(j, run_job(j))
                except Exception as e:  # noqa: BLE001 - one failed run must not stop the others
                    self.fail(j, e)
            return
        futures = {pool.submit(run_job, j): j for j in jobs}
        for fut in as_completed(futures):
            try:
                self.land(futures[fut], fut.result())
            except Exception as e:  # noqa: BLE001
                self.fail(futures[fut], e)

    def fail(self, job: dict, err: Exception) -> None:
        """A failed run is named and left unrecorded (the next invocation retries it)."""
        what = f"{job['preset']} {job['direction']} {job['row']} seed {job['seed']} {job['budget']} {job['epochs']} ep"
        self.failed.append(what)
        print(f"FAILED {what}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)

    def run(self) -> None:
        # spawn, not fork: machine() has initialised CUDA in this process, and a forked child cannot use it
        pool = ProcessPoolExecutor(self.args.jobs, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=common.init_worker, initargs=(self.args.threads,)) \
            if self.args.jobs > 1 else None
        try:
            self.build_data()
            for phase in ("teacher", "headroom", "fixed"):
                self.run_phase(self.wanted(phase), pool)
            for _ in range(3):  # wall-time none and converged runs; then the doubled attempts
                self.run_phase(self.wanted("derived"), pool)
        finally:
            if pool is not None:
                pool.shutdown()
        if self.failed:
            raise SystemExit(f"{len(self.failed)} run(s) failed (named above); rerun to retry them")

    # the plan
    def estimate(self, job: dict) -> float:
        name, _ = parse_preset(job["preset"])
        rows_k = PRESETS[name][3] / 1000
        t_mod = DIRECTIONS[job["direction"]]
        s_mod = "audio" if t_mod == "image" else "image"
        side = 28 if name == "avmnist" else 8
        if job["row"] == "teacher":
            return OVERHEAD_S + rows_k * job["epochs"] * COST[(t_mod, side)] * TEACHER_X[t_mod]
        method = next((s.split("=", 1)[1] for s in reversed(job["sets"]) if s.startswith("distill.method=")), "none")
        measured = [r["cpu_seconds"] / r["epochs"] for r in self.records
                    if r["preset"] == job["preset"] and r["direction"] == job["direction"] and r["row"] == job["row"]]
        if measured:  # this machine's own measurement beats the table
            return statistics.median(measured) * job["epochs"]
        return OVERHEAD_S + rows_k * job["epochs"] * COST[(s_mod, side)] * METHOD_X[method]

    def plan(self) -> list[dict]:
        """Every run of the full table (assuming headroom everywhere), marking the ones already recorded."""
        a, jobs = self.args, []
        for spec, direction in self.cells():
            jobs.append(self.job(spec, direction, "teacher", 0, "teacher", a.teacher_epochs))
            jobs += [self.job(spec, direction, row, s, "fixed", a.epochs, ROWS[row]) for row in self.rows(spec)
                     for s in self.seeds]
            if a.wall:
                jobs += [self.job(spec, direction, WALL, s, "fixed", 3 * a.epochs, ROWS["none"]) for s in self.seeds]
            for row in self.converged(spec):
                sets = ROWS["fd w=10"] if row == PICKED else ROWS[row]
                jobs += [self.job(spec, direction, row, s, "converged", a.conv_epochs, sets) for s in self.seeds]
        return jobs


def print_plan(bench: Bench) -> None:
    a = bench.args
    jobs = bench.plan()
    by_cell: dict[tuple, list[float]] = {}
    total = done = 0.0
    for j in jobs:
        est = bench.estimate(j)
        if j["budget"] == "converged":
            est *= 1 + DOUBLED_FRACTION * (a.conv_cap / a.conv_epochs if a.conv_cap > a.conv_epochs else 0)
        have = bench.find(j["preset"], j["direction"], j["row"], j["seed"], j["budget"],
                          None if j["row"] in ("teacher", WALL) else j["epochs"])
        by_cell.setdefault((j["preset"], j["direction"], j["budget"]), []).append(est)
        total += est
        done += est if have else 0
    print("| preset | direction | budget | runs | est. CPU hours (1 thread) |\n|---|---|---|---|---|")
    for (p, d, b), ests in by_cell.items():
        print(f"| {p} | {d} | {b} | {len(ests)} | {sum(ests) / 3600:.2f} |")
    hours = total / 3600 / a.jobs
    print(f"\n{len(jobs)} runs, {total / 3600:.1f} single-thread CPU hours; with --jobs {a.jobs} on 2 cores about "
          f"{hours:.1f} h wall (if the cores are not shared). Already recorded: {done / 3600:.1f} CPU hours.")
    print(f"Assumes headroom in every direction (a direction without it skips all but 2 runs) and that "
          f"{int(100 * DOUBLED_FRACTION)} % of converged runs need the doubled attempt ({a.conv_cap} epochs).")
    if a.verbose:
        for j in jobs:
            print(f"  {j['preset']:<20} {j['direction']:<13} {j['row']:<26} s{j['seed']} {j['budget']:<9} "
                  f"{j['epochs']:>3} ep  ~{bench.estimate(j):6.0f} cpu-s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default=DEFAULT_PRESETS, help="comma-separated; knobs after ':' (avblend:shared=0)")
    ap.add_argument("--directions", default="", help="restrict to these directions (default: each preset's)")
    ap.add_argument("--rows", default="", help="restrict to these rows (comma-separated names from ROWS)")
    ap.add_argument("--epochs", type=int, default=15, help="fixed budget: epochs of every row")
    ap.add_argument("--conv-epochs", type=int, default=30, help="converged budget: first attempt (0: no converged)")
    ap.add_argument("--conv-cap", type=int, default=60, help="converged budget: the doubled attempt")
    ap.add_argument("--full", action="store_true", help="every row and both budgets for every preset (no SCOPE cuts)")
    ap.add_argument("--no-wall", dest="wall", action="store_false", help="skip the equal-wall-time `none` row")
    common.add_run_args(ap, "docs/records/science-v2.jsonl", "runs/bench-science-v2")
    ap.add_argument("--plan", action="store_true", help="print the runs and the estimated hours; train nothing")
    ap.add_argument("--verbose", action="store_true", help="with --plan: list every run")
    ap.add_argument("--smoke", action="store_true",
                    help="1 seed, 2 epochs (converged: 3, doubled 6), rows none and fd, 300 avdigits images; "
                         "records to runs/bench-science-smoke/")
    args = ap.parse_args(argv)
    if args.smoke:
        args.seeds, args.epochs, args.teacher_epochs, args.conv_epochs, args.conv_cap = 1, 2, 2, 3, 6
        args.presets, args.rows = "avdigits", "none,fd"
        common.smoke_paths(ap, args, "runs/bench-science-smoke")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    bench = Bench(args)
    print(common.host_line(bench.info))
    if args.plan:
        print_plan(bench)
        return
    bench.run()
    print(f"\n{len(bench.records)} records in {bench.records_path}; tables: python -m bench.science.v2_tables "
          f"--records {bench.records_path}")
    cmd = " ".join(["python -m bench.science.v2", *(argv if argv is not None else sys.argv[1:])])
    print(f"reproduce: {cmd}")


if __name__ == "__main__":
    main()
