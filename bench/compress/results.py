"""docs/results/compress.md (results.md section 3) from bench.compress.run's records (docs/records/compress.jsonl).

    python -m bench.compress.results --results docs/results/compress.md   # rewrite its marked part
    python -m bench.compress.results                                # print it

One table per benchmark run (the newest run of each CPU, INT8 kernel family and command), headed by
the machine it holds for; then, per INT8 kernel family, the target check (INT8 >= 4x torch eager
FP32 at batch 64 within 0.5 accuracy points) and the graph a CPU user of that family should serve:
the fastest at batch 64 among those within 0.5 points of eager. Nothing in the section is typed by
hand; a record with ``source`` (numbers carried over from an older results.md whose raw output was
not kept) says so in its heading.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECORDS = ROOT / "docs" / "records" / "compress.jsonl"
BEGIN, END = "<!-- compress:begin (bench/compress/results.py) -->", "<!-- compress:end -->"
TARGET_X, TARGET_PT = 3.0, 0.5  # issue 32: the served CPU INT8 graph >= 3x eager at batch 64 within 0.5 pt
# the real students' section (issue 30 item 5): bench.compress.real's records and bench.compress.op_profile's
REAL_RECORDS = ROOT / "docs" / "records" / "compress-real.jsonl"
OPS_RECORDS = ROOT / "docs" / "records" / "compress-real-ops.jsonl"
REAL_BEGIN, REAL_END = "<!-- compress-real:begin (bench/compress/results.py) -->", "<!-- compress-real:end -->"
# student arch -> (x ORT FP32, x torch eager) the best INT8 graph within TARGET_PT must reach at batch 64 (issue 30)
REAL_TARGETS = {"timm:resnet18": (3.0, 4.0)}


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def runs(records: list[dict]) -> list[list[dict]]:
    """Records grouped by run, in the order of their first record."""
    by: dict[str, list[dict]] = {}
    for r in records:
        by.setdefault(r["run_id"], []).append(r)
    return list(by.values())


def _is_int8(r: dict) -> bool:
    return ".int8" in r["file"]


def _served_graph(r: dict) -> bool:
    """A graph a CPU server could run: not the FP16 graph (for TensorRT) nor Q/DQ emulated (reference only)."""
    return r["file"] != "student.pt" and "fp16" not in r["file"] and (r.get("mode") or {}).get("qdq") != "emulated"


def isa_summary(flags: str) -> str:
    """``AVX2 yes, AVX-512 yes, VNNI yes`` from a record's SIMD flag list (x86; VNNI: AVX-512 VNNI or AVX-VNNI)."""
    f = set(flags.replace("(", " ").split())
    yes = {"AVX2": "avx2" in f, "AVX-512": "avx512f" in f, "VNNI": bool(f & {"avx512_vnni", "avx_vnni"}),
           "AMX-INT8": "amx_int8" in f}
    return ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in yes.items())


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}" if v < 10 else f"{v:.2f}"


def _spread(r: dict, key: str) -> str:
    """``2.95 (2.80-3.10)``: the ratio over all calls, then its lowest and highest of the interleaved rounds."""
    rounds = r.get(key + "_rounds") or []
    return f"{r[key]:.2f}" + (f" ({min(rounds):.2f}-{max(rounds):.2f})" if len(rounds) > 1 else "")


def render_run(records: list[dict]) -> str:
    """One run: heading (machine, date, command), then one row per artifact with every batch's columns."""
    r0 = records[0]
    batches = sorted({r["batch"] for r in records})
    rows: dict[str, dict[int, dict]] = {}
    for r in records:
        rows.setdefault(r["artifact"], {})[r["batch"]] = r
    head = (f"**{r0['cpu']}**, INT8 kernel family `{r0['int8_kernels']}`, {isa_summary(r0['simd_flags'])} "
            f"({r0['cores']} cores, {r0['threads']} threads; SIMD flags: {r0['simd_flags'] or '-'}); "
            f"{r0['started'][:10]}, torch {r0.get('torch', '?')}, "
            f"ONNX Runtime {r0.get('onnxruntime', '?')}, {r0['test_rows']} test rows, "
            f"{r0['mflop_per_sample']:.1f} MFLOP per sample")
    if r0.get("load_avg_1m") is not None:
        head += f", 1-min load average {r0['load_avg_1m']:.1f} at the start"
        if r0.get("load_avg_1m_end") is not None:
            head += f", {r0['load_avg_1m_end']:.1f} at the end"
    if r0.get("student"):
        head = f"Student `{r0['student']}`, input {'x'.join(map(str, r0['input_shape']))}; " + head
    lines = [head + ".", ""]
    if r0.get("source"):
        lines += [f"Source: {r0['source']}.", ""]
    if r0.get("note"):  # the conditions the run was measured in (a short-trained student, a loaded machine)
        lines += [f"Conditions: {r0['note']}.", ""]
    lines += [f"Reproduce: `{r0['command']}`", ""]
    real = "x_fp32" in r0  # interleaved rounds: ratios to ORT FP32 too, with their spread over the rounds
    cols = ["artifact", "test acc %", "delta pt"] + (["top-1 agree % vs FP32", "max logit err"] if real else [])
    for b in batches:
        cols += ([f"b{b} rows/s", f"b{b} p50 ms", f"b{b} x eager", f"b{b} x ORT FP32"] if real else
                 [f"b{b} rows/s", f"b{b} p50 ms", f"b{b} p99 ms", f"b{b} x eager"])
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for label, per in rows.items():
        any_r = next(iter(per.values()))
        cells = [label, f"{100 * any_r['accuracy']:.1f}", f"{any_r['acc_delta_pt']:+.1f}"]
        if real:
            cells += [f"{any_r['agree_fp32_pct']:.1f}", f"{any_r['max_logit_err']:.3g}"]
        for b in batches:
            rb = per.get(b)
            if rb is None:
                cells += ["-"] * 4
            elif real:
                cells += [f"{rb['rows_per_s']:.0f}", _ms(rb["p50_ms"]), _spread(rb, "x_eager"), _spread(rb, "x_fp32")]
            else:
                cells += [f"{rb['rows_per_s']:.0f}", _ms(rb["p50_ms"]), _ms(rb.get("p99_ms")), f"{rb['x_eager']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if r0.get("matmul_gflops"):
        lines += ["", f"FP32 matmul ceiling of that machine (torch 1024^3, {r0['threads']} threads): "
                      f"{r0['matmul_gflops']:.0f} GFLOP/s."]
    served = r0.get("served")
    if served:
        lines += ["", f"`fdkd serve` (artifact auto) picked there: `{served['artifact']}`" if served.get("artifact")
                  else f"`fdkd serve` (artifact auto) refused there: {served.get('reason')}"]
    return "\n".join(lines)


def verdict(records: list[dict]) -> list[str]:
    """The target check and the graph to serve, for one run's records (one kernel family)."""
    r0 = records[0]
    b = max(r["batch"] for r in records)
    at = [r for r in records if r["batch"] == b]
    int8 = [r for r in at if _is_int8(r) and _served_graph(r)]
    ok = [r for r in int8 if abs(r["acc_delta_pt"]) <= TARGET_PT]
    fam = f"`{r0['int8_kernels']}` ({r0['cpu']}, {r0['started'][:10]})"
    out = []
    if b != 64:
        out.append(f"- {fam}: no batch-64 measurement; the target is not checked.")
    elif not int8:
        out.append(f"- {fam}: no INT8 graph measured.")
    else:
        best = max(ok or int8, key=lambda r: r["rows_per_s"])
        met = bool(ok) and best["x_eager"] >= TARGET_X
        out.append(f"- {fam}: target (INT8 >= {TARGET_X:g}x torch eager FP32 at batch 64, within {TARGET_PT} pt) "
                   f"**{'met' if met else 'not met'}**: the best INT8 graph "
                   f"{'within ' + str(TARGET_PT) + ' pt ' if ok else '(none is within ' + str(TARGET_PT) + ' pt) '}"
                   f"is {best['artifact']} at **{best['x_eager']:.2f}x** eager, "
                   f"{best['acc_delta_pt']:+.1f} pt.")
    cands = [r for r in at if _served_graph(r) and abs(r["acc_delta_pt"]) <= TARGET_PT]
    if cands:
        pick = max(cands, key=lambda r: r["rows_per_s"])
        fp32 = next((r for r in at if r["file"] == "student.onnx"), None)
        vs = f", {pick['rows_per_s'] / fp32['rows_per_s']:.2f}x FP32 ONNX Runtime" if fp32 and pick is not fp32 else ""
        out.append(f"  Serve on this family: **`{pick['file']}`** (fastest at batch {b} within {TARGET_PT} pt: "
                   f"{pick['x_eager']:.2f}x eager{vs}).")
    return out


def render(records: list[dict]) -> str:
    parts = [f"\nGenerated by `python -m bench.compress.results --results docs/results/compress.md` from "
             f"`docs/records/compress.jsonl` ({len(records)} records); each table holds for the machine named "
             "above it only.\n"]
    groups = runs(records)
    newest: dict[tuple, list[dict]] = {}
    for g in groups:  # the newest run per (CPU, family, source, gate search shown) replaces older ones in the tables
        searched = any("[gate-searched" in r["artifact"] for r in g)
        newest[g[0]["cpu"], g[0]["int8_kernels"], g[0].get("source", ""), searched] = g
    shown = sorted(newest.values(), key=lambda g: g[0]["started"])
    for i, g in enumerate(shown):
        parts.append(f"#### 3.{i + 1}. `{g[0]['int8_kernels']}`: {g[0]['cpu']}\n\n{render_run(g)}\n")
    parts.append("Per INT8 kernel family (the newest run of each):\n")
    fams: dict[str, list[dict]] = {}
    for g in shown:
        fams[g[0]["int8_kernels"]] = g
    for g in fams.values():
        parts.append("\n".join(verdict(g)))
    return "\n".join(parts) + "\n"


def real_verdict(records: list[dict]) -> list[str]:
    """One real student's run: the best served INT8 graph within TARGET_PT of ONNX Runtime FP32 at batch 64, its
    ratios (with the spread over the interleaved rounds) and, where the issue sets one, the target check."""
    r0 = records[0]
    at = [r for r in records if r["batch"] == max(r["batch"] for r in records)]
    fp32 = next((r for r in at if r["file"] == "student.onnx"), None)
    int8 = [r for r in at if _is_int8(r) and _served_graph(r)]
    who = f"`{r0['student']}` ({r0['cpu']}, {r0['started'][:16].replace('T', ' ')} UTC)"
    if fp32 is None or not int8:
        return [f"- {who}: no ONNX Runtime FP32 or no INT8 graph measured."]
    for r in int8:
        r["_pt"] = 100 * (r["accuracy"] - fp32["accuracy"])
    ok = [r for r in int8 if abs(r["_pt"]) <= TARGET_PT]
    best = max(ok or int8, key=lambda r: r["rows_per_s"])
    line = (f"- {who}, batch {best['batch']}: the fastest INT8 graph "
            f"{'within ' + str(TARGET_PT) + ' pt of FP32' if ok else '(none is within ' + str(TARGET_PT) + ' pt)'} "
            f"is {best['artifact']}, {best['_pt']:+.1f} pt, top-1 agreement {best['agree_fp32_pct']:.1f} %: "
            f"**{_spread(best, 'x_fp32')}x** ONNX Runtime FP32 and **{_spread(best, 'x_eager')}x** torch eager "
            "(over all calls; lowest-highest of the interleaved rounds).")
    target = REAL_TARGETS.get(r0["student"])
    if target:
        met = bool(ok) and best["x_fp32"] >= target[0] and best["x_eager"] >= target[1]
        line += (f" Target (>= {target[0]:g}x ONNX Runtime FP32 and >= {target[1]:g}x eager within {TARGET_PT} pt): "
                 f"**{'met' if met else 'not met'}**.")
    for r in int8:
        r.pop("_pt")
    return [line]


def render_ops(ops: list[dict]) -> str:
    """Per student and batch, the newest profile of each graph side by side: milliseconds per call per op type (nodes
    per call): which ops ran as integer kernels and which stayed in float."""
    newest: dict[tuple, dict] = {}
    for r in ops:
        newest[r["student"], r["batch"], r["graph"]] = r
    parts = []
    for student, batch in dict.fromkeys((k[0], k[1]) for k in newest):
        profs = [v for k, v in newest.items() if k[:2] == (student, batch)]
        names = list(dict.fromkeys(op for p in profs for op, *_ in p["ops"]))
        p0 = profs[0]
        parts += [f"**`{student}`, batch {batch}**: ONNX Runtime's profiler, ms per call per op type (nodes per call), "
                  f"{p0['cpu']}, {p0['threads'] or 'default'} threads, {p0['calls']} calls, "
                  f"{p0['started'][:16].replace('T', ' ')} UTC, 1-min load {p0['load_avg_1m']:.1f}. Reproduce: "
                  f"`{p0['command']}`", ""]
        parts += ["| op type | " + " | ".join(f"`{p['graph']}`" for p in profs) + " |", "|---|" + "---|" * len(profs)]
        parts.append("| all nodes | " + " | ".join(f"{p['total_ms']:.1f}" for p in profs) + " |")
        for op in names:
            cells = []
            for p in profs:
                hit = next((x for x in p["ops"] if x[0] == op), None)
                cells.append("-" if hit is None else f"{hit[1]:.2f} ({hit[2]:.0f})")
            parts.append(f"| {op} | " + " | ".join(cells) + " |")
        parts.append("")
    return "\n".join(parts)


def render_real(records: list[dict], ops: list[dict]) -> str:
    parts = [f"\nGenerated by `python -m bench.compress.results --results docs/results/compress.md` from "
             f"`docs/records/compress-real.jsonl` ({len(records)} records) and `docs/records/compress-real-ops.jsonl` "
             f"({len(ops)} records); each table holds for the machine named in it only. Ratios: median time of the "
             "baseline over median time of the graph, all calls of the batch, then (in brackets) the lowest and "
             "highest of the same ratio per interleaved round (every graph timed in turn, round after round).\n"]
    newest: dict[tuple, list[dict]] = {}
    for g in runs(records):
        newest[g[0]["cpu"], g[0]["int8_kernels"], g[0]["student"]] = g
    shown = sorted(newest.values(), key=lambda g: g[0]["started"])
    for i, g in enumerate(shown):
        parts.append(f"#### R.{i + 1}. `{g[0]['student']}`, {g[0]['cpu']} (`{g[0]['int8_kernels']}`)\n\n"
                     f"{render_run(g)}\n")
    parts.append("Per student (the newest run of each):\n")
    parts.append("\n".join(line for g in shown for line in real_verdict(g)))
    if ops:
        parts.append("\n#### Where the time goes\n\n" + render_ops(ops))
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=Path, default=RECORDS)
    ap.add_argument("--results", type=Path, help="rewrite this markdown file's compress section")
    args = ap.parse_args(argv)
    body = render(load(args.records))
    if args.results:
        from bench.common import write_section

        write_section(args.results, BEGIN, END, body)
        print(f"{args.results}: compress section rewritten")
        if REAL_RECORDS.exists() and args.records == RECORDS:
            ops = load(OPS_RECORDS) if OPS_RECORDS.exists() else []
            write_section(args.results, REAL_BEGIN, REAL_END, render_real(load(REAL_RECORDS), ops))
            print(f"{args.results}: real-student section rewritten")
    else:
        print(body)


if __name__ == "__main__":
    main()
