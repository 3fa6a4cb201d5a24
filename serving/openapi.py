"""``/openapi.json``: FastAPI's document of the app, made to say what this server does and nothing else.

FastAPI writes the routes; this module adds what only the server knows (``document``), built on the first request
for the document (never at import or app creation), from the run's ``manifest.json`` (no model load):

- the served model's own names: ``model_name`` and ``version`` path parameters are enums of the one model and
  version the server answers (anything else is 404), and the V2 infer request names the model's input (one,
  ``FP32``, its rank) and output (``INFER_REQUEST``'s ``inputs`` has ``minItems`` 1: an empty list is 400);
- ``/v1/classify`` takes the served modality's files only (``fdkd.serving.upload.MEDIA_TYPES``: one table per
  modality, so a modality added there is documented here without a change), raw or as a one-file multipart form;
- the API key, when the server has one: a security scheme for each header form ``fdkd.serving.middleware.ApiKey``
  accepts (``X-API-Key`` and ``Authorization: Bearer``) and 401 on every operation it guards; the exempt routes
  (health, metrics, the page's files) carry neither. Without a key nothing is guarded, so nothing says 401;
- 408 and 413 on every operation with a body (``BodyLimit`` answers them before any route runs); no 422 anywhere
  (FastAPI's default: this server answers every invalid request 400).

The server's answers to the same requests are checked against this document by a schemathesis run against a real
``fdkd serve`` (tests/test_openapi_conformance.py). Light imports: no model, no runtime.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from fdkd.serving.upload import MEDIA_TYPES

# what /metrics answers: Prometheus' text format 0.0.4, which every Prometheus version scrapes (prometheus_client's
# own default when a scraper names no format; its CONTENT_TYPE_LATEST moved to 1.0.0 in 0.22)
METRICS_MEDIA_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SECURITY_SCHEMES = {
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                     "description": "The server's key (FDKD_SERVE_API_KEY)"},
    "bearerAuth": {"type": "http", "scheme": "bearer", "description": "The same key as `Authorization: Bearer KEY`"},
}
SECURITY = [{name: []} for name in SECURITY_SCHEMES]  # either header form (OpenAPI: a list is "any one of")
ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
ERROR_TEXT = {400: "bad request: the message names the field", 401: "missing or invalid API key",
              404: "no such model or version", 408: "the body did not arrive in time",
              413: "body too large", 415: "unsupported Content-Encoding", 500: "internal error (the log has it)",
              503: "not ready, draining or overloaded (Retry-After)"}
BINARY = {"type": "string", "format": "binary"}
TENSOR = {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
    "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
    "datatype": {"type": "string"}, "parameters": {"type": ["object", "null"]}, "data": {"type": "array"}}}
INFER_RESPONSE = {"type": "object", "required": ["model_name", "outputs"], "properties": {
    "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
    "outputs": {"type": "array", "items": TENSOR}}}
CLASSIFY_RESPONSE = {"type": "object", "required": ["class_name", "class_index", "probabilities"], "properties": {
    "class_name": {"type": "string"}, "class_index": {"type": "integer"},
    "probabilities": {"type": "object", "additionalProperties": {"type": "number"}}}}
PATH_FACTS = {"model_name": "name", "version": "version"}  # path parameter -> the one value the server answers
HEADER_LENGTH = {"name": "Inference-Header-Content-Length", "in": "header", "required": False,
                 "description": "Binary tensor extension: the JSON header's length; binary tensors follow it",
                 "schema": {"type": "integer", "minimum": 1}}


def errors(*codes: int) -> dict:
    """OpenAPI responses for error statuses: each a ``{"error": ...}`` JSON body."""
    return {c: {"description": ERROR_TEXT.get(c, "error"), "content": {"application/json": {"schema": ERROR}}}
            for c in codes}


def ok(schema: dict, description: str = "ok") -> dict:
    return {200: {"description": description, "content": {"application/json": {"schema": schema}}}}


def model_facts(run_dir: Path, model_name: str | None) -> dict:
    """What the document says about the served model, from the run's manifest (``{}`` when it cannot be read: the
    server is then never ready, and the document stays generic)."""
    try:
        manifest = json.loads((Path(run_dir) / "manifest.json").read_text())
        io = manifest["artifacts"]["student.onnx"]["onnx"]
        return {"name": model_name or manifest.get("name", "student"), "version": "1",
                "modality": manifest.get("student_modality", "audio"), "input_name": io["inputs"][0]["name"],
                "rank": len(io["inputs"][0]["shape"]), "output_name": io["outputs"][0]["name"]}
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return {}


def infer_request(facts: dict) -> dict:
    """The V2 infer request as the server parses it (``fdkd.serving.protocol``): exactly one input, named as the
    model's, FP32, one dimension per model axis; ``null`` where the server takes ``null`` as absent."""
    tensor = {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
        "name": {"type": "string"}, "datatype": {"type": "string", "enum": ["FP32"]},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 1}},
        "parameters": {"type": ["object", "null"], "properties": {
            "binary_data_size": {"type": "integer", "minimum": 0}}},
        "data": {"type": "array", "description": "row-major FP32 values, flat or nested; absent with binary data"}}}
    if facts:
        tensor["properties"]["name"]["enum"] = [facts["input_name"]]
        tensor["properties"]["shape"] |= {"minItems": facts["rank"], "maxItems": facts["rank"]}
    output = {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string", **({"enum": [facts["output_name"]]} if facts else {})},
        "parameters": {"type": ["object", "null"], "properties": {
            "binary_data": {"type": "boolean"}, "classification": {"type": "integer", "minimum": 1}}}}}
    return {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string", "maxLength": 1024},
        "parameters": {"type": ["object", "null"], "properties": {"binary_data_output": {"type": "boolean"}}},
        "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": tensor},
        "outputs": {"type": ["array", "null"], "maxItems": 1, "items": output,
                    "description": "absent, null or []: every output"}}}


def classify_body(modality: str | None) -> dict:
    """``/v1/classify``'s request body: the served modality's file types (every modality's when unknown), raw or as
    a multipart form holding exactly one file."""
    kind = modality.split("_", 1)[0] if modality else None  # image_small: an image (the two inputs' names differ)
    types = MEDIA_TYPES.get(kind) or tuple(dict.fromkeys(t for ts in MEDIA_TYPES.values() for t in ts))
    content = {t: {"schema": BINARY} for t in types}
    content["multipart/form-data"] = {"schema": {"type": "object", "required": ["file"],
                                                 "properties": {"file": BINARY}}}
    return {"required": True, "content": content}


def document(base: dict, facts: dict, keyed: bool, exempt: frozenset[str]) -> dict:
    """``base`` (FastAPI's document of the routes) with what the server knows added (see the module docstring)."""
    doc = copy.deepcopy(base)
    if keyed:
        doc.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    for path, ops in doc.get("paths", {}).items():
        for method, op in ops.items():
            responses = op.setdefault("responses", {})
            responses.pop("422", None)  # FastAPI's default; this server answers every invalid request 400
            for p in op.get("parameters", []):
                if facts and p.get("in") == "path" and p["name"] in PATH_FACTS:
                    p["schema"] = {"type": "string", "enum": [facts[PATH_FACTS[p["name"]]]]}
            if path.endswith("/infer") and method == "post":
                op["parameters"] = [*op.get("parameters", []), HEADER_LENGTH]
                op["requestBody"] = {"required": True, "content": {"application/json": {"schema": infer_request(facts)},
                                                                   "application/octet-stream": {"schema": BINARY}}}
                responses["200"]["content"]["application/octet-stream"] = {"schema": BINARY}
            if path == "/v1/classify" and method == "post":
                op["requestBody"] = classify_body(facts.get("modality"))
            if method in ("post", "put", "patch"):
                responses.update({str(c): r for c, r in errors(408, 413).items()})
            if keyed and path not in exempt:
                op["security"] = SECURITY
                responses.update({str(c): r for c, r in errors(401).items()})
    schemas = doc.get("components", {}).get("schemas", {})
    unused = '"#/components/schemas/HTTPValidationError"' not in json.dumps(doc["paths"])
    if "HTTPValidationError" in schemas and unused:
        schemas.pop("HTTPValidationError")
        schemas.pop("ValidationError", None)
    return doc
