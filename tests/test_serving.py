"""The V2 server on a real uvicorn on loopback: conformance, batching, backpressure, faults, auth."""

from __future__ import annotations

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from fdkd.serving.runtime import load_runtime
from fdkd.serving.wav import resample, write_wav
from tests.dataset_arrays import builtin
from tests.serving_helpers import failed_gate_copy, metric, running_server

SHAPE = [1, 40, 101]


@pytest.fixture(scope="module")
def server(served_run):
    with running_server(served_run, max_queue_delay_ms=2.0) as (url, app):
        yield url, app


@pytest.fixture(scope="module")
def runtime(served_run):
    return load_runtime(served_run / "student.onnx")


def _x(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *SHAPE)).astype(np.float32)


def test_tritonclient_json_and_binary_match_in_process_runtime(server, runtime):
    import tritonclient.http as th

    url, _ = server
    client = th.InferenceServerClient(url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("served")
    meta = client.get_model_metadata("served")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, *SHAPE]}]
    assert meta["outputs"][0]["shape"] == [-1, 10] and meta["platform"] == "onnxruntime_onnx"
    config = client.get_model_config("served")
    assert config["max_batch_size"] == 64 and config["input"][0]["dims"] == SHAPE
    assert client.get_server_metadata()["extensions"]
    x = _x(5)
    expect = runtime(x)
    for binary in (False, True):
        inp = th.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = th.InferRequestedOutput("logits", binary_data=binary)
        result = client.infer("served", [inp], outputs=[out], request_id="abc")
        np.testing.assert_allclose(result.as_numpy("logits"), expect, rtol=1e-5, atol=1e-5)
        assert result.get_response()["id"] == "abc"


def test_json_id_echo_nested_data_and_request_id_header(server, runtime):
    url, _ = server
    x = _x(2, 1)
    body = {"inputs": [{"name": "input", "shape": [2, *SHAPE], "datatype": "FP32", "data": x.tolist()}]}
    r = httpx.post(f"{url}/v2/models/served/infer", json=body)
    assert r.status_code == 200 and "id" not in r.json()
    assert "x-request-id" not in r.headers  # none made up: the client sent none
    np.testing.assert_allclose(np.array(r.json()["outputs"][0]["data"]).reshape(2, 10), runtime(x), atol=1e-5)
    r = httpx.post(f"{url}/v2/models/served/versions/1/infer", json=body | {"id": "req-7"},
                   headers={"X-Request-ID": "ignored"})
    assert r.json()["id"] == "req-7" and r.headers["x-request-id"] == "req-7"
    r = httpx.get(f"{url}/v2/health/live", headers={"X-Request-ID": "trace-1"})
    assert r.headers["x-request-id"] == "trace-1"


def test_classify_route_applies_the_manifest_preprocessing(server, served_run, runtime, tiny_dataset):
    url, _ = server
    z = builtin(tiny_dataset.path)
    test_rows = np.flatnonzero(z["split"] == 2)[:3]
    for row in test_rows:
        wav = write_wav(z["audio_raw"][row].astype(np.float32) / 32768.0, 16000)
        r = httpx.post(f"{url}/v1/classify", content=wav, headers={"content-type": "audio/wav"})
        assert r.status_code == 200, r.text
        body = r.json()
        expect = runtime(tiny_dataset.x["audio"][row : row + 1])[0]
        assert body["class_index"] == int(expect.argmax())
        assert body["class_name"] == tiny_dataset.class_names[body["class_index"]]
        assert sum(body["probabilities"].values()) == pytest.approx(1.0)
    files = {"file": ("clip.wav", write_wav(np.zeros(16000), 16000), "audio/wav")}
    assert httpx.post(f"{url}/v1/classify", files=files).status_code == 200
    form = httpx.Request("POST", f"{url}/v1/classify", files=files)  # media types are case-insensitive
    kind = form.headers["content-type"].replace("multipart/form-data", "Multipart/Form-Data")
    r = httpx.post(f"{url}/v1/classify", content=form.read(), headers={"content-type": kind})
    assert r.status_code == 200, r.text
    # another rate is resampled as the training data was (polyphase filter), up to a length limit
    wav8k = write_wav(resample(z["audio_raw"][0].astype(np.float32) / 32768.0, 16000, 8000), 8000)
    r = httpx.post(f"{url}/v1/classify", content=wav8k)
    assert r.status_code == 200 and r.json()["class_name"] in tiny_dataset.class_names, r.text
    r = httpx.post(f"{url}/v1/classify", content=write_wav(np.zeros(8000 * 61), 8000))
    assert r.status_code == 400 and "at most 60 s is resampled" in r.json()["error"]


def test_concurrent_requests_get_their_own_rows_and_batches_form(server, runtime):
    url, _ = server
    xs = [_x(1, seed) for seed in range(64)]
    before = httpx.get(f"{url}/metrics").text

    def call(x):
        body = {"inputs": [{"name": "input", "shape": [1, *SHAPE], "datatype": "FP32", "data": x.ravel().tolist()}]}
        return np.array(httpx.post(f"{url}/v2/models/served/infer", json=body, timeout=30).json()["outputs"][0]["data"])

    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(call, xs))
    for x, got in zip(xs, results, strict=True):
        np.testing.assert_allclose(got, runtime(x)[0], atol=1e-5)
    after = httpx.get(f"{url}/metrics").text
    batches = metric(after, "fdkd_batch_size_count") - metric(before, "fdkd_batch_size_count")
    rows = metric(after, "fdkd_inferred_rows_total") - metric(before, "fdkd_inferred_rows_total")
    assert rows == 64 and batches < 64  # some batches held more than one request
    assert metric(after, "fdkd_batch_size_bucket", le="1.0") < metric(after, "fdkd_batch_size_count")
    assert metric(after, "fdkd_pending_requests") == 0
    total = metric(after, "fdkd_requests_total")
    ok = metric(after, "fdkd_requests_total", outcome="success")
    bad = metric(after, "fdkd_requests_total", outcome="failure")
    assert total == ok + bad and ok >= 64


class Gated:
    """Wraps the real runtime; blocks every batch until released (a slow runtime)."""

    def __init__(self, inner):
        self.inner, self.release, self.entered = inner, threading.Event(), threading.Event()

    def __call__(self, x):
        self.entered.set()
        self.release.wait(30)
        return self.inner(x)


def test_backpressure_rejects_exactly_the_excess(served_run):
    holder = {}

    def wrap(rt):
        holder["rt"] = Gated(rt)
        return holder["rt"]

    queue, excess = 4, 3
    with running_server(served_run, wrap, max_batch=1, max_queue=queue) as (url, _):
        gated = holder["rt"]
        body = {"inputs": [{"name": "input", "shape": [1, *SHAPE], "datatype": "FP32",
                            "data": _x(1).ravel().tolist()}]}
        post = lambda: httpx.post(f"{url}/v2/models/served/infer", json=body, timeout=60)  # noqa: E731
        with ThreadPoolExecutor(16) as pool:
            first = pool.submit(post)
            assert gated.entered.wait(10)  # one request is executing, the queue is empty
            queued = [pool.submit(post) for _ in range(queue)]
            deadline = time.time() + 10
            while metric(httpx.get(f"{url}/metrics").text, "fdkd_pending_requests") < 1 + queue:
                assert time.time() < deadline
            rejected = [post() for _ in range(excess)]
            gated.release.set()
            done = [first.result()] + [f.result() for f in queued]
        assert [r.status_code for r in rejected] == [503] * excess
        assert all(r.headers["retry-after"] and "queue full" in r.json()["error"] for r in rejected)
        assert [r.status_code for r in done] == [200] * (1 + queue)
        text = httpx.get(f"{url}/metrics").text
        assert metric(text, "fdkd_pending_requests") == 0
        assert metric(text, "fdkd_requests_total", reason="queue_full") == excess


class Flaky:
    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __call__(self, x):
        self.calls += 1
        if self.calls == 1:  # the first request after warm-up
            raise RuntimeError("device fell over")
        return self.inner(x)


def test_runtime_error_is_500_and_the_next_request_succeeds(served_run):
    with running_server(served_run, Flaky) as (url, _):
        body = {"inputs": [{"name": "input", "shape": [1, *SHAPE], "datatype": "FP32", "data": [0.0] * 4040}]}
        r = httpx.post(f"{url}/v2/models/served/infer", json=body)
        assert r.status_code == 500 and r.json() == {"error": "inference failed in the runtime"}
        assert "Traceback" not in r.text
        assert httpx.post(f"{url}/v2/models/served/infer", json=body).status_code == 200


def test_corrupt_artifact_is_live_but_not_ready(served_run, tmp_path):
    run_dir = tmp_path / "corrupt"
    shutil.copytree(served_run, run_dir)
    onnx_path = run_dir / "student.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes()[:1000])
    with running_server(run_dir, wait_ready=False) as (url, _):
        assert httpx.get(f"{url}/v2/health/live").status_code == 200
        r = httpx.get(f"{url}/v2/health/ready")
        assert r.status_code == 503 and "sha256 mismatch" in r.json()["error"]
        assert httpx.post(f"{url}/v2/models/served/infer", json={}).status_code == 503


def test_failed_gate_refuses_unless_overridden(served_run, tmp_path):
    run_dir = failed_gate_copy(served_run, tmp_path)
    with running_server(run_dir, wait_ready=False) as (url, _):
        r = httpx.get(f"{url}/v2/health/ready")
        assert r.status_code == 503 and "failed its validation gate" in r.json()["error"]
    with running_server(run_dir, allow_unvalidated=True) as (url, _):
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200


def test_auth_matrix(served_run):
    with running_server(served_run, api_key="s3cret") as (url, _):
        model = f"{url}/v2/models/served"
        cases = [({}, 401), ({"Authorization": "Bearer wrong"}, 401), ({"X-API-Key": "wrong"}, 401),
                 ({"Authorization": "Basic s3cret"}, 401), ({"Authorization": "Bearer s3cret"}, 200),
                 ({"authorization": "bearer s3cret"}, 200), ({"X-API-Key": "s3cret"}, 200)]
        for headers, status in cases:
            r = httpx.get(model, headers=headers)
            assert r.status_code == status, headers
            if status == 401:
                assert r.json() == {"error": "missing or invalid API key"}
        for exempt in ("/v2/health/live", "/v2/health/ready", "/metrics"):
            assert httpx.get(url + exempt).status_code == 200
        assert httpx.post(f"{model}/infer", json={}).status_code == 401  # before the body is even parsed


def test_cors_is_off_unless_configured(server, served_run):
    url, _ = server
    r = httpx.options(f"{url}/v2", headers={"Origin": "http://x.test", "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in r.headers
    with running_server(served_run, cors_origins=["http://x.test"]) as (url2, _):
        r = httpx.get(f"{url2}/v2", headers={"Origin": "http://x.test"})
        assert r.headers["access-control-allow-origin"] == "http://x.test"


def test_unknown_model_and_version_are_404(server):
    url, _ = server
    assert httpx.get(f"{url}/v2/models/nope").status_code == 404
    r = httpx.get(f"{url}/v2/models/served/versions/9")
    assert r.status_code == 404 and "no version '9'" in r.json()["error"]
    assert httpx.get(f"{url}/no/such/route").json() == {"error": "not found"}


def test_client_that_disconnects_before_dispatch_is_dropped(served_run):
    import socket

    holder = {}

    def wrap(rt):
        holder["rt"] = Gated(rt)
        return holder["rt"]

    with running_server(served_run, wrap, max_batch=1) as (url, _):
        body = json.dumps({"inputs": [{"name": "input", "shape": [1, *SHAPE], "datatype": "FP32",
                                       "data": [0.0] * 4040}]}).encode()
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(httpx.post, f"{url}/v2/models/served/infer", content=body, timeout=30)
            assert holder["rt"].entered.wait(10)  # the first request occupies the runtime
            host, port = url.removeprefix("http://").split(":")
            s = socket.create_connection((host, int(port)))
            s.sendall(b"POST /v2/models/served/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            deadline = time.time() + 10
            while metric(httpx.get(f"{url}/metrics").text, "fdkd_pending_requests") < 2:
                assert time.time() < deadline
            s.close()  # gone before its request was dispatched
            time.sleep(0.8)  # the handler notices within its 0.25 s poll
            holder["rt"].release.set()
            assert first.result().status_code == 200
        text = httpx.get(f"{url}/metrics").text
        assert metric(text, "fdkd_requests_total", reason="disconnected") == 1
        assert metric(text, "fdkd_inferred_rows_total") == 1  # only the first request ran
        assert metric(text, "fdkd_pending_requests") == 0


def test_warm_up_failure_keeps_the_server_live_but_not_ready(served_run, monkeypatch):
    from fdkd.serving.model import LoadedModel

    def broken(self, max_batch):
        raise RuntimeError("out of device memory")

    monkeypatch.setattr(LoadedModel, "warm_up", broken)
    with running_server(served_run, wait_ready=False) as (url, _):
        assert httpx.get(f"{url}/v2/health/live").status_code == 200
        r = httpx.get(f"{url}/v2/health/ready")
        assert r.status_code == 503 and "warm-up failed: RuntimeError: out of device memory" in r.json()["error"]
