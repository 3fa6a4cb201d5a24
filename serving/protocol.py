"""KServe / Triton V2 inference protocol: parse and check requests, build responses.

JSON tensors (flat or nested ``data``) and the binary tensor extension
(``Inference-Header-Content-Length`` + ``binary_data_size`` / ``binary_data_output``). Every
problem raises ``BadRequest`` with a message naming the field; nesting depth and element count
are checked while walking the parsed JSON, before any numpy array is allocated, and the element
count must equal the product of the shape.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

DTYPE_SIZES = {"FP32": 4, "FP64": 8, "FP16": 2, "INT8": 1, "UINT8": 1, "INT16": 2, "INT32": 4, "INT64": 8,
               "BOOL": 1, "BYTES": None}


class BadRequest(ValueError):
    """A malformed or unacceptable request; the message is returned as {"error": ...} with 400."""


@dataclass
class InferRequest:
    id: str | None
    x: np.ndarray
    outputs: list[str] | None  # requested output names (None: all)
    binary_outputs: set[str]


def _reject_constant(name: str):
    raise BadRequest(f"non-finite number {name} in JSON")


def loads(text: bytes | str, what: str = "body") -> object:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise BadRequest(f"{what}: JSON nested too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"{what} is not valid JSON: {e}") from None


def _flatten(data, expected: int, max_depth: int, field: str) -> list:
    """Flatten nested lists level by level (C-speed extends), capping depth and count on the way.

    Nothing is allocated beyond ``expected`` + one list's length, and no numpy array exists yet.
    """
    current = data if isinstance(data, list) else [data]
    depth = 1
    while any(type(v) is list for v in current):
        depth += 1
        if depth > max_depth:
            raise BadRequest(f"{field}: nesting deeper than {max_depth}")
        flat: list = []
        for v in current:
            if type(v) is list:
                flat.extend(v)
            else:
                flat.append(v)
            if len(flat) > expected:
                raise BadRequest(f"{field}: more than the {expected} elements the shape calls for")
        current = flat
    if len(current) > expected:
        raise BadRequest(f"{field}: more than the {expected} elements the shape calls for")
    for i, v in enumerate(current):
        if type(v) is not float and type(v) is not int:  # bool is not int here, on purpose
            raise BadRequest(f"{field}: element {i} is {type(v).__name__} {str(v)[:20]!r}, not a number")
    return current


def _check_shape(shape, input_shape: list[int], max_batch: int, field: str) -> list[int]:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise BadRequest(f"{field}.shape must be a list of integers")
    dims = ", ".join(map(str, input_shape))
    if len(shape) != 1 + len(input_shape):
        raise BadRequest(f"{field}.shape {shape} has {len(shape)} dims; expected [batch, {dims}]")
    if shape[0] < 1:
        raise BadRequest(f"{field}.shape batch {shape[0]} must be at least 1")
    if shape[0] > max_batch:
        raise BadRequest(f"{field}.shape batch {shape[0]} exceeds max_batch_size {max_batch}")
    if list(shape[1:]) != list(input_shape):
        raise BadRequest(f"{field}.shape {shape} does not match the model input [-1, {dims}]")
    return shape


def parse_infer(body: bytes, header_length: str | None, content_type: str, *, input_name: str,
                input_shape: list[int], output_names: list[str], max_batch: int, max_depth: int) -> InferRequest:
    """A V2 infer request (JSON, or JSON header + binary tensors) -> checked float32 array."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise BadRequest("Inference-Header-Content-Length is not an integer") from None
        if not 0 < n <= len(body):
            raise BadRequest(f"Inference-Header-Content-Length {n} is outside the body's {len(body)} bytes")
        header, binary = loads(body[:n], "inference header"), body[n:]
    else:
        if "octet-stream" in content_type:
            raise BadRequest("binary body without the Inference-Header-Content-Length header")
        header, binary = loads(body), b""
    if not isinstance(header, dict):
        raise BadRequest("request must be a JSON object")
    rid = header.get("id")
    if rid is not None and not isinstance(rid, str):
        raise BadRequest("id must be a string")
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("inputs must be a non-empty list")
    names = [i.get("name") if isinstance(i, dict) else None for i in inputs]
    if any(not isinstance(n, str) for n in names):
        raise BadRequest("every input must be an object with a string name")
    if len(set(names)) != len(names):
        raise BadRequest(f"duplicate input names {names}")
    unknown = [n for n in names if n != input_name]
    if unknown:
        raise BadRequest(f"unknown input {unknown[0]!r}; the model's input is {input_name!r}")
    spec = inputs[0]
    field = f"inputs[{input_name!r}]"
    if spec.get("datatype") != "FP32":
        raise BadRequest(f"{field}.datatype is {spec.get('datatype')!r}; the model takes FP32")
    shape = _check_shape(spec.get("shape"), input_shape, max_batch, field)
    count = math.prod(shape)
    params = spec.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest(f"{field}.parameters must be an object")
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadRequest(f"{field}.parameters.binary_data_size must be a non-negative integer")
        if size != count * 4:
            raise BadRequest(f"{field}: binary_data_size {size} != {count} FP32 elements x 4 bytes")
        if size != len(binary):
            raise BadRequest(f"{field}: binary_data_size {size} but {len(binary)} binary bytes follow the header")
        if "data" in spec:
            raise BadRequest(f"{field} has both data and binary_data_size")
        x = np.frombuffer(binary, dtype="<f4").reshape(shape)
    else:
        if binary:
            raise BadRequest(f"{len(binary)} binary bytes follow the header but no input declares binary_data_size")
        if "data" not in spec:
            raise BadRequest(f"{field} has no data")
        flat = _flatten(spec["data"], count, max_depth, f"{field}.data")
        if len(flat) != count:
            raise BadRequest(f"{field}: {len(flat)} elements but shape {shape} needs {count}")
        try:
            x = np.asarray(flat, dtype=np.float32).reshape(shape)
        except OverflowError:
            raise BadRequest(f"{field}: an integer is too large for FP32") from None
    if not np.isfinite(x).all():
        raise BadRequest(f"{field} contains NaN or Inf")
    wanted, binary_out = _parse_outputs(header, output_names)
    return InferRequest(rid, np.ascontiguousarray(x, dtype=np.float32), wanted, binary_out)


def _parse_outputs(header: dict, output_names: list[str]) -> tuple[list[str] | None, set[str]]:
    default_binary = bool((header.get("parameters") or {}).get("binary_data_output", False)) \
        if isinstance(header.get("parameters") or {}, dict) else False
    outs = header.get("outputs")
    if outs is None:
        return None, set(output_names) if default_binary else set()
    if not isinstance(outs, list):
        raise BadRequest("outputs must be a list")
    wanted, binary = [], set()
    for o in outs:
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise BadRequest("every requested output must be an object with a string name")
        if o["name"] not in output_names:
            raise BadRequest(f"unknown output {o['name']!r}; the model's outputs are {output_names}")
        wanted.append(o["name"])
        p = o.get("parameters") or {}
        if isinstance(p, dict) and p.get("binary_data", default_binary):
            binary.add(o["name"])
    return wanted, binary


def build_response(model_name: str, version: str, rid: str | None, tensors: dict[str, np.ndarray],
                   binary: set[str]) -> tuple[bytes, int | None]:
    """(body, header length or None): JSON, or JSON header + binary tensors in output order."""
    outputs, chunks = [], []
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr, dtype="<f4")
        out = {"name": name, "datatype": "FP32", "shape": list(arr.shape)}
        if name in binary:
            raw = arr.tobytes()
            out["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            out["data"] = arr.reshape(-1).tolist()
        outputs.append(out)
    resp = {"model_name": model_name, "model_version": version, "outputs": outputs}
    if rid is not None:
        resp["id"] = rid
    head = json.dumps(resp, separators=(",", ":")).encode()
    if not chunks:
        return head, None
    return head + b"".join(chunks), len(head)
