"""Tables from ``bench/serve/load.py``'s raw records (jsonl): one run, fdkd beside Triton and in-process.

    python -m bench.serve.results docs/records/serve-load.jsonl                    # print the latest run
    python -m bench.serve.results docs/records/serve-load.jsonl --write docs/results/serve-load.md \
        --profiles docs/records/profiles/fdkd-binary-32clients.pyspy.txt \
        docs/records/profiles/fdkd-json-32clients.pyspy.txt

``--write`` replaces what stands between ``<!-- serve_load:begin -->`` and ``<!-- serve_load:end -->``.

Besides the tables it writes the verdict on each of issue 10's targets, from the per-round records.
The rounds are interleaved (each server meets the same quiet and busy moments), so each round of
fdkd is compared with the same round of the other side: a target is **met** when every round
clears it, **not met** when no round does, and **parity within noise** when the rounds disagree
(the median alone would call a difference smaller than the round-to-round swing).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench import common

BEGIN, END = "<!-- serve_load:begin -->", "<!-- serve_load:end -->"


def _f(v: float, digits: int = 0) -> str:
    return f"{v:,.{digits}f}"


def _median(recs: list[dict]) -> dict:
    """The median of each measure over a configuration's rounds; errors summed."""
    out = dict(recs[0])
    for k in ("rows_per_s", "p50_ms", "p99_ms"):
        out[k] = float(statistics.median(r[k] for r in recs))
    out["errors"] = sum(r["errors"] for r in recs)
    out["rounds"] = len(recs)
    return out


def _per_round(recs: list[dict]) -> dict[int, dict]:
    return {r["round"]: r for r in recs}


def _verdict(passes: list[bool]) -> str:
    if all(passes):
        return "met"
    if not any(passes):
        return "not met"
    return f"parity within noise ({sum(passes)} of {len(passes)} rounds clear it)"


def _rounds(passes: list[bool]) -> str:
    return "every round" if all(passes) else "no round" if not any(passes) else f"{sum(passes)} of {len(passes)} rounds"


def _paired(a: list[dict], b: list[dict]) -> list[tuple[dict, dict]]:
    ra, rb = _per_round(a), _per_round(b)
    return [(ra[i], rb[i]) for i in sorted(ra.keys() & rb.keys())]


SHARE_TARGETS = {"binary": 0.70, "json": 0.45}  # of in-process batched rows/s, one process, at the top client count


def _share(recs: list[dict], batched: float, refs: dict[int, float]) -> float:
    """Median share of in-process batched rows/s: per round against that round's reference where there is one."""
    if refs:
        return float(statistics.median(r["rows_per_s"] / refs.get(r["round"], batched) for r in recs))
    return float(statistics.median(r["rows_per_s"] for r in recs)) / batched


def targets(groups: dict[tuple, list[dict]], batched: float, top: int,
            refs: dict[int, float] | None = None) -> list[str]:
    """Issue 10's targets, each with the measured medians and its verdict over the paired rounds. ``refs``:
    in-process batched rows/s measured in each round (round -> rows/s), where the run has them."""
    refs = refs or {}
    med = {k: _median(v) for k, v in groups.items()}
    out = ["Targets, from the rounds of this run (met: every round; not met: no round; else parity within noise):",
           ""]
    for b in ("binary", "json"):
        f, t = groups.get(("fdkd", b, top)), groups.get(("triton", b, top))
        if not f or not t:
            continue
        pairs = _paired(f, t)
        mf, mt = med[("fdkd", b, top)], med[("triton", b, top)]
        both = [x["rows_per_s"] >= y["rows_per_s"] and x["p99_ms"] <= y["p99_ms"] for x, y in pairs]
        out.append(f"- {top} clients, {b}, `fdkd serve` >= Triton's rows/s with p99 <= Triton's: "
                   f"**{_verdict(both)}**"
                   f" (rows/s {mf['rows_per_s'] / mt['rows_per_s']:.2f}x Triton's: "
                   f"{_verdict([x['rows_per_s'] >= y['rows_per_s'] for x, y in pairs])}; "
                   f"p99 {mf['p99_ms']:.1f} vs {mt['p99_ms']:.1f} ms: "
                   f"{_verdict([x['p99_ms'] <= y['p99_ms'] for x, y in pairs])})")
    for b, share in SHARE_TARGETS.items():
        cells = []
        for s in sorted({s for s, bb, c in groups if s.startswith("fdkd") and bb == b and c == top}):
            rs = groups[(s, b, top)]
            cells.append(f"`{s}` {100 * _share(rs, batched, refs):.0f} % "
                         f"({_verdict([r['rows_per_s'] >= share * refs.get(r['round'], batched) for r in rs])})")
        if ("triton", b, top) in groups:
            cells.append(f"Triton {100 * _share(groups[('triton', b, top)], batched, refs):.0f} %")
        if cells and (b == "binary" or refs):  # runs before per-round references reported binary only
            out.append(f"- {top} clients, {b} >= {100 * share:.0f} % of in-process batched rows/s"
                       + (" (each round against that round's in-process run)" if refs else "") + ": "
                       + "; ".join(cells))
    for b in ("binary", "json"):
        f, bare = groups.get(("fdkd", b, 1)), groups.get(("bare", b, 1))
        if not f or not bare:
            continue
        pairs = _paired(f, bare)
        out.append(f"- one client, {b}, p50 within 0.15 ms of the bare ASGI endpoint: "
                   f"**{_verdict([x['p50_ms'] - y['p50_ms'] <= 0.15 for x, y in pairs])}** "
                   f"({med[('fdkd', b, 1)]['p50_ms']:.2f} vs {med[('bare', b, 1)]['p50_ms']:.2f} ms)")
    compare = [("fdkd-fastapi", "the hot path against the same routes through FastAPI"),
               ("fdkd-granian", "uvicorn (`fdkd serve`) against Granian (`--http granian`)")]
    for other, what in compare:
        parts = []
        for b in ("binary", "json"):
            f, o = groups.get(("fdkd", b, top)), groups.get((other, b, top))
            if not f or not o:
                continue
            pairs = _paired(f, o)
            mf, mo = med[("fdkd", b, top)], med[(other, b, top)]
            parts.append(f"{b} rows/s {mf['rows_per_s'] / mo['rows_per_s']:.2f}x "
                         f"(higher in {_rounds([x['rows_per_s'] > y['rows_per_s'] for x, y in pairs])}), "
                         f"p99 {mf['p99_ms']:.1f} vs {mo['p99_ms']:.1f} ms")
        if parts:
            out.append(f"- {what}, {top} clients: " + "; ".join(parts))
    best = {b: max((k for k in med if k[1] == b and k[2] == top and k[0] != "bare"),
                   key=lambda k: med[k]["rows_per_s"], default=None) for b in ("binary", "json")}
    if all(best.values()):
        out.append(f"- most rows/s at {top} clients: " + "; ".join(
            f"{b} `{best[b][0]}` ({_f(med[best[b]]['rows_per_s'])})" for b in best))
    return out + [""]


def render(records: list[dict], run_id: str | None) -> str:
    run_id = run_id or records[-1]["run_id"]
    recs = [r for r in records if r["run_id"] == run_id]
    if not recs:
        raise SystemExit(f"no records of run {run_id}")
    meta = recs[0]
    ref = next(r for r in recs if r["server"] == "in-process" and "round" not in r)
    refs = {r["round"]: r["batched_rows_per_s"] for r in recs if r["server"] == "in-process" and "round" in r}
    groups: dict[tuple, list[dict]] = {}
    for r in recs:
        if r["server"] != "in-process":
            groups.setdefault((r["server"], r["body"], r["clients"]), []).append(r)
    rows = {k: _median(v) for k, v in groups.items()}
    batched = ref["batched_rows_per_s"]
    out = [f"Run `{run_id}` ({meta['started']}): `{meta['command']}`  ",
           f"CPU: {meta['cpu']}, {meta['cores']} cores, SIMD flags: {meta['simd_flags']}; "
           f"1-minute load average at the start {meta.get('load_avg_1m') or 0:.1f}"
           + (f"; {meta['note']}" if meta.get("note") else "") + ".  ",
           f"In-process `student.onnx` (same process as the load generator): batched (64 rows) "
           f"{_f(batched)} rows/s; batch-1 p50 {ref['b1_p50_ms']:.3f} ms"
           + ("; measured again in each round (batched: "
              + ", ".join(_f(refs[k]) for k in sorted(refs)) + " rows/s), and each round's shares below are "
              "against that round's" if refs else "") + ".", ""]
    bodies = sorted({b for _, b, _ in rows}, key=["binary", "json"].index)
    clients = sorted({c for _, _, c in rows})
    if any(s == "triton" for s, _, _ in rows):
        out += ["| body | clients | fdkd rows/s | Triton rows/s | fdkd / Triton | fdkd / in-process batched | "
                "fdkd p50 ms | Triton p50 ms | fdkd p99 ms | Triton p99 ms | bare ASGI p50 ms | errors |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for b in bodies:
            for c in clients:
                f, t, bare = rows.get(("fdkd", b, c)), rows.get(("triton", b, c)), rows.get(("bare", b, c))
                if not f or not t:
                    continue
                out.append(f"| {b} | {c} | {_f(f['rows_per_s'])} | {_f(t['rows_per_s'])} | "
                           f"{f['rows_per_s'] / t['rows_per_s']:.2f} | {100 * f['rows_per_s'] / batched:.0f} % | "
                           f"{f['p50_ms']:.2f} | {t['p50_ms']:.2f} | {f['p99_ms']:.2f} | {t['p99_ms']:.2f} | "
                           f"{bare['p50_ms']:.2f} | {f['errors'] + t['errors']} |" if bare else
                           f"| {b} | {c} | {_f(f['rows_per_s'])} | {_f(t['rows_per_s'])} | "
                           f"{f['rows_per_s'] / t['rows_per_s']:.2f} | {100 * f['rows_per_s'] / batched:.0f} % | "
                           f"{f['p50_ms']:.2f} | {t['p50_ms']:.2f} | {f['p99_ms']:.2f} | {t['p99_ms']:.2f} | - | "
                           f"{f['errors'] + t['errors']} |")
        out.append("")
    servers = sorted({s for s, _, _ in rows})
    n_rounds = max(r["rounds"] for r in rows.values())
    top = max(clients)
    out += [f"Every server of the run (rows/s, p50 / p99 ms; medians of {n_rounds} interleaved rounds):", "",
            "| server | " + " | ".join(f"{b} x{c}" for b in bodies for c in clients)
            + f" | {top} clients: " + " | ".join(f"{b} / Triton" for b in bodies) + " | binary / in-process batched |",
            "|---|" + "---|" * (len(bodies) * len(clients) + len(bodies) + 1)]
    for s in servers:
        cells = []
        for b in bodies:
            for c in clients:
                r = rows.get((s, b, c))
                cells.append(f"{_f(r['rows_per_s'])} ({r['p50_ms']:.2f} / {r['p99_ms']:.2f})" if r else "-")
        for b in bodies:
            r, t = rows.get((s, b, top)), rows.get(("triton", b, top))
            cells.append(f"{r['rows_per_s'] / t['rows_per_s']:.2f}" if r and t else "-")
        g = groups.get((s, "binary", top))
        cells.append(f"{100 * _share(g, batched, refs):.0f} %" if g else "-")
        out.append(f"| {s} | " + " | ".join(cells) + " |")
    out += ["", *targets(groups, batched, top, refs)]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("records", type=Path)
    ap.add_argument("--run", default=None, help="run id (default: the latest)")
    ap.add_argument("--write", type=Path, default=None, help="markdown file with the begin/end markers")
    ap.add_argument("--profiles", type=Path, nargs="*", default=[],
                    help="py-spy raw profiles to summarize below the table (bench/serve/profile_summary.py)")
    args = ap.parse_args()
    records = [json.loads(line) for line in args.records.read_text().splitlines() if line.strip()]
    table = render(records, args.run)
    if args.profiles:
        from bench.serve.profile_summary import summarize

        for p in args.profiles:
            table += f"\nWhere fdkd's time goes, `{p}` (py-spy, both threads, share of samples):\n\n"
            table += "| where | share |\n|---|---|\n"
            table += "".join(f"| {cat} | {100 * share:.1f} % |\n" for cat, share in summarize(p))
    if args.write is None:
        print(table)
        return
    common.write_section(args.write, BEGIN, END, "\n" + table)
    print(f"wrote the table of run {args.run or records[-1]['run_id']} into {args.write}")


if __name__ == "__main__":
    main()
