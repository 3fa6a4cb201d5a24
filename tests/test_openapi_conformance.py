"""/openapi.json says what the server does: checked by reading it, and by a bounded schemathesis run against a real
``fdkd serve`` process on loopback, with and without an API key (no server error, no conformance failure: status
codes, content types, response schemas and headers, undocumented methods, auth)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys

import httpx
import pytest

from fdkd.serving.middleware import EXEMPT
from fdkd.serving.openapi import SECURITY_SCHEMES
from fdkd.serving.upload import MEDIA_TYPES
from tests.serving_helpers import running_server, start_fdkd_serve

KEY = "sp3c-key"
OPS = ("get", "post", "put", "patch", "delete")


def _ops(doc: dict):
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if method in OPS:
                yield path, method, op


@pytest.fixture(scope="module")
def keyless(served_run):
    with running_server(served_run) as (url, _):
        yield url


@pytest.fixture(scope="module")
def keyed(served_run):
    with running_server(served_run, api_key=KEY) as (url, _):
        yield url


def test_metrics_are_documented_and_served_as_prometheus_text(keyless):
    doc = httpx.get(f"{keyless}/openapi.json").json()
    assert list(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    r = httpx.get(f"{keyless}/metrics")
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "# TYPE fdkd_requests_total counter" in r.text


def test_infer_request_names_the_models_tensors_and_refuses_what_the_schema_refuses(keyless, served_run):
    doc = httpx.get(f"{keyless}/openapi.json").json()
    op = doc["paths"]["/v2/models/{model_name}/infer"]["post"]
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    inputs = schema["properties"]["inputs"]
    assert (inputs["minItems"], inputs["maxItems"]) == (1, 1)
    tensor = inputs["items"]["properties"]
    manifest = json.loads((served_run / "manifest.json").read_text())
    io = manifest["artifacts"]["student.onnx"]["onnx"]
    assert tensor["name"]["enum"] == [io["inputs"][0]["name"]] and tensor["datatype"]["enum"] == ["FP32"]
    assert tensor["shape"]["minItems"] == tensor["shape"]["maxItems"] == len(io["inputs"][0]["shape"])
    assert schema["properties"]["outputs"]["items"]["properties"]["name"]["enum"] == [io["outputs"][0]["name"]]
    assert [p["schema"]["enum"] for p in op["parameters"] if p["in"] == "path"] == [[manifest["name"]]]
    assert "application/octet-stream" in op["requestBody"]["content"]  # the binary tensor extension
    assert "Inference-Header-Content-Length" in [p["name"] for p in op["parameters"]]
    # what the schema refuses, the server refuses (400, documented)
    for body in ({"inputs": []}, {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0]}]},
                 {"inputs": [{"name": io["inputs"][0]["name"], "shape": [1, 1, 40, 101], "datatype": "FP64",
                              "data": [0.0] * 4040}]}):
        r = httpx.post(f"{keyless}/v2/models/{manifest['name']}/infer", json=body)
        assert r.status_code == 400 and "400" in op["responses"], (body, r.text)
    assert "422" not in json.dumps(doc["paths"])  # FastAPI's default: this server never answers 422


def test_classify_takes_the_served_modalitys_media_types(keyless, served_run):
    doc = httpx.get(f"{keyless}/openapi.json").json()
    modality = json.loads((served_run / "manifest.json").read_text())["student_modality"]
    content = doc["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert set(content) == {*MEDIA_TYPES[modality], "multipart/form-data"}
    others = {t for m, ts in MEDIA_TYPES.items() if m != modality for t in ts}
    assert others and not others & set(content)  # an audio model is not offered image/png


def test_page_routes_are_documented(keyless):
    paths = httpx.get(f"{keyless}/openapi.json").json()["paths"]
    assert {"/", "/ui/page.js", "/ui/page.css", "/v1/model"} <= set(paths)
    assert "text/html" in paths["/"]["get"]["responses"]["200"]["content"]


def test_no_key_no_security_scheme_and_no_401(keyless):
    doc = httpx.get(f"{keyless}/openapi.json").json()
    assert "securitySchemes" not in doc.get("components", {})
    assert not [(p, m) for p, m, op in _ops(doc) if "security" in op or "401" in op["responses"]]


def test_keyed_routes_document_401_and_both_header_forms(keyed):
    doc = httpx.get(f"{keyed}/openapi.json", headers={"X-API-Key": KEY}).json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes == SECURITY_SCHEMES
    assert {(s["type"], s.get("in"), s.get("name"), s.get("scheme")) for s in schemes.values()} == {
        ("apiKey", "header", "X-API-Key", None), ("http", None, None, "bearer")}
    guarded = [(p, m) for p, m, op in _ops(doc) if p not in EXEMPT]
    assert ("post", "/v1/classify") in [(m, p) for p, m in guarded]
    for path, _, op in _ops(doc):
        if path in EXEMPT:
            assert "security" not in op and "401" not in op["responses"], path
        else:
            assert op["security"] == [{"apiKeyHeader": []}, {"bearerAuth": []}], path
            assert op["responses"]["401"]["content"]["application/json"]["schema"]["required"] == ["error"], path
    # each documented form gets through; none gets 401 (documented)
    assert httpx.get(f"{keyed}/v1/model", headers={"X-API-Key": KEY}).status_code == 200
    assert httpx.get(f"{keyed}/v1/model", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert httpx.get(f"{keyed}/v1/model").status_code == 401


def test_a_wrong_method_without_a_key_is_405_where_the_route_exists(keyed):
    r = httpx.delete(f"{keyed}/v2/models/served/infer")
    assert r.status_code == 405 and r.headers["allow"] == "POST" and r.json() == {"error": "Method Not Allowed"}
    assert httpx.get(f"{keyed}/v2/models/served/infer").status_code == 405
    assert httpx.post(f"{keyed}/v2/models/served").status_code == 405
    assert httpx.post(f"{keyed}/v2/models/served/infer", json={}).status_code == 401  # the right method: the key
    assert httpx.delete(f"{keyed}/no/such/route").status_code == 401  # no route: which paths exist stays untold


def _schemathesis(location: str, cwd, *extra: str) -> subprocess.CompletedProcess:
    """A bounded run (at most 10 cases per operation and phase, one worker, fixed seed, no stateful phase): every
    check but positive_data_acceptance (a schema-valid tensor of the wrong element count is a documented 400: JSON
    Schema cannot tie `data`'s length to `shape`)."""
    return subprocess.run([sys.executable, "-m", "schemathesis.cli", "run", location, *extra,
                           "--checks", "all", "--exclude-checks", "positive_data_acceptance",
                           "--max-examples", "10", "--seed", "1", "--phases", "examples,coverage,fuzzing",
                           "--workers", "1", "--suppress-health-check", "all", "--generation-database", "none",
                           "--no-color", "--request-timeout", "10"],
                          cwd=cwd, capture_output=True, text=True, timeout=180)


def _verdict(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout[-6000:] + proc.stderr[-2000:]


@contextlib.contextmanager
def fdkd_serve(run_dir, tmp_path, env: dict | None = None):
    """A real ``fdkd serve`` process on loopback, its log in a file (what it logged is shown if a check fails)."""
    with open(tmp_path / "serve.log", "w") as log:
        proc, url = start_fdkd_serve(run_dir, env=env, log=log)
        try:
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.mark.slow
def test_schemathesis_against_fdkd_serve_without_a_key(served_run, tmp_path):
    with fdkd_serve(served_run, tmp_path) as url:
        run = _schemathesis(f"{url}/openapi.json", tmp_path)
        assert run.returncode == 0, _verdict(run)
        assert " passed" in run.stdout and "failure" not in run.stdout.split("SUMMARY")[-1], _verdict(run)
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200  # still ready after the fuzzing


@pytest.mark.slow
def test_schemathesis_against_fdkd_serve_with_a_key(served_run, tmp_path):
    """Once sending the key (everything reachable), once without it (from the document fetched with the key: every
    guarded operation must answer its documented 401, a wrong method its 405)."""
    with fdkd_serve(served_run, tmp_path, env={"FDKD_SERVE_API_KEY": KEY}) as url:
        run = _schemathesis(f"{url}/openapi.json", tmp_path, "--header", f"X-API-Key: {KEY}")
        assert run.returncode == 0, _verdict(run)
        spec = tmp_path / "openapi.json"
        spec.write_text(httpx.get(f"{url}/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).text)
        run = _schemathesis(str(spec), tmp_path, "--url", url)
        assert run.returncode == 0, _verdict(run)
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200
