"""Every bad input gets a 4xx with {"error": ...}, and the server still serves afterwards."""

from __future__ import annotations

import json
import socket

import httpx
import numpy as np
import pytest

from tests.serving_helpers import running_server

SHAPE = [1, 40, 101]
N = 4040
LIMIT = 1 << 20  # 1 MiB: the 150,000-deep body (300 kB) must reach the JSON parser


def good(**over):
    inp = {"name": "input", "shape": [1, *SHAPE], "datatype": "FP32", "data": [0.5] * N}
    inp.update(over)
    return {"inputs": [inp]}


def raw(body: str) -> dict:
    return {"content": body.encode(), "headers": {"content-type": "application/json"}}


def binary(header: dict, payload: bytes, header_len: int | None = None, ctype="application/octet-stream") -> dict:
    head = json.dumps(header).encode()
    headers = {"content-type": ctype}
    if header_len is not None:
        headers["Inference-Header-Content-Length"] = str(header_len)
    return {"content": head + payload, "headers": headers}


ZEROS = np.zeros((1, *SHAPE), "<f4").tobytes()
BIN_HEAD = {"inputs": [{"name": "input", "shape": [1, *SHAPE], "datatype": "FP32",
                        "parameters": {"binary_data_size": len(ZEROS)}}]}
BIN_LEN = len(json.dumps(BIN_HEAD).encode())

CASES = {
    "wrong datatype": ({"json": good(datatype="FP64")}, 400, "datatype"),
    "int datatype": ({"json": good(datatype="INT32")}, 400, "datatype"),
    "count below shape product": ({"json": good(data=[0.0] * (N - 1))}, 400, "needs 4040"),
    "count above shape product": ({"json": good(data=[0.0] * (N + 1))}, 400, "more than"),
    "negative dim": ({"json": good(shape=[-1, *SHAPE])}, 400, "at least 1"),
    "zero batch": ({"json": good(shape=[0, *SHAPE], data=[])}, 400, "at least 1"),
    "overflowing dim": ({"json": good(shape=[2**62, *SHAPE])}, 400, "exceeds max_batch_size"),
    "batch over max": ({"json": good(shape=[65, *SHAPE], data=[0] * 65 * N)}, 400, "max_batch_size"),
    "wrong inner dims": ({"json": good(shape=[1, 1, 101, 40])}, 400, "does not match"),
    "too few dims": ({"json": good(shape=[1, 4040])}, 400, "dims"),
    "shape not a list": ({"json": good(shape="1,1,40,101")}, 400, "list of integers"),
    "float dims": ({"json": good(shape=[1.0, 1, 40, 101])}, 400, "list of integers"),
    "bool dims": ({"json": good(shape=[True, 1, 40, 101])}, 400, "list of integers"),
    "unknown input": ({"json": good(name="audio")}, 400, "unknown input"),
    "empty inputs": ({"json": {"inputs": []}}, 400, "non-empty"),
    "no inputs key": ({"json": {"outputs": []}}, 400, "non-empty"),
    "duplicate names": ({"json": {"inputs": good()["inputs"] * 2}}, 400, "duplicate"),
    "input not an object": ({"json": {"inputs": [3]}}, 400, "inputs[0]: expected object"),
    "missing data": ({"json": {"inputs": [{"name": "input", "shape": [1, *SHAPE], "datatype": "FP32"}]}}, 400,
                     "no data"),
    "NaN literal": (raw(json.dumps(good()).replace("0.5", "NaN", 1)), 400, "non-finite"),
    "Infinity literal": (raw(json.dumps(good()).replace("0.5", "-Infinity", 1)), 400, "non-finite"),
    "string in FP32": ({"json": good(data=["0.5"] + [0.5] * (N - 1))}, 400, "not a number"),
    "huge integer": (raw(json.dumps(good()).replace("0.5", "1" + "0" * 400, 1)), 400, "too large"),
    "FP32 overflow": (raw(json.dumps(good()).replace("0.5", "1e300", 1)), 400, "NaN or Inf"),
    "bool in FP32": ({"json": good(data=[True] + [0.5] * (N - 1))}, 400, "not a number"),
    "null in FP32": ({"json": good(data=[None] + [0.5] * (N - 1))}, 400, "not a number"),
    "object in data": ({"json": good(data=[{"a": 1}] + [0.5] * (N - 1))}, 400, "not a number"),
    "bad JSON": (raw('{"inputs": [}'), 400, "not valid JSON"),
    "not an object": (raw("[1, 2, 3]"), 400, "JSON object"),
    "empty body": (raw(""), 400, "not valid JSON"),
    "150,000-deep nesting": (raw("[" * 150_000 + "]" * 150_000), 400, "JSON"),
    "deep data nesting": ({"json": good(data=[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[0.5]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]])},
                          400, "nesting deeper"),
    "id not a string": ({"json": good() | {"id": 5}}, 400, "id must be a string"),
    "unknown output": ({"json": good() | {"outputs": [{"name": "probs"}]}}, 400, "unknown output"),
    "outputs not a list": ({"json": good() | {"outputs": "logits"}}, 400, "outputs: expected array"),
    "octet-stream without header length": (binary(BIN_HEAD, ZEROS), 400, "Inference-Header-Content-Length"),
    "header length not int": (binary(BIN_HEAD, ZEROS, None) | {"headers": {
        "Inference-Header-Content-Length": "ten", "content-type": "application/octet-stream"}}, 400, "not an integer"),
    "header length past body": (binary(BIN_HEAD, ZEROS, 10**9), 400, "outside the body"),
    "binary size mismatch": (binary({"inputs": [{"name": "input", "shape": [1, *SHAPE], "datatype": "FP32",
                                                 "parameters": {"binary_data_size": 12}}]}, ZEROS,
                                    len(json.dumps({"inputs": [{"name": "input", "shape": [1, *SHAPE],
                                                                "datatype": "FP32",
                                                                "parameters": {"binary_data_size": 12}}]}))),
                             400, "binary_data_size"),
    "binary truncated": (binary(BIN_HEAD, ZEROS[:-4], BIN_LEN), 400, "binary bytes follow"),
    "binary NaN": (binary(BIN_HEAD, np.full((1, *SHAPE), np.nan, "<f4").tobytes(), BIN_LEN), 400, "NaN"),
    "body just over the limit": ({"content": b"x" * (LIMIT + 1), "headers": {"content-type": "application/json"}},
                                 413, "exceeds"),
    "unknown model": ({"json": good(), "path": "/v2/models/other/infer"}, 404, "unknown model"),
    "unknown version": ({"json": good(), "path": "/v2/models/served/versions/2/infer"}, 404, "no version"),
    "GET on infer": ({"method": "GET"}, 405, ""),
    "classify empty": ({"content": b"", "path": "/v1/classify"}, 400, "empty body"),
    "classify not audio": ({"content": b"\x89PNG garbage", "path": "/v1/classify"}, 400, "WAV"),
}


@pytest.fixture(scope="module")
def server(served_run):
    with running_server(served_run, max_body_bytes=LIMIT, max_batch=64) as (url, _):
        yield url


def test_matrix_has_at_least_30_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(server, case):
    spec, status, text = CASES[case]
    spec = dict(spec)
    path = spec.pop("path", "/v2/models/served/infer")
    method = spec.pop("method", "POST")
    r = httpx.request(method, server + path, timeout=30, **spec)
    assert r.status_code == status, (case, r.status_code, r.text[:200])
    assert set(r.json()) == {"error"} and text in r.json()["error"], r.json()
    assert "Traceback" not in r.text
    ok = httpx.post(server + "/v2/models/served/infer", json=good(), timeout=30)  # still serving
    assert ok.status_code == 200


def _raw_http(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data and b'"}' in data:
                break
    return data


def test_body_just_under_the_limit_is_read(server):
    body = b" " * (LIMIT - len(json.dumps(good()).encode()) - 1) + json.dumps(good()).encode()
    assert len(body) < LIMIT
    r = httpx.post(server + "/v2/models/served/infer", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200


def test_chunked_body_over_the_limit_without_content_length(server):
    def chunks():
        for _ in range(LIMIT // 4096 + 2):
            yield b" " * 4096

    r = httpx.post(server + "/v2/models/served/infer", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert r.status_code == 413 and "limit" in r.json()["error"]
    chunked_ok = httpx.post(server + "/v2/models/served/infer", content=iter([json.dumps(good()).encode()]))
    assert chunked_ok.status_code == 200


def test_lying_content_length_is_rejected(server):
    reply = _raw_http(server, b"POST /v2/models/served/infer HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n"
                              b"Connection: close\r\n\r\n{}")
    assert reply.startswith(b"HTTP/1.1 400")

