"""KServe / Triton V2 inference protocol: parse and check requests, build responses.

JSON tensors (flat or nested ``data``) and the binary tensor extension
(``Inference-Header-Content-Length`` + ``binary_data_size`` / ``binary_data``), gzip / deflate
request bodies, and Triton's classification extension (``parameters.classification``). Every
problem raises ``BadRequest`` with a message naming the field; messages quote at most a short,
bounded prefix of what the client sent (``show``).

Parsing is typed (msgspec) so nothing the server does not read is ever turned into Python
objects: unknown fields are skipped at C speed, every field it reads has a declared type (a
wrong type fails at the first offending byte), and ``data`` stays raw bytes until its element
count (commas) and nesting depth have been checked against the shape. Only then are the
numbers decoded, in one C loop, and converted to one float32 array.

Non-finite inputs: JSON has no NaN / Infinity literal, so a JSON body holding one is refused
whatever the policy. A NaN or Inf *value* (binary tensors, or a JSON number that overflows FP32)
is refused under ``nonfinite="reject"`` (the default) and passed to the model under ``"accept"``
(Triton's behaviour; perf_analyzer's random binary inputs contain such values). JSON replies
write non-finite outputs as ``null``.
"""

from __future__ import annotations

import contextlib
import math
import re
import zlib
from dataclasses import dataclass

import msgspec
import numpy as np
import orjson

DTYPE_SIZES = {"FP32": 4, "FP64": 8, "FP16": 2, "INT8": 1, "UINT8": 1, "INT16": 2, "INT32": 4, "INT64": 8,
               "BOOL": 1, "BYTES": None}
NONFINITE_POLICIES = ("reject", "accept")
MAX_ID_CHARS = 1024  # a V2 request id longer than this is refused (it would be echoed and logged)
PRESCAN_BYTES = 1 << 20  # JSON texts above this size get structural caps before parsing (_prescan)
SHOW_CHARS = 64  # at most this much of any client-sent value is quoted in an error message
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_AT = re.compile(r"at `\$(.*)`$")
_INDEX = re.compile(r"^\[(\d+)\]")
_BYTE = re.compile(r"\(byte (\d+)\)")


class BadRequest(ValueError):
    """A malformed or unacceptable request; the message is returned as {"error": ...} with 400."""


class BodyTooLarge(BadRequest):
    """The body (after decompression) is larger than the configured cap: 413."""


class UnsupportedEncoding(BadRequest):
    """A Content-Encoding the server does not decode: 415."""


def show(value, limit: int = SHOW_CHARS) -> str:
    """``repr`` of a client-sent value, cut to ``limit`` characters (error messages never echo more)."""
    text = repr(value) if not isinstance(value, bytes | bytearray | memoryview) else repr(bytes(value[:limit]))
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


# --- typed request skeleton: only these fields are decoded; everything else is skipped unread ---

class _TensorParams(msgspec.Struct):
    binary_data_size: msgspec.Raw = msgspec.UNSET


class _Input(msgspec.Struct):
    name: str
    shape: msgspec.Raw = msgspec.UNSET
    datatype: str | None = None
    parameters: _TensorParams | None = None
    data: msgspec.Raw = msgspec.UNSET


class _OutputParams(msgspec.Struct):
    binary_data: msgspec.Raw = msgspec.UNSET
    classification: msgspec.Raw = msgspec.UNSET


class _Output(msgspec.Struct):
    name: str
    parameters: _OutputParams | None = None


class _RequestParams(msgspec.Struct):
    binary_data_output: msgspec.Raw = msgspec.UNSET


class _Request(msgspec.Struct):
    id: msgspec.Raw = msgspec.UNSET
    parameters: _RequestParams | None = None
    inputs: list[_Input] | None = None
    outputs: list[_Output] | None = None


class _InputFlat(_Input):
    data: list[float] = msgspec.UNSET  # the common case (a flat list of numbers), decoded in the same pass


class _RequestFlat(_Request):
    inputs: list[_InputFlat] | None = None


_REQUEST = msgspec.json.Decoder(_Request)
_REQUEST_FLAT = msgspec.json.Decoder(_RequestFlat)
_FLOATS = msgspec.json.Decoder(list[float])
_INTS = msgspec.json.Decoder(list[int])
_BOOL = msgspec.json.Decoder(bool)
_INT = msgspec.json.Decoder(int)
_ANY = msgspec.json.Decoder()


@dataclass
class OutputSpec:
    name: str
    binary: bool = False
    classification: int | None = None  # top-k classes as "value:index:label" strings (Triton's extension)


@dataclass
class InferRequest:
    id: str | None
    x: np.ndarray
    outputs: list[OutputSpec]  # resolved: every model output when none (or []) were requested


def _schema_error(e: msgspec.ValidationError, what: str) -> BadRequest:
    msg = str(e)
    text = msg.split(" - at `", 1)[0]
    text = text[0].lower() + text[1:] if text else "invalid value"
    m = _AT.search(msg)
    where = f"{what}{m.group(1)}" if m else what
    return BadRequest(f"{where}: {text.replace('`', '')}")


def _decode_error(body: bytes, e: msgspec.DecodeError, what: str) -> BadRequest:
    m = _BYTE.search(str(e))
    if m:
        at = int(m.group(1))
        token = body[at:at + 9].lstrip(b"-")
        if token.startswith((b"NaN", b"Infinity")):
            return BadRequest(f"{what}: non-finite number {show(token.split(b',')[0].decode('latin-1'), 12)} at "
                              f"byte {at} is not JSON; send non-finite values as binary tensors")
    return BadRequest(f"{what} is not valid JSON: {str(e).removeprefix('JSON is malformed: ')}")


def _decode(decoder: msgspec.json.Decoder, raw, what: str):
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as e:
        raise _schema_error(e, what) from None
    except msgspec.DecodeError as e:
        raise _decode_error(bytes(raw), e, what) from None
    except RecursionError:
        raise BadRequest(f"{what}: JSON nested too deeply") from None
    except UnicodeDecodeError:
        raise BadRequest(f"{what} is not valid UTF-8") from None


def loads(text: bytes | str, what: str = "body") -> object:
    """Any JSON value (no NaN / Infinity literals, no integer beyond 64 bits), or BadRequest."""
    return _decode(_ANY, text, what)


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """Undo ``Content-Encoding`` (gzip, deflate or identity); the size cap applies to what comes out."""
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return body
    if enc not in ("gzip", "deflate", "x-gzip"):
        raise UnsupportedEncoding(f"Content-Encoding {show(encoding, 24)} is not supported (gzip, deflate)")
    wbits = 31 if enc in ("gzip", "x-gzip") else 15
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit + 1)
        if len(out) > limit or (d.unconsumed_tail and len(out) == limit):
            raise BodyTooLarge(f"body inflates past the {limit}-byte limit")
        if not d.eof:
            raise BadRequest(f"{enc} body is truncated")
    except zlib.error as e:
        if enc == "deflate" and wbits == 15:  # some clients send raw deflate without the zlib wrapper
            try:
                return _raw_deflate(body, limit)
            except zlib.error:
                pass
        raise BadRequest(f"{enc} body is corrupt: {e}") from None
    return out


def _raw_deflate(body: bytes, limit: int) -> bytes:
    d = zlib.decompressobj(-15)
    out = d.decompress(body, limit + 1)
    if len(out) > limit:
        raise BodyTooLarge(f"body inflates past the {limit}-byte limit")
    if not d.eof:
        raise zlib.error("truncated")
    return out


def prescan(head: bytes, max_elements: int, what: str = "body", slice_bytes: int = 1 << 20):
    """Structure caps on a large JSON text before it is parsed at all (C-speed byte counts).

    The largest legal request holds ``max_elements`` numbers: it has fewer commas and arrays
    than that (plus a little slack for the other fields) and only a handful of objects. A body
    beyond these bounds (16 MB of ``[],[],...`` or of ``{}``) is refused before the parser would
    spend a long, GIL-holding moment building or skipping millions of values. A generator: it
    yields after each ``slice_bytes`` so that an event loop can run in between (see ``fdkd.serving.inference``).
    """
    caps = {b"[": max_elements + 1024, b",": max_elements + 1024, b"{": 1024}
    counts = dict.fromkeys(caps, 0)
    for start in range(0, len(head), slice_bytes):
        for char, cap in caps.items():
            counts[char] += head.count(char, start, start + slice_bytes)
            if counts[char] > cap:
                raise BadRequest(f"{what} holds more than {cap} {char.decode()!r} characters, more than the "
                                 f"largest acceptable request (max_batch rows) can hold")
        yield


def json_part(body: bytes, header_length: str | None) -> bytes:
    """The JSON text of a request body: all of it, or its first Inference-Header-Content-Length bytes."""
    if header_length is not None:
        try:
            return body[:max(0, int(header_length))]
        except ValueError:
            return b""
    return body


def _check_id(raw) -> str | None:
    if raw is msgspec.UNSET:
        return None
    raw = bytes(raw)
    if raw[:1] != b'"':
        raise BadRequest("id must be a string")
    if len(raw) > 6 * MAX_ID_CHARS + 2:  # even fully \u-escaped, a legal id is shorter than this
        raise BadRequest(f"id is longer than {MAX_ID_CHARS} characters")
    rid = _decode(_ANY, raw, "id")
    if len(rid) > MAX_ID_CHARS:
        raise BadRequest(f"id is longer than {MAX_ID_CHARS} characters")
    if _CONTROL.search(rid):
        raise BadRequest("id contains control characters")
    return rid


def _check_shape(raw, input_shape: list[int], max_batch: int, field: str) -> list[int]:
    if raw is msgspec.UNSET:
        raise BadRequest(f"{field}.shape is missing")
    raw = bytes(raw)
    dims = ", ".join(map(str, input_shape))
    if raw.count(b",") > len(input_shape) + 1:  # bounded before decoding
        raise BadRequest(f"{field}.shape has more than {len(input_shape) + 1} dims; expected [batch, {dims}]")
    try:
        shape = _INTS.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        raise BadRequest(f"{field}.shape must be a list of integers") from None
    if len(shape) != 1 + len(input_shape):
        raise BadRequest(f"{field}.shape {shape} has {len(shape)} dims; expected [batch, {dims}]")
    if shape[0] < 1:
        raise BadRequest(f"{field}.shape batch {shape[0]} must be at least 1")
    if shape[0] > max_batch:
        raise BadRequest(f"{field}.shape batch {shape[0]} exceeds max_batch_size {max_batch}")
    if shape[1:] != list(input_shape):
        raise BadRequest(f"{field}.shape {shape} does not match the model input [-1, {dims}]")
    return shape


def _json_tensor(raw: bytes, count: int, max_depth: int, field: str) -> np.ndarray:
    """The ``data`` bytes -> float32 array of ``count`` elements; caps checked before any decoding."""
    if raw.count(b",") >= count:  # n elements need n - 1 commas: more means more elements
        raise BadRequest(f"{field}: more than the {count} elements the shape calls for")
    if raw[:1] != b"[":
        raw = b"[" + raw + b"]"
    elif raw.find(b"[", 1) != -1:  # nested: check the depth, then drop the inner brackets
        if raw.count(b"[") > count * max_depth:
            raise BadRequest(f"{field}: nesting deeper than {max_depth}")
        b = np.frombuffer(raw, np.uint8)
        brackets = b[np.flatnonzero((b == 91) | (b == 93))]  # "[" and "]" only: a few per row
        depth = int(np.cumsum(np.where(brackets == 91, 1, -1)).max())
        if depth > max_depth:
            raise BadRequest(f"{field}: nesting deeper than {max_depth}")
        raw = b"[" + raw.translate(None, b"[]") + b"]"
    try:
        values = _FLOATS.decode(raw)
    except msgspec.ValidationError as e:
        m = _AT.search(str(e))
        i = _INDEX.match(m.group(1)).group(1) if m and _INDEX.match(m.group(1)) else "?"
        if "out of range" in str(e):
            raise BadRequest(f"{field}: element {i} is too large a number for FP32") from None
        got = str(e).split("got `", 1)[-1].split("`", 1)[0]
        raise BadRequest(f"{field}: element {i} is {got}, not a number") from None
    except msgspec.DecodeError as e:
        if b"NaN" in raw or b"Infinity" in raw:
            raise BadRequest(f"{field}: non-finite number literal (NaN / Infinity) is not JSON") from None
        raise BadRequest(f"{field}: not a list of numbers (an empty nested list, or {e})") from None
    if len(values) != count:
        raise BadRequest(f"{field}: {len(values)} elements but the shape needs {count}")
    with np.errstate(over="ignore"):
        return np.array(values, dtype=np.float32)


def parse_infer(body: bytes, header_length: str | None, content_type: str, *, input_name: str,
                input_shape: list[int], output_names: list[str], max_batch: int, max_depth: int,
                nonfinite: str = "reject", prescanned: bool = False) -> InferRequest:
    """A V2 infer request (JSON, or JSON header + binary tensors) -> checked float32 array."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise BadRequest("Inference-Header-Content-Length is not an integer") from None
        if not 0 < n <= len(body):
            raise BadRequest(f"Inference-Header-Content-Length {n} is outside the body's {len(body)} bytes")
        head, binary = body[:n], memoryview(body)[n:]
        what = "inference header"
    else:
        if "octet-stream" in content_type:
            raise BadRequest("binary body without the Inference-Header-Content-Length header")
        head, binary, what = body, memoryview(b""), "body"
    max_elements = max_batch * math.prod(input_shape)
    if len(head) > PRESCAN_BYTES and not prescanned:
        for _ in prescan(head, max_elements, what):
            pass
    req = None
    if head.count(b",") <= max_elements + 1024:  # the element cap, before anything is decoded
        # one pass: a flat `data` list decodes straight to floats; anything else (nested data, every error)
        # takes the two-step path below, with its precise messages
        with contextlib.suppress(msgspec.ValidationError, msgspec.DecodeError, RecursionError, UnicodeDecodeError):
            req = _REQUEST_FLAT.decode(head)
    if req is None:
        req = _parse_head(head, what)
    return _checked(req, binary, input_name=input_name, input_shape=input_shape, output_names=output_names,
                    max_batch=max_batch, max_depth=max_depth, nonfinite=nonfinite)


def _parse_head(head: bytes, what: str) -> _Request:
    try:
        return _REQUEST.decode(head)
    except msgspec.ValidationError as e:
        if str(e).startswith("Expected `object`") and " - at " not in str(e):
            raise BadRequest("request must be a JSON object") from None
        raise _schema_error(e, what) from None
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return _decode(_REQUEST, head, what)  # raises with the message


def _checked(req: _Request, binary: memoryview, *, input_name: str, input_shape: list[int], output_names: list[str],
             max_batch: int, max_depth: int, nonfinite: str) -> InferRequest:
    rid = _check_id(req.id)
    inputs = req.inputs
    if not inputs:
        raise BadRequest("inputs must be a non-empty list")
    names = [i.name for i in inputs]
    if len(set(names)) != len(names):
        raise BadRequest(f"duplicate input names {show(names)}")
    unknown = [n for n in names if n != input_name]
    if unknown:
        raise BadRequest(f"unknown input {show(unknown[0])}; the model's input is {input_name!r}")
    spec = inputs[0]
    field = f"inputs[{input_name!r}]"
    if spec.datatype != "FP32":
        raise BadRequest(f"{field}.datatype is {show(spec.datatype)}; the model takes FP32")
    shape = _check_shape(spec.shape, input_shape, max_batch, field)
    count = math.prod(shape)
    size_raw = spec.parameters.binary_data_size if spec.parameters else msgspec.UNSET
    if size_raw is not msgspec.UNSET:
        try:
            size = _INT.decode(size_raw)
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
            size = -1
        if size < 0:
            raise BadRequest(f"{field}.parameters.binary_data_size must be a non-negative integer")
        if size != count * 4:
            raise BadRequest(f"{field}: binary_data_size {size} != {count} FP32 elements x 4 bytes")
        if size != len(binary):
            raise BadRequest(f"{field}: binary_data_size {size} but {len(binary)} binary bytes follow the header")
        if spec.data is not msgspec.UNSET:
            raise BadRequest(f"{field} has both data and binary_data_size")
        x = np.frombuffer(binary, dtype="<f4").reshape(shape)
    else:
        if len(binary):
            raise BadRequest(f"{len(binary)} binary bytes follow the header but no input declares binary_data_size")
        if spec.data is msgspec.UNSET:
            raise BadRequest(f"{field} has no data")
        if isinstance(spec.data, list):  # decoded in the first pass
            if len(spec.data) > count:
                raise BadRequest(f"{field}.data: more than the {count} elements the shape calls for")
            if len(spec.data) < count:
                raise BadRequest(f"{field}.data: {len(spec.data)} elements but the shape needs {count}")
            with np.errstate(over="ignore"):
                x = np.array(spec.data, dtype=np.float32).reshape(shape)
        else:
            x = _json_tensor(bytes(spec.data), count, max_depth, f"{field}.data").reshape(shape)
    if nonfinite != "accept" and not np.isfinite(x).all():
        i = int(np.flatnonzero(~np.isfinite(x.reshape(-1)))[0])
        raise BadRequest(f"{field} contains NaN or Inf (first at flat index {i}); this server rejects non-finite "
                         f"inputs (--nonfinite-inputs accept to pass them to the model)")
    return InferRequest(rid, np.ascontiguousarray(x, dtype=np.float32), _parse_outputs(req, output_names))


def _flag(raw, field: str) -> bool | None:
    if raw is msgspec.UNSET:
        return None
    try:
        return _BOOL.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        raise BadRequest(f"{field} must be a boolean (true or false), got {show(bytes(raw).decode('latin-1'))}") \
            from None


def _parse_outputs(req: _Request, output_names: list[str]) -> list[OutputSpec]:
    default_binary = bool(_flag(req.parameters.binary_data_output, "parameters.binary_data_output")) \
        if req.parameters else False
    outs = req.outputs
    if not outs:  # absent, null or []: every output (Triton's behaviour)
        return [OutputSpec(n, default_binary) for n in output_names]
    if len(outs) > len(output_names):
        raise BadRequest(f"outputs lists {len(outs)} tensors; the model has {len(output_names)}: {output_names}")
    specs = []
    for k, o in enumerate(outs):
        if o.name not in output_names:
            raise BadRequest(f"unknown output {show(o.name)}; the model's outputs are {output_names}")
        if any(s.name == o.name for s in specs):
            raise BadRequest(f"output {o.name!r} is requested twice")
        p = o.parameters
        binary = _flag(p.binary_data, f"outputs[{k}].parameters.binary_data") if p else None
        cls = None
        if p and p.classification is not msgspec.UNSET:
            try:
                cls = _INT.decode(p.classification)
            except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
                cls = 0
            if cls < 1:
                raise BadRequest(f"outputs[{k}].parameters.classification must be a positive integer (top-k classes)")
        specs.append(OutputSpec(o.name, default_binary if binary is None else binary, cls))
    return specs


def classification(arr: np.ndarray, k: int, labels: list[str]) -> np.ndarray:
    """Triton's classification extension: [batch, k] strings "value:index:label", best first."""
    k = min(k, arr.shape[-1])
    idx = np.argsort(-arr, axis=-1, kind="stable")[..., :k]
    vals = np.take_along_axis(arr, idx, axis=-1)
    out = [f"{v:f}:{i}:{labels[i]}" if i < len(labels) else f"{v:f}:{i}"
           for v, i in zip(vals.reshape(-1).tolist(), idx.reshape(-1).tolist(), strict=True)]
    return np.array(out, dtype=object).reshape(idx.shape)


def _bytes_tensor(strings: np.ndarray) -> bytes:
    """Triton's binary BYTES layout: each element as a 4-byte little-endian length, then its bytes."""
    parts = []
    for s in strings.reshape(-1):
        b = s.encode()
        parts.append(len(b).to_bytes(4, "little") + b)
    return b"".join(parts)


def build_response(model_name: str, version: str, rid: str | None, tensors: dict[str, np.ndarray],
                   outputs: list[OutputSpec], labels: list[str] | None = None) -> tuple[bytes, int | None]:
    """(body, header length or None): JSON, or JSON header + binary tensors in output order."""
    outs, chunks = [], []
    for spec in outputs:
        arr = tensors[spec.name]
        if spec.classification:
            strings = classification(arr, spec.classification, labels or [])
            out = {"name": spec.name, "datatype": "BYTES", "shape": list(strings.shape)}
            if spec.binary:
                raw = _bytes_tensor(strings)
                out["parameters"] = {"binary_data_size": len(raw)}
                chunks.append(raw)
            else:
                out["data"] = strings.reshape(-1).tolist()
        else:
            arr = np.ascontiguousarray(arr, dtype="<f4")
            out = {"name": spec.name, "datatype": "FP32", "shape": list(arr.shape)}
            if spec.binary:
                raw = arr.tobytes()
                out["parameters"] = {"binary_data_size": len(raw)}
                chunks.append(raw)
            else:
                out["data"] = arr.reshape(-1)
        outs.append(out)
    resp = {"model_name": model_name, "model_version": version, "outputs": outs}
    if rid is not None:
        resp["id"] = rid
    head = orjson.dumps(resp, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return head, None
    return head + b"".join(chunks), len(head)
