"""The science v2 tables (docs/results/science-v2.md), generated from the records of ``bench.science.v2``.

    python -m bench.science.v2_tables                       # rewrite the marked part of docs/results/science-v2.md
    python -m bench.science.v2_tables --records R --results - # print it instead

Per preset and direction: test accuracy of the student's own head (checkpoint chosen on
validation), mean +- sample std over seeds, and per row the paired per-seed difference to `none`
(same seed, same budget) with its 95 % t-interval, for the fixed and the converged budget; then the
verdicts (a gain counts as knowledge transfer only where it beats `none`, `none+LS` and the same
method with the shuffled teacher, each with a 95 % interval above zero) and the validation curves
of the converged runs (PNGs next to the tables). Nothing here is typed by hand.
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

from bench import common
from bench.science.common import PLATEAU_PT, load_for_tables, tag
from bench.science.v2 import CONVERGED, HEADROOM_PT, PICKED, ROWS, SWEEP, WALL

ROOT = Path(__file__).resolve().parents[2]

BEGIN, END = "<!-- science-v2:begin (bench/science/v2_tables.py) -->", "<!-- science-v2:end -->"
CONTROLS = {"kd": "kd shuffled teacher", "fd": "fd shuffled teacher", PICKED: "fd shuffled teacher"}
ORDER = ["avdigits", "avblend:shared=0", "avblend:shared=0.5", "avblend:shared=1", "avmnist"]  # class-level first


def device_of(r: dict) -> str:
    """Where a run trained: the GPU's name, or the CPU's core count (the CPU machines of this project differ)."""
    m = r["machine"]
    return m["device"] if m["device"] != "cpu" else f"CPU ({m['cores']} cores)"


def devices_line(records: list[dict]) -> str:
    counts: dict[str, int] = {}
    for r in records:
        counts[device_of(r)] = counts.get(device_of(r), 0) + 1
    return ", ".join(f"{n} on {d}" for d, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def t975(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def paired(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, int] | None:
    """(mean difference, 95 % half-width, n) over the seeds both have; None below 2 seeds."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    d = [a[s] - b[s] for s in seeds]
    return statistics.mean(d), t975(len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d)), len(d)


def fmt_acc(v: dict[int, float]) -> str:
    if not v:
        return "-"
    xs = list(v.values())
    sd = f" ± {statistics.stdev(xs):.1f}" if len(xs) > 1 else ""
    return f"{statistics.mean(xs):.1f}{sd} (n={len(xs)})"


def fmt_diff(p) -> str:
    if p is None:
        return "-"
    m, h, _ = p
    lo, hi = m - h, m + h
    mark = "**" if lo > 0 or hi < 0 else ""
    return f"{mark}{m:+.1f} [{lo:+.1f}, {hi:+.1f}]{mark}"


class Records:
    def __init__(self, records: list[dict]) -> None:
        self.records = records

    def cells(self) -> list[tuple[str, str]]:
        seen = []
        for r in self.records:
            if (r["preset"], r["direction"]) not in seen:
                seen.append((r["preset"], r["direction"]))
        rank = {p: i for i, p in enumerate(ORDER)}
        return sorted(seen, key=lambda c: (rank.get(c[0], len(ORDER)), c[0], c[1] != "image->audio"))

    def get(self, preset, direction, row, budget, epochs=None) -> list[dict]:
        return [r for r in self.records if (r["preset"], r["direction"], r["row"], r["budget"]) == (preset, direction,
                                                                                                  row, budget)
                and (epochs is None or r["epochs"] == epochs)]

    def by_seed(self, preset, direction, row, budget) -> dict[int, dict]:
        """Per seed the record that counts: fixed = the only one; converged = the longest attempt."""
        out: dict[int, dict] = {}
        for r in self.get(preset, direction, row, budget):
            if r["seed"] not in out or r["epochs"] > out[r["seed"]]["epochs"]:
                out[r["seed"]] = r
        return out

    def fixed_epochs(self, preset, direction) -> int | None:
        none = self.get(preset, direction, "none", "fixed")
        return min(r["epochs"] for r in none) if none else None

    def picked(self, preset, direction) -> str | None:
        e = self.fixed_epochs(preset, direction)
        means = {}
        for row in SWEEP:
            recs = self.get(preset, direction, row, "fixed", e)
            if not recs:
                return None
            means[row] = statistics.mean(r["val_acc"] for r in recs)
        return max(means, key=lambda r: (means[r], -SWEEP[r]))

    def acc(self, preset, direction, row, budget) -> dict[int, float]:
        """Test accuracy % per seed for a table row (resolving the derived rows)."""
        if row == PICKED:
            picked = self.picked(preset, direction)
            if picked is None:
                return {}
            if budget == "fixed" or picked == "fd":
                row = picked
        if budget == "fixed" and row not in (WALL,):
            e = self.fixed_epochs(preset, direction)
            recs = {r["seed"]: r for r in self.get(preset, direction, row, "fixed", e)}
        else:
            recs = self.by_seed(preset, direction, row, budget)
        return {s: 100 * r["test_acc"] for s, r in recs.items()}

    def diff(self, preset, direction, a: str, b: str, budget: str):
        """Paired per-seed difference a - b (test %). Converged: per seed at the longest epoch count both rows
        reached, so a 60-epoch attempt is never set against a 30-epoch one while the doubled runs are landing."""
        if budget != "converged":
            return paired(self.acc(preset, direction, a, budget), self.acc(preset, direction, b, budget))
        ea, eb = self._attempts(preset, direction, a), self._attempts(preset, direction, b)
        x, y = {}, {}
        for seed in set(ea) & set(eb):
            common = set(ea[seed]) & set(eb[seed])
            if common:
                e = max(common)
                x[seed], y[seed] = ea[seed][e], eb[seed][e]
        return paired(x, y)

    def _attempts(self, preset, direction, row) -> dict[int, dict[int, float]]:
        if row == PICKED and self.picked(preset, direction) == "fd":
            row = "fd"
        out: dict[int, dict[int, float]] = {}
        for r in self.get(preset, direction, row, "converged"):
            out.setdefault(r["seed"], {})[r["epochs"]] = 100 * r["test_acc"]
        return out


def cell_section(rec: Records, preset: str, direction: str, png_dir: Path | None) -> list[str]:
    out = [f"### {preset}, {direction} student", ""]
    teacher = rec.get(preset, direction, "teacher", "teacher")
    none0 = [r for r in rec.get(preset, direction, "none", "fixed") if r["seed"] == 0]
    if teacher:
        t = teacher[0]
        out.append(f"Teacher ({direction.split('->')[0]}): {100 * t['val_acc']:.1f} % val, {100 * t['test_acc']:.1f} % "
                   f"test, {t['cpu_seconds']:.0f} CPU-s to train.")
    for t in rec.get(preset, direction, "teacher", "retrained"):
        users = [r for r in rec.records if (r["preset"], r["direction"]) == (preset, direction)
                 and r["row"] != "teacher" and r.get("teacher_sha256") == t.get("teacher_sha256")]
        rows = sorted({r["row"] for r in users}, key=lambda r: [*ROWS, PICKED, WALL].index(r))
        where = device_of(t) + (f", {t['machine']['cpu']}" if t["machine"]["device"] == "cpu" else "")
        out.append(f"Its checkpoint was not kept from {device_of(teacher[0]) if teacher else 'the first run'}, so it "
                   f"was trained again on {where} (same config and seed; checkpoint sha256 "
                   f"{t.get('teacher_sha256', '?')}): {100 * t['val_acc']:.1f} % val, {100 * t['test_acc']:.1f} % "
                   f"test. {len(users)} runs had that teacher ({', '.join(rows) or 'none yet'}); the others "
                   "the first or another retrained one (each named here).")
    if teacher and none0 and 100 * (teacher[0]["val_acc"] - none0[0]["val_acc"]) < HEADROOM_PT:
        out += ["", f"**No headroom**: the student alone reaches {100 * none0[0]['val_acc']:.1f} % val (seed 0), the "
                f"teacher {100 * teacher[0]['val_acc']:.1f} %; this direction's other rows were not run.", ""]
        return out
    e = rec.fixed_epochs(preset, direction)
    picked = rec.picked(preset, direction)
    conv_e = sorted({r["epochs"] for r in rec.records if (r["preset"], r["direction"], r["budget"]) ==
                     (preset, direction, "converged")})
    mine = [r for r in rec.records if (r["preset"], r["direction"]) == (preset, direction)]
    out += ["", f"Runs: {devices_line(mine)} (the CPU-s column is each run's own process time on its device; "
            "runs of one seed on different devices differ only by floating-point order: the weights, batches and "
            "augmentations are drawn on the CPU from the same seeds).",
            "", f"Fixed budget: {e} epochs for every row. Converged: {' or '.join(map(str, conv_e)) or '-'} epochs "
            "(the longer where the first attempt's curve was not flat). Test accuracy %, mean ± sample std over "
            "seeds; "
            "Δ: paired per-seed difference to `none` in the same budget (converged: at the longest epoch count both "
            "reached for that seed), [95 % t-interval], bold where it excludes 0.",
            "", "| row | fixed | Δ vs none | converged | Δ vs none | converged: flat runs | CPU-s / run (fixed) |",
            "|---|---|---|---|---|---|---|"]
    base = {b: rec.acc(preset, direction, "none", b) for b in ("fixed", "converged")}
    rows = [*ROWS, PICKED, WALL]
    for row in rows:
        fixed = rec.acc(preset, direction, row, "fixed")
        conv = rec.acc(preset, direction, row, "converged") if row in CONVERGED else {}
        if not fixed and not conv:
            continue
        label = row
        if row == PICKED and picked:
            label = f"{row}: {picked}"
        if row == WALL:
            eps = [r["epochs"] for r in rec.get(preset, direction, WALL, "fixed")]
            label = f"{row}: {min(eps)}-{max(eps)} epochs"
        conv_row = ("fd" if picked == "fd" else PICKED) if row == PICKED else row
        flat = rec.by_seed(preset, direction, conv_row, "converged") if row in CONVERGED else {}
        flat_txt = f"{sum(1 for r in flat.values() if r.get('flat'))}/{len(flat)}" if flat else "-"
        cpu = [r["cpu_seconds"] for r in rec.get(preset, direction, picked if row == PICKED else row, "fixed",
                                                  None if row == WALL else e)]
        d_fixed = fmt_diff(paired(fixed, base["fixed"])) if fixed and row != "none" else ""
        d_conv = fmt_diff(rec.diff(preset, direction, row, "none", "converged")) if conv and row != "none" else ""
        cpu_txt = f"{statistics.mean(cpu):.0f}" if cpu else "-"
        out.append(f"| {label} | {fmt_acc(fixed)} | {d_fixed} | {fmt_acc(conv)} | {d_conv} | {flat_txt} | {cpu_txt} |")
    ls = rec.get(preset, direction, "none+LS", "fixed")
    if ls:
        r = ls[0]
        out += ["", f"`none+LS` smoothing strength: {r['label_smoothing']:.3f} (matches the teacher's mean "
                f"soft-target entropy {r['teacher_entropy']:.3f} nats at T = {r['label_smoothing_temperature']})."]
    out += ["", *verdicts(rec, preset, direction), ""]
    if png_dir is not None and plot_curves(rec, preset, direction, png_dir):
        name = f"science-curves-{tag(preset, direction)}.png"
        out += [f"![validation curves, converged budget]({name})", ""]
    return out


def verdict(rec: Records, preset: str, direction: str, method: str, budget: str) -> tuple[bool, str] | None:
    """(transfers?, why): a gain counts only above `none`, `none+LS` and the shuffled teacher, each paired per seed
    with a 95 % interval above zero. None where the method was not run in this budget."""
    m = rec.acc(preset, direction, method, budget)
    if not m:
        return None
    tests = {}
    for other in ("none", "none+LS", CONTROLS[method]):
        o = rec.acc(preset, direction, other, budget)
        tests[other] = "not run" if not o else rec.diff(preset, direction, method, other, budget) or \
            "fewer than 2 paired seeds"
    beaten = [k for k, p in tests.items() if isinstance(p, tuple) and p[0] - p[1] > 0]
    if len(beaten) == len(tests):
        return True, "above `none`, `none+LS` and the shuffled teacher (95 % intervals)"
    why = [f"`{k}`: {p}" if isinstance(p, str) else f"not above `{k}` ({fmt_diff(p)})"
           for k, p in tests.items() if k not in beaten]
    return False, "; ".join(why)


def verdicts(rec: Records, preset: str, direction: str) -> list[str]:
    out = []
    for budget in ("fixed", "converged"):
        for method in CONTROLS:
            v = verdict(rec, preset, direction, method, budget)
            if v is not None:
                text = "**transfers knowledge**" if v[0] else "knowledge transfer **not shown**"
                out.append(f"- {budget} budget, `{method}`: {text}: {v[1]}.")
    return out


def summary(rec: Records) -> list[str]:
    """One line per preset, direction and budget: where each method transfers knowledge and where it does not."""
    out = ["| preset | direction | budget | " + " | ".join(f"`{m}`" for m in CONTROLS) + " |",
           "|---|---|---|" + "---|" * len(CONTROLS)]
    for preset, direction in rec.cells():
        for budget in ("fixed", "converged"):
            cells = []
            for m in CONTROLS:
                v = verdict(rec, preset, direction, m, budget)
                cells.append("-" if v is None else ("**transfers**" if v[0] else "not shown"))
            if any(c != "-" for c in cells):
                out.append(f"| {preset} | {direction} | {budget} | " + " | ".join(cells) + " |")
    return out


CROSS = [  # (column, method row, reference row, budget): the paired per-seed differences that answer the question
    ("`fd` − `none`, fixed", "fd", "none", "fixed"),
    ("`fd` − `none+LS`, fixed", "fd", "none+LS", "fixed"),
    ("`fd` − shuffled teacher, fixed", "fd", "fd shuffled teacher", "fixed"),
    ("`kd` − shuffled teacher, fixed", "kd", "kd shuffled teacher", "fixed"),
    ("`fd` − `none`, converged", "fd", "none", "converged"),
    ("`none` at equal time − `none`, fixed", WALL, "none", "fixed"),
]


def cross(rec: Records) -> list[str]:
    """One row per preset and direction with headroom: does the gain grow with instance pairing (shared)?"""
    out = ["| preset | direction | " + " | ".join(c for c, *_ in CROSS) + " |", "|---|---|" + "---|" * len(CROSS)]
    for preset, direction in rec.cells():
        cells = [fmt_diff(rec.diff(preset, direction, m, ref, b)) for _, m, ref, b in CROSS]
        if any(c != "-" for c in cells):
            out.append(f"| {preset} | {direction} | " + " | ".join(cells) + " |")
    return out


def plot_curves(rec: Records, preset: str, direction: str, png_dir: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    for row in CONVERGED:
        recs = list(rec.by_seed(preset, direction, row, "converged").values())
        if row == PICKED and not recs and rec.picked(preset, direction) == "fd":
            continue
        if not recs:
            continue
        n = min(len(r["val_curve"]) for r in recs)
        curve = 100 * np.mean([r["val_curve"][:n] for r in recs], axis=0)
        ax.plot(np.arange(1, n + 1), curve, label=f"{row} (n={len(recs)})")
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy % (mean over seeds)")
    ax.set_title(f"{preset}, {direction}: converged budget")
    ax.legend(fontsize=7)
    fig.tight_layout()
    png_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_dir / f"science-curves-{tag(preset, direction)}.png", dpi=100)
    plt.close(fig)
    return True


def render(records: list[dict], png_dir: Path | None, command: str) -> str:
    rec = Records(records)
    machines = sorted({f"{device_of(r)}: {r['machine']['cpu']} ({r['machine']['cores']} cores; "
                       f"{' '.join(r['machine']['flags'])}); torch {r['machine']['torch']}" for r in records})
    salvaged = sum(1 for r in records if r.get("salvaged"))
    widths = sorted({s.split("=", 1)[1] for r in records for s in r["sets"] if s.startswith("distill.student.width=")})
    out = [BEGIN, "", f"Generated by `python -m bench.science.v2_tables` from {len(records)} records of {command}; "
           f"student width {', '.join(widths) or 'default'}; runs: {devices_line(records)}"
           + (f" ({salvaged} rebuilt by `bench/science/salvage.py` from their run directories: CPU-s to whole "
              "seconds, no wall time)" if salvaged else "") + "; machines: " + "; ".join(machines) + ".",
           f"Plateau rule: a converged run is flat when the last third of its epochs raised the best validation "
           f"accuracy by less than {PLATEAU_PT} point; `none (equal wall time)` trains the student alone for the CPU "
           f"time the teacher and the `fd` student took together.", ""]
    out += ["Where a method transfers the teacher's knowledge (above `none`, `none+LS` and its shuffled-teacher "
            "control, each with a paired 95 % interval above zero) and where it does not:", "", *summary(rec), "",
            "Across presets (test accuracy points, paired per seed, [95 % t-interval], bold where it excludes 0; "
            "avblend's `shared` is the fraction of pairs whose image and clip are one event, avdigits pairs by class "
            "only):", "", *cross(rec), ""]
    for preset, direction in rec.cells():
        out += cell_section(rec, preset, direction, png_dir)
    out.append(END)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=Path, default=ROOT / "docs" / "records" / "science-v2.jsonl")
    ap.add_argument("--results", default=str(ROOT / "docs" / "results" / "science-v2.md"),
                    help="file with the markers, or -")
    ap.add_argument("--command", default="`python -m bench.science.v2 --jobs 2` on the CPU and "
                    "`bash bench/gpu/check.sh --science 555` on the lent GPU", help="how the records were made")
    args = ap.parse_args(argv)
    records = load_for_tables(args.records, "bench.science.v2")
    if args.results == "-":
        print(render(records, None, args.command))
        return
    path = Path(args.results)
    if BEGIN not in path.read_text():  # before the PNGs are drawn
        raise SystemExit(f"{path} has no {BEGIN} ... {END} markers to replace")
    section = render(records, path.parent, args.command)
    common.write_section(path, BEGIN, END, section.removeprefix(BEGIN).removesuffix(END))
    print(f"wrote the science section of {path} ({len(records)} records)")


if __name__ == "__main__":
    main()
