"""Stage ``export``: ``student.pt`` -> ``student.onnx`` (backbone + its own head, nothing else).

The exporter is named explicitly (``export.exporter``: ``dynamo``, torch.export-based, the
default; or the legacy ``torchscript`` one); opset 17-20; the batch axis is the only dynamic
one; input ``input``, output ``logits``. The graph must pass ``onnx.checker``, the TensorRT lint
(``fdkd.onnx_lint``) and a parity check against PyTorch on the first ``export.parity_rows`` (256) rows of the
validation split, read once, at batch sizes 1, 7 and 64 (max |delta logit| <= ``export.parity_atol`` times the
largest |logit|, at least 1, as float rounding grows with the logits; identical argmax), or the stage
fails and nothing is written under the final name.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import numpy as np

from fdkd import artifacts
from fdkd.pipeline.config import ExportConfig

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class ExportError(RuntimeError):
    """The exported graph is not acceptable; the message says which check failed and by how much."""


def export_onnx(model, sample: np.ndarray, path: Path, cfg: ExportConfig, metadata: dict | None = None) -> None:
    """Export ``model`` (eval mode) for inputs shaped like ``sample`` with a dynamic batch axis."""
    import onnx
    import torch

    model = model.eval()
    if len(sample) == 0:
        raise ValueError("export needs at least one example input (the validation split is empty)")
    # two rows: an example batch of one would pin the batch axis to 1 (torch.export specialises 0/1)
    x = torch.from_numpy(np.ascontiguousarray(np.resize(sample, (2, *sample.shape[1:])), dtype=np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter deprecation chatter; the result is checked below
        if cfg.exporter == "dynamo":
            torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=cfg.opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], external_data=False,
                              dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=65536)}},
                              verbose=False)
        else:
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=cfg.opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    proto = onnx.load(str(path))
    # The dynamo exporter annotates every node with debug metadata: the Python stack trace that made it (absolute
    # source paths and line numbers of this checkout) and the module classes' import paths. Dropped, so that the
    # graph's bytes (its sha256 in the manifest) depend on the weights and the architecture only, not on where
    # the code sits on disk or how its files are laid out; no runtime reads them.
    for node in [*proto.graph.node, *(n for f in proto.functions for n in f.node)]:
        del node.metadata_props[:]
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    proto.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    meta = {"fdkd.exporter": cfg.exporter, **{k: json.dumps(v) for k, v in (metadata or {}).items()}}
    del proto.metadata_props[:]
    for k, v in sorted(meta.items()):
        proto.metadata_props.add(key=k, value=v)
    proto.producer_name, proto.producer_version = "fdkd", "0.1"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


def parity(onnx_path: Path, model, x: np.ndarray, batches=(1, 7, 64)) -> dict:
    """Compare ONNX Runtime with PyTorch on ``x`` at each batch size: max |delta|, argmax agreement."""
    import torch

    from fdkd.serving.runtime.onnx import OnnxRuntime

    rt = OnnxRuntime(onnx_path)
    report = {}
    with torch.no_grad():
        for b in batches:
            n = (len(x) // b) * b or len(x)
            chunks = [x[i : i + b] for i in range(0, n, b)]
            ref = np.concatenate([model(torch.from_numpy(c)).numpy() for c in chunks])
            got = np.concatenate([rt(c) for c in chunks])
            report[str(b)] = {"max_abs": float(np.abs(ref - got).max()), "rows": int(len(ref)),
                              "scale": max(1.0, float(np.abs(ref).max())),
                              "argmax_equal": bool((ref.argmax(1) == got.argmax(1)).all())}
    return report


def parity_rows(ds, modality: str, n: int) -> np.ndarray:
    """The first ``n`` validation rows' features of ``modality``, read from the dataset once (dense or streamed)."""
    rows = ds.indices("val")[:n]
    return np.ascontiguousarray(ds.x[modality][rows], dtype=np.float32)


def run(student_path: Path, x_val: np.ndarray, out: Path, cfg: ExportConfig) -> dict:
    """Export, check, lint and parity-test (on at most ``cfg.parity_rows`` rows of ``x_val``); write ``out`` only
    when everything passes."""
    from fdkd.onnx_lint import lint_file
    from fdkd.pipeline.models.checkpoint import load_model

    x_val = np.ascontiguousarray(x_val[: cfg.parity_rows], dtype=np.float32)
    model, ckpt = load_model(student_path)
    meta = {"class_names": ckpt["class_names"], "preprocessing": ckpt["preprocessing"],
            "modality": ckpt["modality"]}
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_path = Path(tmp) / out.name
        export_onnx(model, x_val, tmp_path, cfg, meta)
        issues = lint_file(tmp_path)
        if issues:
            raise ExportError(f"{out.name} fails the TensorRT lint:\n  " + "\n  ".join(map(str, issues)))
        report = parity(tmp_path, model, x_val, cfg.parity_batches)
        bad = {b: r for b, r in report.items()
               if r["max_abs"] > cfg.parity_atol * r["scale"] or not r["argmax_equal"]}
        if bad:
            raise ExportError(f"{out.name}: ONNX Runtime disagrees with PyTorch beyond {cfg.parity_atol} x the largest "
                              f"|logit| (export.parity_atol): {json.dumps(bad)}")
        with artifacts.atomic_write(out) as f:
            f.write(tmp_path.read_bytes())
    return {"parity": report, "exporter": cfg.exporter, "opset": cfg.opset}
