"""What the INT8 gate search left for the later stages: ``int8_search.json`` (``SEARCH``), read by the build
(which INT8 graph to build) and by validation (which graphs found nothing that passed). Apart from
``fdkd.pipeline.int8_search`` so that validation, which the search judges with, never imports the search."""

from __future__ import annotations

from pathlib import Path

from fdkd import artifacts

SEARCH = "int8_search.json"
SEARCHED = "student.int8.search.onnx"  # a TensorRT graph the search made (not one of the plain ones)


def failed_graphs(search_record: dict | None) -> dict[str, dict]:
    """File name -> its search record, for every graph whose search found nothing that passed."""
    return {g["graph"]: g for g in (search_record or {}).get("graphs", []) if not g["passed"]}


def build_source(run_dir: Path, method: str) -> str | None:
    """The INT8 graph the build uses: the search's pick; None when the search found nothing (no INT8 engine)."""
    import json

    path = run_dir / SEARCH
    if not path.exists():
        return artifacts.ONNX_INT8.format(method=method)
    for g in json.loads(path.read_text()).get("graphs", []):
        if g["target"] == "tensorrt":
            return g["chosen"]
    return artifacts.ONNX_INT8.format(method=method)
