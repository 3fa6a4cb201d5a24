"""Hardening and V2 conformance on a real uvicorn (in a thread, or `fdkd serve` as a process).

Config with Triton's own protobuf schema, CORS with auth, hostile uploads (a 1e20 WAV, PNG
bombs), slow and oversized senders over raw loopback sockets, bounded error echoes, a dead
batcher and a hung runtime, the empty API key, compose, and the SIGTERM drain bounds.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from fdkd.serving.settings import K8S_GRACE_SECONDS, SHUTDOWN_MARGIN_SECONDS, ServeSettings
from fdkd.serving.wav import write_wav
from tests.serving_helpers import metric, running_server, start_fdkd_serve

ROOT = Path(__file__).resolve().parents[1]
SHAPE = [1, 40, 101]
BODY = {"inputs": [{"name": "input", "shape": [1, *SHAPE], "datatype": "FP32", "data": [0.1] * 4040}]}


def strict_json(text: str):
    """json.loads that refuses NaN/Infinity (what a browser's JSON.parse accepts)."""
    def bad(token):
        raise ValueError(f"invalid JSON constant {token}")

    return json.loads(text, parse_constant=bad)


# ---------------------------------------------------------------- sockets (loopback, bounded)

def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=5)
    s.settimeout(5)
    return s


def read_until_closed(s: socket.socket, limit_s: float = 5.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection; and how long that took."""
    t0, chunks = time.monotonic(), []
    s.settimeout(limit_s)
    while time.monotonic() - t0 < limit_s:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks), time.monotonic() - t0


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else 0


def json_body(raw: bytes) -> dict:
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def server(served_run):
    with running_server(served_run) as (url, app):
        yield url, app


@pytest.fixture(scope="module")
def image_run(served_run, tmp_path_factory):
    """The served run with an image frontend of the graph's input size (40 x 101, one channel): an image student."""
    run_dir = tmp_path_factory.mktemp("image-run") / "served"
    shutil.copytree(served_run, run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["preprocessing"] = {"kind": "image", "height": SHAPE[1], "width": SHAPE[2], "channels": 1,
                                 "max_value": 1.0, "mean": 0.5, "std": 0.25}
    manifest["student_modality"] = "image"
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    return run_dir


# ---------------------------------------------------------------- V2 conformance

def test_version_config_loads_with_tritons_protobuf_schema(server):
    import tritonclient.http as th
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2

    url, _ = server
    client = th.InferenceServerClient(url.removeprefix("http://"))
    by_version = client.get_model_config("served", model_version="1")
    assert by_version == httpx.get(f"{url}/v2/models/served/config").json()
    config = json_format.ParseDict(by_version, model_config_pb2.ModelConfig())  # unknown fields would raise
    assert config.name == "served" and config.platform == "onnxruntime_onnx" and config.backend == "onnxruntime"
    assert config.max_batch_size == 64 and list(config.input[0].dims) == SHAPE
    assert config.input[0].data_type == model_config_pb2.TYPE_FP32 and list(config.output[0].dims) == [10]
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 256
    assert list(config.version_policy.specific.versions) == [1]
    r = httpx.get(f"{url}/v2/models/served/versions/2/config")
    assert r.status_code == 404 and "no version '2'" in r.json()["error"]


def test_cors_preflight_beats_auth_and_exposes_the_binary_header(served_run):
    origin = "http://page.test"
    with running_server(served_run, api_key="s3cret", cors_origins=[origin]) as (url, _):
        infer = f"{url}/v2/models/served/infer"
        pre = httpx.options(infer, headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                            "Access-Control-Request-Headers": "authorization, content-type"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == origin
        denied = httpx.post(infer, json=BODY, headers={"Origin": origin})
        assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == origin
        head = json.dumps({"inputs": [{"name": "input", "shape": [1, *SHAPE], "datatype": "FP32",
                                       "parameters": {"binary_data_size": 4040 * 4}}],
                           "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
        r = httpx.post(infer, content=head + np.zeros(4040, "<f4").tobytes(),
                       headers={"Origin": origin, "Authorization": "Bearer s3cret",
                                "Inference-Header-Content-Length": str(len(head))})
        assert r.status_code == 200 and int(r.headers["inference-header-content-length"]) > 0
        exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
        assert "inference-header-content-length" in exposed


def test_a_response_before_the_body_was_read_closes_the_connection(served_run):
    """A 401 answered before the body arrived: the sender cannot keep the connection by trickling the rest."""
    with running_server(served_run, api_key="s3cret") as (url, _):
        s = connect(url)
        s.sendall(b"POST /v2/models/served/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"{" * 10)
        raw, took = read_until_closed(s)
        s.close()
        assert status_of(raw) == 401 and took < 2  # closed at once, not after the 5 s keep-alive


# ---------------------------------------------------------------- configuration

def test_empty_api_key_is_a_configuration_error(served_run):
    from pydantic import ValidationError

    for empty in ("", "  "):
        with pytest.raises(ValidationError, match="API key is set but empty"):
            ServeSettings(run_dir=served_run, api_key=empty)
    proc = subprocess.run([sys.executable, "-m", "fdkd", "serve", str(served_run), "--port", "0"],
                          env={**os.environ, "FDKD_SERVE_API_KEY": ""}, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "API key is set but empty" in " ".join((proc.stdout + proc.stderr).split())


def _interpolate(value: str, env: dict) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}; raises on the error forms."""
    def one(m):
        name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
        got = env.get(name)
        if op in (":?", "?") and (got is None or (op == ":?" and got == "")):
            raise LookupError(arg or name)
        if op == ":-" and not got or op == "-" and got is None:
            return arg
        return got or ""

    return re.sub(r"\$\{(\w+)(:-|-|:\?|\?)?([^}]*)\}", one, value)


def test_compose_never_passes_an_empty_api_key():
    services = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"]
    for name, svc in services.items():
        env = svc.get("environment", {})
        if isinstance(env, list):  # "KEY=value" or bare "KEY" (passed through only when set)
            env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
        if "FDKD_SERVE_API_KEY" not in env or env["FDKD_SERVE_API_KEY"] is None:
            continue
        value = str(env["FDKD_SERVE_API_KEY"])
        for shell in ({}, {"FDKD_SERVE_API_KEY": ""}):  # unset, or set but empty
            try:
                passed = _interpolate(value, shell)
            except LookupError:
                continue  # compose refuses to start: fine
            assert passed.strip(), f"service {name} would pass an empty FDKD_SERVE_API_KEY given {shell}"
        assert _interpolate(value, {"FDKD_SERVE_API_KEY": "k3y"}) == "k3y"


# ---------------------------------------------------------------- hostile uploads

def test_float_wav_near_1e20_gets_a_json_400_and_loud_but_sane_wavs_classify(server):
    url, _ = server
    t = np.arange(16000) / 16000
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    r = httpx.post(f"{url}/v1/classify", content=write_wav(tone * 1e20, 16000, float32=True))
    assert r.status_code == 400 and "1e+20" in strict_json(r.text)["error"]
    for gain in (1.0, 8.0, 900.0):  # overs happen in float WAVs; up to 60 dB over full scale is served
        r = httpx.post(f"{url}/v1/classify", content=write_wav(tone * gain, 16000, float32=True))
        assert r.status_code == 200, r.text
        probs = strict_json(r.text)["probabilities"]
        assert all(np.isfinite(list(probs.values()))) and sum(probs.values()) == pytest.approx(1.0)
    good = write_wav(tone, 16000)
    junk = b"junk\0\0\0\0" * 200_000  # 1.6 MB of empty chunks: refused after 1024, not walked
    many = b"RIFF" + struct.pack("<I", 4 + len(junk) + len(good) - 12) + b"WAVE" + junk + good[12:]
    r = httpx.post(f"{url}/v1/classify", content=many)
    assert r.status_code == 400 and "more than 1024 chunks" in r.json()["error"]


def test_big_uploads_are_preprocessed_off_the_event_loop(served_run, monkeypatch):
    """A large upload's decode (for a WAV: parse and checks; its log-mel is the batcher's) runs in a worker
    thread (the loop keeps serving); a small one stays inline."""
    import asyncio

    import fdkd.serving.upload
    from fdkd.serving.inference import PREPROCESS_INLINE_BYTES

    on_loop = []
    real = fdkd.serving.upload.prepare

    def spy(m, body):
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return real(m, body)

    monkeypatch.setattr(fdkd.serving.upload, "prepare", spy)
    small = write_wav(np.zeros(8000), 16000)  # 16 kB
    big = write_wav(np.zeros(48000), 16000)  # 96 kB
    assert len(small) <= PREPROCESS_INLINE_BYTES < len(big)
    for hot in (True, False):  # the hot path and the FastAPI route
        with running_server(served_run, hot_path=hot) as (url, _):
            on_loop.clear()
            for body in (small, big):
                assert httpx.post(f"{url}/v1/classify", content=body, timeout=30).status_code == 200
            assert on_loop == [True, False], (hot, on_loop)


def _chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data))


def png(width: int, height: int, extra: list[bytes] = (), rows: int | None = None) -> bytes:
    """A grayscale PNG by hand; ``rows`` caps the pixel rows actually stored (a header can lie)."""
    stored = height if rows is None else rows
    pixels = b"".join(b"\0" + bytes((x * 7 + y) % 256 for x in range(width)) for y in range(stored))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + b"".join(extra) + _chunk(b"IDAT", zlib.compress(pixels)) + _chunk(b"IEND", b""))


def ztxt(inflated: int) -> bytes:
    return _chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"a" * inflated, 9))


def iccp(inflated: int) -> bytes:
    return _chunk(b"iCCP", b"icc\0\0" + zlib.compress(b"\0" * inflated, 9))


def itxt(inflated: int) -> bytes:
    return _chunk(b"iTXt", b"Comment\0\x01\0en\0\0" + zlib.compress(b"b" * inflated, 9))


def test_image_decompression_bombs_get_a_clean_400(image_run):
    mib = 1 << 20
    with running_server(image_run) as (url, _):
        classify = f"{url}/v1/classify"
        ok = httpx.post(classify, content=png(101, 40, [ztxt(1000), iccp(3000), itxt(500)]))
        assert ok.status_code == 200 and ok.json()["class_name"], ok.text
        bmp_header = struct.pack("<IiiHHIIiiII", 40, 20000, 20000, 1, 24, 0, 0, 2835, 2835, 0, 0)
        bombs = {
            "20000x20000 PNG": (png(20000, 20000, rows=1), "pixel limit"),
            "20000x20000 BMP": (b"BM" + struct.pack("<IHHI", 70, 0, 0, 54) + bmp_header + b"\0" * 16, "pixel limit"),
            "zTXt of 8 MiB": (png(101, 40, [ztxt(8 * mib)]), "zTXt chunk inflates"),
            "iCCP of 8 MiB": (png(101, 40, [iccp(8 * mib)]), "iCCP chunk inflates"),
            "iTXt of 8 MiB": (png(101, 40, [itxt(8 * mib)]), "iTXt chunk inflates"),
            "three zTXt of 0.5 MiB": (png(101, 40, [ztxt(mib // 2)] * 3), "metadata limit"),
        }
        for name, (body, expect) in bombs.items():
            assert len(body) < 64 << 10, name  # tiny on the wire
            t0 = time.monotonic()
            r = httpx.post(classify, content=body, timeout=30)
            assert r.status_code == 400 and expect in r.json()["error"], (name, r.status_code, r.text[:200])
            assert time.monotonic() - t0 < 2, name
        assert httpx.post(classify, content=png(101, 40)).status_code == 200  # still serving


def test_error_messages_echo_only_a_bounded_prefix(server, image_run):
    url, _ = server
    marker = "Z" * 5000
    for path in (f"/v2/models/{marker}", f"/v2/models/{marker}/config",
                 f"/v2/models/served/versions/{marker}/config"):
        r = httpx.get(url + path)
        assert r.status_code == 404 and len(r.json()["error"]) < 200 and "Z" * 100 not in r.text
    r = httpx.post(f"{url}/v1/classify", content=b"RIFF" + marker.encode() * 100)
    assert r.status_code == 400 and len(r.json()["error"]) < 250
    with running_server(image_run) as (url2, _):
        r = httpx.post(f"{url2}/v1/classify", content=b"GIF89a" + marker.encode() * 100)
        assert r.status_code == 400 and len(r.json()["error"]) <= 203 and "Z" * 100 not in r.text


# ---------------------------------------------------------------- slow and oversized senders

def test_slow_senders_header_cap_and_connection_cap(served_run):
    limits = {"header_timeout_s": 1.0, "body_timeout_s": 1.0, "max_header_bytes": 4096, "max_connections": 3}
    with running_server(served_run, **limits) as (url, _):
        # a connection that never sends: closed after the header deadline, no response
        s = connect(url)
        raw, took = read_until_closed(s)
        assert raw == b"" and 0.8 < took < 3
        s.close()
        # headers dripping (slowloris): 408 and closed
        s = connect(url)
        s.sendall(b"POST /v2/models/served/infer HTTP/1.1\r\nHost: x\r\n")
        time.sleep(0.3)
        s.sendall(b"X-Slow: 1\r\n")
        raw, took = read_until_closed(s)
        assert status_of(raw) == 408 and "headers not received" in json_body(raw)["error"] and took < 3
        s.close()
        # a body that stalls: 408 from the body deadline, and the connection closes
        s = connect(url)
        s.sendall(b"POST /v2/models/served/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 5000\r\n\r\n" + json.dumps(BODY).encode()[:100])
        raw, took = read_until_closed(s)
        assert status_of(raw) == 408 and "body not received within 1 s" in json_body(raw)["error"] and took < 3
        s.close()
        # headers past the cap: 431 and closed, whether sent at once or dripped
        for pieces in ([b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n"],
                       [b"GET /v2 HTTP/1.1\r\nX-Big: "] + [b"a" * 1000] * 6):
            s = connect(url)
            for p in pieces:
                s.sendall(p)
            raw, _ = read_until_closed(s)
            assert status_of(raw) == 431 and "exceed 4096 bytes" in json_body(raw)["error"]
            s.close()
        assert httpx.get(f"{url}/v2", headers={"X-Fine": "a" * 2000}).status_code == 200
        # three open connections (slowloris each) fill the cap: a request on a fourth gets 503, but
        # health probes still get through (an overloaded server must not be restarted by its probe) ...
        held = [connect(url) for _ in range(3)]
        for h in held:
            h.sendall(b"GET /v2 HTTP/1.1\r\n")
        time.sleep(0.1)
        for path, expect in (("/v2", 503), ("/v2/health/live", 200)):
            s = connect(url)
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            raw, _ = read_until_closed(s)
            s.close()
            assert status_of(raw) == expect, path
            if expect == 503:
                assert b"retry-after: 1" in raw.lower() and "connection limit" in json_body(raw)["error"]
        # ... until the header deadline frees them
        for h in held:
            assert status_of(read_until_closed(h)[0]) == 408
            h.close()
        assert httpx.get(f"{url}/v2").status_code == 200


BIG = 50_000_000  # bytes: far above the 16 MiB body limit, under the 64 MiB discard bound
INFER_HEAD = b"POST /v2/models/served/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


def send_body(s: socket.socket, total: int, chunked: bool, piece: int = 1 << 20) -> int:
    """Sends ``total`` body bytes (as 1 MiB chunks if ``chunked``); returns how many went out before an error."""
    sent, block = 0, b" " * piece
    try:
        while sent < total:
            n = min(piece, total - sent)
            s.sendall(b"%x\r\n%s\r\n" % (n, block[:n]) if chunked else block[:n])
            sent += n
        if chunked:
            s.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_oversized_body_gets_a_readable_413_while_the_client_still_sends(server, chunked):
    url, _ = server
    s = connect(url)
    s.settimeout(30)
    framing = b"Transfer-Encoding: chunked\r\n" if chunked else b"Content-Length: %d\r\n" % BIG
    s.sendall(INFER_HEAD + framing + b"\r\n")
    t0 = time.monotonic()
    assert send_body(s, BIG, chunked) == BIG  # every byte accepted: the server read (and dropped) the rest
    raw, _ = read_until_closed(s, 10)
    s.close()
    assert status_of(raw) == 413 and b"connection: close" in raw.lower()
    error = json_body(raw)["error"]
    assert "16777216-byte limit" in error
    assert (f"body of {BIG} bytes" in error) if not chunked else ("bytes received so far" in error)
    assert time.monotonic() - t0 < 20
    # a library client that writes the whole body before it reads: it reads the 413, no connection reset
    body = b" " * BIG
    r = httpx.post(f"{url}/v2/models/served/infer", content=iter([body[i : i + (1 << 20)] for i in
                                                                   range(0, BIG, 1 << 20)]) if chunked else body,
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413 and "16777216-byte limit" in r.json()["error"]
    assert httpx.post(f"{url}/v2/models/served/infer", json=BODY).status_code == 200  # the server is fine


def test_body_beyond_the_discard_bound_closes_after_the_413(served_run):
    with running_server(served_run, max_body_bytes=1 << 20, max_discard_bytes=1 << 20) as (url, _):
        s = connect(url)
        s.settimeout(10)
        s.sendall(INFER_HEAD + b"Content-Length: %d\r\n\r\n" % BIG)
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(read_until_closed(s, 10)[0]))
        reader.start()  # a client that reads while it sends
        sent = send_body(s, BIG, chunked=False)
        reader.join(15)
        s.close()
        # the server stopped reading after ~1 MiB of discard and closed: the sender could not finish
        # (its last writes were reset), but the 413 was written first and the reading client has it
        assert sent < BIG
        assert status_of(got[0]) == 413 and f"body of {BIG} bytes exceeds the 1048576-byte limit" in \
            json_body(got[0])["error"]
        assert httpx.post(f"{url}/v2/models/served/infer", json=BODY).status_code == 200


# ---------------------------------------------------------------- supervision

class Fatal(BaseException):
    """Not an Exception: what kills a task that only catches Exception."""


class DiesOnce:
    def __init__(self, inner):
        self.inner = inner

    def __call__(self, x):
        raise Fatal("the runtime took the batcher down")


class Hangs:
    def __init__(self, inner):
        self.inner, self.release, self.calls = inner, threading.Event(), 0

    def __call__(self, x):
        self.calls += 1
        if self.calls == 1:
            self.release.wait(30)
        return self.inner(x)


def test_dead_batcher_answers_503_turns_unready_and_logs_the_traceback(served_run, caplog):
    caplog.set_level(logging.ERROR, logger="fdkd.serve")
    with running_server(served_run, DiesOnce) as (url, _):
        r = httpx.post(f"{url}/v2/models/served/infer", json=BODY, timeout=10)
        assert r.status_code == 503 and r.headers["retry-after"] and "batcher task died: Fatal" in r.json()["error"]
        assert "Traceback" not in r.text and "took the batcher down" not in r.text
        ready = httpx.get(f"{url}/v2/health/ready")
        assert ready.status_code == 503 and "batcher task died" in ready.json()["error"]
        assert httpx.get(f"{url}/v2/models/served/ready").status_code == 503
        page = httpx.get(f"{url}/v1/model")  # the page's model info agrees with readiness
        assert page.status_code == 503 and page.headers["retry-after"] == "1" and "batcher task died" in page.text
        assert httpx.get(f"{url}/v2/health/live").status_code == 200
        t0 = time.monotonic()
        again = httpx.post(f"{url}/v1/classify", content=write_wav(np.zeros(16000), 16000), timeout=10)
        assert again.status_code == 503 and time.monotonic() - t0 < 1
        text = httpx.get(f"{url}/metrics").text
        assert metric(text, "fdkd_requests_total", reason="batcher_down") == 2
    downs = [r for r in caplog.records if "batcher_down" in r.getMessage()]
    assert downs and downs[0].exc_info and downs[0].exc_info[0] is Fatal
    assert "took the batcher down" in caplog.text and "Traceback" in caplog.text


def test_hung_runtime_answers_503_turns_unready_then_recovers(served_run):
    holder = {}

    def wrap(rt):
        holder["rt"] = Hangs(rt)
        return holder["rt"]

    with running_server(served_run, wrap, batch_timeout_s=0.5) as (url, _):
        infer = f"{url}/v2/models/served/infer"
        t0 = time.monotonic()
        r = httpx.post(infer, json=BODY, timeout=10)
        assert r.status_code == 503 and "runtime hung" in r.json()["error"] and time.monotonic() - t0 < 3
        ready = httpx.get(f"{url}/v2/health/ready")
        assert ready.status_code == 503 and "runtime hung" in ready.json()["error"]
        t0 = time.monotonic()
        assert httpx.post(infer, json=BODY, timeout=10).status_code == 503 and time.monotonic() - t0 < 1
        holder["rt"].release.set()
        deadline = time.monotonic() + 5
        while httpx.get(f"{url}/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "never recovered"
            time.sleep(0.05)
        assert httpx.post(infer, json=BODY, timeout=10).status_code == 200


# ---------------------------------------------------------------- drain (real processes)

def _in_flight(url: str, results: list) -> threading.Thread:
    def call():
        try:
            results.append(httpx.post(f"{url}/v2/models/served/infer", json=BODY, timeout=60).status_code)
        except httpx.TransportError as e:
            results.append(type(e).__name__)

    t = threading.Thread(target=call)
    t.start()
    deadline = time.time() + 10
    while metric(httpx.get(f"{url}/metrics").text, "fdkd_pending_requests") < 1:
        assert time.time() < deadline
        time.sleep(0.02)
    return t


def test_second_sigterm_exits_at_once(served_run):
    proc, url = start_fdkd_serve(served_run, "--drain-seconds", "20", env={"FDKD_SERVE_DEBUG_DELAY_MS": "30000"})
    try:
        results = []
        t = _in_flight(url, results)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert proc.poll() is None  # draining: the batch has 30 s to go
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        assert time.monotonic() - t0 < 1.5 and proc.returncode == 1
        t.join(10)
        assert results == [503]  # answered before the exit, not dropped
        logs = proc.stderr.read()
        assert '"exit_now"' in logs and "batcher_down" not in logs and "Traceback" not in logs
    finally:
        proc.kill()


def test_drain_is_bounded_even_with_a_hung_runtime_and_the_default_fits_kubernetes(served_run):
    default = ServeSettings.model_fields["drain_seconds"].default
    assert default + SHUTDOWN_MARGIN_SECONDS <= K8S_GRACE_SECONDS
    drain = 1.5
    proc, url = start_fdkd_serve(served_run, "--drain-seconds", str(drain),
                                 env={"FDKD_SERVE_DEBUG_DELAY_MS": "60000", "FDKD_SERVE_BATCH_TIMEOUT_S": "120"})
    try:
        results = []
        t = _in_flight(url, results)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(drain + SHUTDOWN_MARGIN_SECONDS + 5)
        took = time.monotonic() - t0
        t.join(10)
        assert proc.returncode == 0 and took <= drain + SHUTDOWN_MARGIN_SECONDS, took
        assert results == [503]  # answered (shutting down), not dropped
        logs = proc.stderr.read()
        assert '"drain_timeout"' in logs and "Traceback" not in logs
    finally:
        proc.kill()
