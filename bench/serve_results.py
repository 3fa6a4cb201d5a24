"""Tables from ``bench/serve_load.py``'s raw records (jsonl): one run, fdkd beside Triton and in-process.

    python bench/serve_results.py bench/serve_load.jsonl                    # print the latest run
    python bench/serve_results.py bench/serve_load.jsonl --write docs/results.md \
        --profiles bench/profiles/fdkd-binary-32clients.pyspy.txt bench/profiles/fdkd-json-32clients.pyspy.txt

``--write`` replaces what stands between ``<!-- serve_load:begin -->`` and ``<!-- serve_load:end -->``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

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


def render(records: list[dict], run_id: str | None) -> str:
    run_id = run_id or records[-1]["run_id"]
    recs = [r for r in records if r["run_id"] == run_id]
    if not recs:
        raise SystemExit(f"no records of run {run_id}")
    meta = recs[0]
    ref = next(r for r in recs if r["server"] == "in-process")
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
           f"{_f(batched)} rows/s; batch-1 p50 {ref['b1_p50_ms']:.3f} ms.", ""]
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
        r = rows.get((s, "binary", top))
        cells.append(f"{100 * r['rows_per_s'] / batched:.0f} %" if r else "-")
        out.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("records", type=Path)
    ap.add_argument("--run", default=None, help="run id (default: the latest)")
    ap.add_argument("--write", type=Path, default=None, help="markdown file with the begin/end markers")
    ap.add_argument("--profiles", type=Path, nargs="*", default=[],
                    help="py-spy raw profiles to summarize below the table (bench/profile_summary.py)")
    args = ap.parse_args()
    records = [json.loads(line) for line in args.records.read_text().splitlines() if line.strip()]
    table = render(records, args.run)
    if args.profiles:
        from profile_summary import summarize

        for p in args.profiles:
            table += f"\nWhere fdkd's time goes, `{p}` (py-spy, both threads, share of samples):\n\n"
            table += "| where | share |\n|---|---|\n"
            table += "".join(f"| {cat} | {100 * share:.1f} % |\n" for cat, share in summarize(p))
    if args.write is None:
        print(table)
        return
    text = args.write.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{args.write} has no {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    args.write.write_text(f"{head}{BEGIN}\n{table}{END}{tail}")
    print(f"wrote the table of run {args.run or records[-1]['run_id']} into {args.write}")


if __name__ == "__main__":
    main()
