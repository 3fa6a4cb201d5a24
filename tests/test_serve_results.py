"""bench/serve/results.py's target verdicts: from the paired, interleaved rounds, never from the median alone."""

from __future__ import annotations

import json
from pathlib import Path

from bench.serve.results import render, targets


def _recs(server: str, body: str, clients: int, rows: list[float], p99: list[float]) -> list[dict]:
    return [{"server": server, "body": body, "clients": clients, "round": i, "rows_per_s": r, "p50_ms": 1.0,
             "p99_ms": q, "errors": 0} for i, (r, q) in enumerate(zip(rows, p99, strict=True))]


def test_a_median_edge_the_rounds_contradict_is_parity_not_met():
    groups = {  # the committed run's JSON case: medians 1,399 vs 1,395 rows/s, but the rounds split
        ("fdkd", "json", 32): _recs("fdkd", "json", 32, [1196, 1399, 1371, 1535, 1467], [54, 31, 33, 42, 31]),
        ("triton", "json", 32): _recs("triton", "json", 32, [1195, 1428, 1331, 1866, 1395], [42, 33, 37, 24, 46]),
        ("fdkd", "binary", 32): _recs("fdkd", "binary", 32, [2900] * 3, [16, 17, 15]),
        ("triton", "binary", 32): _recs("triton", "binary", 32, [1700] * 3, [27, 26, 28]),
    }
    lines = "\n".join(targets(groups, batched=5000.0, top=32))
    json_line = next(x for x in lines.splitlines() if ", json," in x)
    binary_line = next(x for x in lines.splitlines() if ", binary, `fdkd serve`" in x)
    assert "**parity within noise (2 of 5 rounds clear it)**" in json_line and "met**" not in json_line
    assert "**met**" in binary_line and "1.71x" in binary_line
    assert "`fdkd` 58 % (not met)" in lines  # 2,900 of 5,000 rows/s batched, below 70 % in every round


def test_the_committed_run_renders_its_verdicts_from_the_records():
    path = Path(__file__).resolve().parents[1] / "docs" / "records" / "serve-load.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    text = render(records, "48f3f2ad595f")
    assert "32 clients, json, `fdkd serve` >= Triton's rows/s with p99 <= Triton's: **parity within noise" in text
    assert "most rows/s at 32 clients: binary `fdkd-2proc`" in text


def test_shares_of_in_process_are_taken_per_round_where_the_run_measured_each_round():
    groups = {("fdkd", b, 32): _recs("fdkd", b, 32, rows, [10, 10, 10])
              for b, rows in (("binary", [1400, 2100, 3000]), ("json", [900, 1000, 1300]))}
    refs = {0: 2000.0, 1: 3000.0, 2: 4000.0}  # the load moved: each round's reference moved with it
    lines = "\n".join(targets(groups, batched=5000.0, top=32, refs=refs))
    # binary: 70 %, 70 %, 75 % of each round's reference: met (against the single 5,000 it would be 28-60 %)
    assert "32 clients, binary >= 70 % of in-process batched rows/s (each round against that round's " \
           "in-process run): `fdkd` 70 % (met)" in lines
    # json: 45 %, 33 %, 32.5 %: one round of three
    assert "32 clients, json >= 45 % of in-process batched rows/s (each round against that round's in-process " \
           "run): `fdkd` 33 % (parity within noise (1 of 3 rounds clear it))" in lines
