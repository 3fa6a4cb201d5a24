"""V2 conformance and hardening of the inference hot path, on a real uvicorn on loopback.

Classification (tritonclient's class_count), gzip / deflate bodies (cap after decompression),
``outputs: []``, ``binary_data`` as a boolean, the NaN/Inf policy, huge JSON integers, request
ids (bounded, no control characters, never echoed when refused), bounded error messages, the
FastAPI fallback answering like the hot path, and a 16 MB body of nested empty arrays against a
server process whose liveness is watched meanwhile.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import threading
import time
import zlib

import httpx
import numpy as np
import pytest

from fdkd.serving.runtime import load_runtime
from tests.serving_helpers import running_server, start_fdkd_serve

SHAPE = [1, 40, 101]
N = 4040
INFER = "/v2/models/served/infer"


def body(x: np.ndarray | None = None, **extra) -> dict:
    x = np.zeros((1, *SHAPE), np.float32) if x is None else x
    return {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
            **extra}


def _x(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *SHAPE)).astype(np.float32)


@pytest.fixture(scope="module")
def server(served_run):
    with running_server(served_run, max_body_bytes=4 << 20) as (url, app):
        yield url, app


@pytest.fixture(scope="module")
def runtime(served_run):
    return load_runtime(served_run / "student.onnx")


def test_classification_in_tritons_format_json_and_binary(server, runtime, served_run):
    import tritonclient.http as th

    url, _ = server
    names = json.loads((served_run / "manifest.json").read_text())["class_names"]
    client = th.InferenceServerClient(url.removeprefix("http://"))
    x = _x(3, 4)
    logits = runtime(x)
    for binary in (False, True):
        inp = th.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = th.InferRequestedOutput("logits", binary_data=binary, class_count=3)
        got = client.infer("served", [inp], outputs=[out]).as_numpy("logits")
        assert got.shape == (3, 3)
        for row in range(3):
            best = np.argsort(-logits[row])[:3]
            parts = [(e.decode() if isinstance(e, bytes) else e).split(":") for e in got[row]]
            assert [int(p[1]) for p in parts] == best.tolist()
            assert [p[2] for p in parts] == [names[i] for i in best]
            np.testing.assert_allclose([float(p[0]) for p in parts], logits[row, best], atol=1e-5)
    many = {"outputs": [{"name": "logits", "parameters": {"classification": 50}}]}
    r = httpx.post(url + INFER, json=body(**many))
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [1, 10]  # capped at the class count
    for bad in (0, -1, "3", 2.5, True):
        r = httpx.post(url + INFER, json=body(outputs=[{"name": "logits", "parameters": {"classification": bad}}]))
        assert r.status_code == 400 and "classification" in r.json()["error"], bad


def test_gzip_and_deflate_bodies_and_the_cap_after_decompression(server, runtime):
    import tritonclient.http as th

    url, _ = server
    client = th.InferenceServerClient(url.removeprefix("http://"))
    x = _x(2, 5)
    for algo in ("gzip", "deflate"):
        for binary in (False, True):
            inp = th.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            out = th.InferRequestedOutput("logits", binary_data=binary)
            res = client.infer("served", [inp], outputs=[out], request_compression_algorithm=algo)
            np.testing.assert_allclose(res.as_numpy("logits"), runtime(x), atol=1e-5)
    raw = json.dumps(body()).encode()
    r = httpx.post(url + INFER, content=zlib.compress(raw)[2:-4], headers={"content-encoding": "deflate"})
    assert r.status_code == 200  # raw deflate without the zlib wrapper, as some clients send it
    bomb = gzip.compress(b" " * (8 << 20))  # ~8 kB on the wire, 8 MiB inflated; the cap is 4 MiB
    assert len(bomb) < 100_000
    r = httpx.post(url + INFER, content=bomb, headers={"content-encoding": "gzip", "content-type": "application/json"})
    assert r.status_code == 413 and "inflates past the 4194304-byte limit" in r.json()["error"]
    r = httpx.post(url + INFER, content=b"\x1f\x8b garbage", headers={"content-encoding": "gzip"})
    assert r.status_code == 400 and "corrupt" in r.json()["error"]
    r = httpx.post(url + INFER, content=gzip.compress(raw)[:-20], headers={"content-encoding": "gzip"})
    assert r.status_code == 400 and "gzip body is" in r.json()["error"]
    r = httpx.post(url + INFER, content=raw, headers={"content-encoding": "br"})
    assert r.status_code == 415 and "not supported" in r.json()["error"]


def test_empty_outputs_list_returns_every_output_and_binary_data_must_be_boolean(server, runtime):
    url, _ = server
    x = _x(1, 6)
    r = httpx.post(url + INFER, json=body(x, outputs=[]))
    assert r.status_code == 200
    (out,) = r.json()["outputs"]
    assert out["name"] == "logits" and out["shape"] == [1, 10]
    np.testing.assert_allclose(out["data"], runtime(x)[0], atol=1e-5)
    for bad in ("true", 1, "yes", None, [True]):
        r = httpx.post(url + INFER, json=body(outputs=[{"name": "logits", "parameters": {"binary_data": bad}}]))
        if bad is None:  # null is JSON's "not given": the default (JSON) applies
            assert r.status_code == 400 or r.status_code == 200
            continue
        assert r.status_code == 400, bad
        assert "outputs[0].parameters.binary_data must be a boolean" in r.json()["error"]
    r = httpx.post(url + INFER, json=body(parameters={"binary_data_output": "false"}))
    assert r.status_code == 400 and "parameters.binary_data_output must be a boolean" in r.json()["error"]
    r = httpx.post(url + INFER, json=body(parameters={"binary_data_output": True}))
    assert r.status_code == 200 and int(r.headers["inference-header-content-length"]) < len(r.content)


def _binary(x: np.ndarray) -> dict:
    head = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    return {"content": head + x.astype("<f4").tobytes(),
            "headers": {"content-type": "application/octet-stream", "inference-header-content-length": str(len(head))}}


def test_nonfinite_inputs_policy(server, served_run):
    x = _x(1, 7)
    x[0, 0, 3, 5], x[0, 0, 7, 9] = np.nan, np.inf
    url, _ = server
    r = httpx.post(url + INFER, **_binary(x))
    assert r.status_code == 400 and "NaN or Inf (first at flat index 308)" in r.json()["error"]
    with running_server(served_run, nonfinite_inputs="accept") as (url2, _):
        r = httpx.post(url2 + INFER, **_binary(x))
        assert r.status_code == 200
        data = json.loads(r.text)["outputs"][0]["data"]  # strict JSON: non-finite outputs are null
        assert len(data) == 10 and all(v is None or np.isfinite(v) for v in data)
        big = json.dumps(body()).replace("0.0", "1e300", 1)  # overflows FP32 to Inf: accepted
        assert httpx.post(url2 + INFER, content=big, headers={"content-type": "application/json"}).status_code == 200
        nan_literal = json.dumps(body()).replace("0.0", "NaN", 1)  # not JSON under any policy
        r = httpx.post(url2 + INFER, content=nan_literal, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "non-finite number" in r.json()["error"]


def test_integers_of_more_than_4300_digits_are_400(server):
    url, _ = server
    huge = "1" + "0" * 5000
    base = json.dumps(body())
    cases = {
        "in data": base.replace("0.0", huge, 1),
        "as a dim": base.replace('"shape": [1,', f'"shape": [{huge},', 1),
        "as the id": base[:-1] + f', "id": {huge}}}',
        "in an unknown field": base[:-1] + f', "extra": {huge}}}',
        "as binary_data_size": json.dumps({"inputs": [{"name": "input", "shape": [1, *SHAPE], "datatype": "FP32",
                                                       "parameters": {"binary_data_size": 0}}]}).replace(
            '"binary_data_size": 0', f'"binary_data_size": {huge}'),
        "as classification": base[:-1] + f', "outputs": [{{"name": "logits", "parameters": '
                                         f'{{"classification": {huge}}}}}]}}',
    }
    for what, text in cases.items():
        r = httpx.post(url + INFER, content=text, headers={"content-type": "application/json"})
        if what == "in an unknown field":  # never decoded: skipped like every field the server does not read
            assert r.status_code == 200, r.text[:200]
            continue
        assert r.status_code == 400, (what, r.text[:300])
        assert len(r.json()["error"]) < 300 and huge[:200] not in r.text
    assert httpx.post(url + INFER, json=body()).status_code == 200


def test_v2_id_is_validated_and_bounded_before_any_header_or_log(server, caplog):
    url, _ = server
    for bad, why in (("a\x00b", "control characters"), ("line\nbreak", "control characters"),
                     ("x\x7f", "control characters"), ("a" * (1 << 20), "longer than 1024")):
        with caplog.at_level("INFO", logger="fdkd.serve"):
            r = httpx.post(url + INFER, json=body(id=bad))
        assert r.status_code == 400 and why in r.json()["error"]
        assert "x-request-id" not in r.headers and bad not in r.text
        assert bad[:50] not in caplog.text
        caplog.clear()
    ok = "req-" + "é" * 1000
    r = httpx.post(url + INFER, json=body(id=ok))
    assert r.status_code == 200 and r.json()["id"] == ok and r.headers["x-request-id"].startswith("req-")


def test_error_messages_quote_only_a_bounded_prefix(server):
    url, _ = server
    long = "Z" * 100_000
    cases = [body() | {"inputs": [body()["inputs"][0] | {"name": long}]},
             body() | {"inputs": [body()["inputs"][0] | {"datatype": long}]},
             body(outputs=[{"name": long}]),
             body(outputs=[{"name": "logits", "parameters": {"binary_data": long}}]),
             body() | {"inputs": [body()["inputs"][0] | {"data": [long] + [0.0] * (N - 1)}]}]
    for payload in cases:
        r = httpx.post(url + INFER, json=payload)
        assert r.status_code == 400 and len(r.text) < 400, r.text[:500]
    r = httpx.post(url + "/v2/models/" + "M" * 5000 + "/infer", json=body())
    assert r.status_code == 404 and len(r.text) < 400
    r = httpx.post(url + INFER, content=b'{"inputs": [' + b"Q" * 100_000, headers={"content-type": "application/json"})
    assert r.status_code == 400 and len(r.text) < 400


def test_fastapi_fallback_answers_like_the_hot_path(served_run):
    requests = [{"json": body()}, {"json": body(id="r1", outputs=[])}, {"json": {"inputs": []}},
                {"json": body(outputs=[{"name": "logits", "parameters": {"classification": 2}}])},
                {"json": body(), "path": "/v2/models/served/versions/1/infer"},
                {"json": body(), "path": "/v2/models/other/infer"},
                {"content": gzip.compress(json.dumps(body()).encode()), "headers": {"content-encoding": "gzip"}}]
    answers = {}
    for hot in (True, False):
        with running_server(served_run, hot_path=hot) as (url, _):
            got = []
            for spec in requests:
                spec = dict(spec)
                r = httpx.post(url + spec.pop("path", INFER), **spec)
                got.append((r.status_code, r.headers["content-type"], r.json()))
            answers[hot] = got
    assert answers[True] == answers[False]
    assert [a[0] for a in answers[True]] == [200, 200, 400, 200, 200, 404, 200]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_16_mb_of_nested_empty_arrays_does_not_stall_the_event_loop(served_run):
    """A server process gets 16 MB bodies of empty arrays; /v2/health/live answers within 100 ms throughout, plus
    twice the slowest answer of an idle second measured first (a machine busy with other work is slow either way;
    a parse on the event loop stalls for the whole body)."""
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FDKD_SERVE_MAX_BODY_BYTES": str(17 << 20)}
    proc = subprocess.Popen([sys.executable, "-m", "fdkd", "serve", str(served_run), "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        n = 16_000_000 // 3
        bodies = {
            "top-level list": b"[" + b"[]," * n + b"[]]",
            "as data": b'{"inputs":[{"name":"input","shape":[1,1,40,101],"datatype":"FP32","data":['
                       + b"[]," * n + b"[]]}]}",
            "in an unknown field": b'{"x":[' + b"[]," * n + b'[]],"inputs":[]}',
            "as shape": b'{"inputs":[{"name":"input","datatype":"FP32","shape":[' + b"[]," * n + b"[]]}]}",
            "deeply nested data": b'{"inputs":[{"name":"input","shape":[1,1,40,101],"datatype":"FP32","data":'
                                  + b"[" * (8 << 20) + b"]" * (8 << 20) + b"}]}",
        }
        with httpx.Client(timeout=5) as live:
            live.get(url + "/v2/health/live")
            idle, t_end = 0.0, time.perf_counter() + 1.0
            while time.perf_counter() < t_end:
                t0 = time.perf_counter()
                live.get(url + "/v2/health/live")
                idle = max(idle, time.perf_counter() - t0)
                time.sleep(0.005)
            bound = 0.1 + 2 * idle
            for what, payload in bodies.items():
                worst, stop = [0.0], threading.Event()

                def watch(worst=worst, stop=stop):
                    while not stop.is_set():
                        t0 = time.perf_counter()
                        assert live.get(url + "/v2/health/live").status_code == 200
                        worst[0] = max(worst[0], time.perf_counter() - t0)
                        time.sleep(0.005)

                watcher = threading.Thread(target=watch)
                watcher.start()
                try:
                    r = httpx.post(url + INFER, content=payload, timeout=60,
                                   headers={"content-type": "application/json"})
                finally:
                    time.sleep(0.05)
                    stop.set()
                    watcher.join()
                assert r.status_code == 400 and len(r.text) < 400, (what, r.status_code, r.text[:300])
                assert worst[0] < bound, f"{what}: liveness took {1000 * worst[0]:.0f} ms (idle: {1000 * idle:.0f})"
        assert httpx.post(url + INFER, json=body(), timeout=30).status_code == 200
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.slow
def test_fdkd_serve_under_granian(served_run, runtime):
    """`fdkd serve --http granian`: the same app and hot path behind Granian; SIGTERM ends it."""
    from fdkd.serving.wav import write_wav

    proc, url = start_fdkd_serve(served_run, "--http", "granian", "--max-batch", "8", env={"OMP_NUM_THREADS": "1"})
    try:
        x = _x(2, 9)
        r = httpx.post(url + INFER, json=body(x, id="g-1"), timeout=30)
        assert r.status_code == 200 and r.json()["id"] == "g-1" and r.headers["x-request-id"] == "g-1"
        np.testing.assert_allclose(np.array(r.json()["outputs"][0]["data"]).reshape(2, 10), runtime(x), atol=1e-5)
        r = httpx.post(url + INFER, json=body(_x(9)), timeout=30)
        assert r.status_code == 400 and "exceeds max_batch_size 8" in r.json()["error"]  # the flag reached the app
        r = httpx.post(url + "/v1/classify", content=write_wav(np.zeros(16000), 16000), timeout=30)
        assert r.status_code == 200 and r.json()["class_name"]
    finally:
        proc.terminate()
        proc.wait(60)
    assert proc.returncode == 0
