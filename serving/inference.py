"""The inference hot path: ``POST /v2/models/{m}[/versions/{v}]/infer`` and ``/v1/classify``.

``Inference`` holds the request logic (decode, check, batcher, reply) against plain values
(headers dict, body bytes) and returns ``(status, body, headers)``. Two adapters call it:

- ``HotPath``, a bare ASGI handler that ``fdkd.serving.app.FdkdApp`` calls for these requests behind the
  app's own pure-ASGI middleware (body cap, API key, CORS, request log: the same classes, built
  from the same list) but without FastAPI's stack: no routing table, no dependency injection, no
  Request or Response objects, headers read once, the batcher awaited directly. Everything else
  (and a multipart classify upload) goes to FastAPI.
- the FastAPI routes of the same paths in ``fdkd.serving.app``, which document the API in
  /openapi.json and answer when the hot path is switched off (``hot_path=False``, the bench's
  comparison).

A classify upload over ``PREPROCESS_INLINE_BYTES`` is decoded (image decode, WAV parse and checks)
in a worker thread so the event loop keeps serving; smaller ones stay on the loop (cheaper than a
thread hop). A WAV's log-mel is not computed here: the clip goes to the batcher as a raw row, and
the batcher computes the log-mel of every clip of a batch in one vectorized call, in its runtime
thread. Both adapters share this, the FastAPI route included.

Disconnects: a request waiting on the batcher is not polled; one watcher task looks every
0.25 s at requests that have waited longer than that and cancels those whose client went away
(the batcher then drops them before dispatch; they count as ``disconnected``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time

import anyio
import numpy as np
import orjson

from fdkd.serving import protocol, upload
from fdkd.serving.batcher import RejectedRow, Unavailable
from fdkd.serving.errors import RETRY_AFTER, ApiError

log = logging.getLogger("fdkd.serve")
INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
JSON = [(b"content-type", b"application/json")]
WATCH_EVERY_S = 0.25
PREPROCESS_INLINE_BYTES = 64 << 10  # bigger uploads are decoded in a worker thread, off the event loop
MAX_ERROR_CHARS = 512  # an error message never carries more than this (client text inside is cut shorter)


class Inference:
    """The infer / classify logic of one app (its ``State``: settings, model, batcher, metrics)."""

    def __init__(self, state) -> None:
        self.state = state
        self._counters: dict[tuple[str, str, str], object] = {}
        self._durations: dict[str, object] = {}
        self._waiting: dict[asyncio.Task, tuple[object, float]] = {}
        self._gone: set[asyncio.Task] = set()
        self._watcher: asyncio.Task | None = None

    # --- metrics: label children bound once ---
    def _count(self, endpoint: str, outcome: str, reason: str, seconds: float) -> None:
        key = (endpoint, outcome, reason)
        c = self._counters.get(key)
        if c is None:
            c = self._counters[key] = self.state.metrics.requests.labels(*key)
        c.inc()
        h = self._durations.get(endpoint)
        if h is None:
            h = self._durations[endpoint] = self.state.metrics.request_duration.labels(endpoint)
        h.observe(seconds)

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    # --- entry points: (status, body, extra headers); never raise ---
    async def infer(self, model_name: str, version: str | None, headers: dict, body: bytes, is_gone,
                    scope_state: dict | None = None) -> tuple[int, bytes, list]:
        return await self._counted("infer", self._infer(model_name, version, headers, body, is_gone, scope_state))

    async def classify(self, headers: dict, body: bytes, is_gone, scope_state: dict | None = None):
        return await self._counted("classify", self._classify(headers, body, is_gone, scope_state))

    async def _counted(self, endpoint: str, work) -> tuple[int, bytes, list]:
        started = time.perf_counter()
        try:
            reply = await work
            self._count(endpoint, "success", "ok", time.perf_counter() - started)
            return reply
        except ApiError as e:
            self._count(endpoint, "failure", e.reason, time.perf_counter() - started)
            return error_reply(e.status, e.message, e.headers)
        except Exception:
            log.exception("unhandled error")
            self._count(endpoint, "failure", "internal", time.perf_counter() - started)
            return error_reply(500, "internal server error")

    def model(self, name: str | None = None, version: str | None = None):
        """The served model, if ready and ``name``/``version`` (when given) are its own; else ApiError 503/404."""
        st = self.state
        if not st.ready or st.model is None:
            raise ApiError(503, f"model not ready: {st.not_ready_reason}", "not_ready", RETRY_AFTER)
        m = st.model
        if name is not None and name != m.name:
            raise ApiError(404, f"unknown model {protocol.show(name)}; this server serves {m.name!r}", "unknown_model")
        if version not in (None, m.version):
            raise ApiError(404, f"model {m.name!r} has no version {protocol.show(version)}", "unknown_version")
        return m

    def _body(self, headers: dict, body: bytes) -> bytes:
        enc = headers.get(b"content-encoding")
        if not enc:
            return body
        try:
            return protocol.decompress(body, enc.decode("latin-1"), self.state.settings.max_body_bytes)
        except protocol.BodyTooLarge as e:
            raise ApiError(413, str(e), "too_large") from None
        except protocol.UnsupportedEncoding as e:
            raise ApiError(415, str(e), "bad_request") from None
        except protocol.BadRequest as e:
            raise ApiError(400, str(e), "bad_request") from None

    async def _infer(self, model_name, version, headers, body, is_gone, scope_state):
        m = self.model(model_name, version)
        body = self._body(headers, body)
        s = self.state.settings
        hlen = headers.get(b"inference-header-content-length")
        hlen = hlen.decode("latin-1") if hlen is not None else None
        prescanned = len(body) > protocol.PRESCAN_BYTES
        try:
            if prescanned:  # large: the structure caps, a slice at a time, letting the event loop run between
                for _ in protocol.prescan(protocol.json_part(body, hlen), s.max_batch * math.prod(m.input_shape)):
                    await asyncio.sleep(0)
            req = protocol.parse_infer(body, hlen,
                                       headers.get(b"content-type", b"").decode("latin-1"), input_name=m.input_name,
                                       input_shape=m.input_shape, output_names=[m.output_name],
                                       max_batch=s.max_batch, max_depth=s.max_json_depth,
                                       nonfinite=s.nonfinite_inputs, prescanned=prescanned)
        except protocol.BadRequest as e:
            raise ApiError(400, str(e), "bad_request") from None
        if scope_state is not None and req.id is not None:
            scope_state["v2_id"] = req.id  # validated: bounded, no control characters
        logits = await self._rows(req.x, is_gone, scope_state)
        payload, head_len = protocol.build_response(m.name, m.version, req.id, {m.output_name: logits},
                                                    req.outputs, m.class_names)
        if head_len is None:
            return 200, payload, JSON
        return 200, payload, [(b"content-type", b"application/octet-stream"),
                              (b"inference-header-content-length", str(head_len).encode())]

    async def _classify(self, headers, body, is_gone, scope_state):
        m = self.model()
        body = self._body(headers, body)
        try:  # decoding up to 16.8 Mpx or a 16 MB WAV would stall every other request: a thread, past a small size
            x, raw = upload.prepare(m, body) if len(body) <= PREPROCESS_INLINE_BYTES else \
                await asyncio.to_thread(upload.prepare, m, body)
        except protocol.BadRequest as e:
            raise ApiError(400, str(e), "bad_request") from None
        logits = (await self._rows(x, is_gone, scope_state, raw))[0].astype(np.float64)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        k = int(p.argmax())
        reply = {"class_name": m.class_names[k], "class_index": k,
                 "probabilities": dict(zip(m.class_names, p.tolist(), strict=True)),
                 "model": m.name, "artifact": m.artifact}
        return 200, orjson.dumps(reply), JSON

    async def _rows(self, x: np.ndarray, is_gone, scope_state, raw: bool = False) -> np.ndarray:
        """Through the batcher (``raw``: audio clips, featurized there a batch at a time); a client gone
        before dispatch is dropped (see the watcher)."""
        st = self.state
        if st.draining:
            raise ApiError(503, "server is draining", "draining", RETRY_AFTER)
        task = asyncio.current_task()
        self._waiting[task] = (is_gone, time.perf_counter())
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())
        try:
            logits, queued = await (st.batcher.submit(x, raw=True) if raw else st.batcher.submit(x))
        except asyncio.CancelledError:
            if task not in self._gone:
                raise
            self._gone.discard(task)
            task.uncancel()
            raise ApiError(499, "client disconnected", "disconnected") from None
        except RejectedRow as e:
            raise ApiError(400, str(e), "bad_request") from None
        except Unavailable as e:  # queue full or timed out, runtime hung, batcher down, shutting down
            raise ApiError(503, str(e), e.reason, RETRY_AFTER) from None
        except ApiError:
            raise
        except Exception:
            log.exception("runtime failed")
            raise ApiError(500, "inference failed in the runtime", "runtime_error") from None
        finally:
            self._waiting.pop(task, None)
        st.metrics.queue.observe(queued)
        if scope_state is not None:
            scope_state["rows"] = len(x)
            scope_state["batched"] = True
        return logits

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_EVERY_S)
            now = time.perf_counter()
            for task, (is_gone, since) in list(self._waiting.items()):
                if now - since >= WATCH_EVERY_S and is_gone is not None and await is_gone() \
                        and task in self._waiting:
                    self._gone.add(task)
                    task.cancel()


def error_reply(status: int, message: str, headers: dict | None = None) -> tuple[int, bytes, list]:
    if len(message) > MAX_ERROR_CHARS:
        message = message[:MAX_ERROR_CHARS] + "..."
    extra = [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
    return status, orjson.dumps({"error": message}), JSON + extra


def is_multipart(content_type: bytes) -> bool:
    """A form upload (``multipart/form-data``, any case): FastAPI's classify route parses it; the hot path does not."""
    return content_type[:19].lower() == b"multipart/form-data"


def receive_gone(receive):
    """An ``is_gone()`` for an ASGI ``receive``: True once the client has disconnected (never waits)."""

    async def gone() -> bool:
        with anyio.CancelScope() as cs:
            cs.cancel()
            msg = await receive()
            return msg.get("type") == "http.disconnect"
        return False

    return gone


class HotPath:
    """Bare ASGI handler of the two inference routes, for the requests ``takes`` says it answers."""

    def __init__(self, inference: Inference) -> None:
        self.inference = inference

    def takes(self, scope) -> bool:
        """POST to an infer route or /v1/classify (multipart uploads excepted), with the hot path on."""
        if scope["type"] != "http" or scope["method"] != "POST" or not self.inference.state.settings.hot_path:
            return False
        path = scope["path"]
        if path == "/v1/classify":
            # a multipart upload needs form parsing: FastAPI's route
            return not any(k == b"content-type" and is_multipart(v) for k, v in scope["headers"])
        return path.startswith("/v2/models/") and path.endswith("/infer") and INFER_PATH.fullmatch(path) is not None

    async def __call__(self, scope, receive, send):
        headers = {}
        for k, v in scope["headers"]:  # the headers, read once (ASGI servers give the names lower-cased)
            headers[k] = v
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return None
        body = msg.get("body", b"")
        if msg.get("more_body"):
            chunks = [body]
            while msg.get("more_body"):
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return None
                chunks.append(msg.get("body", b""))
            body = b"".join(chunks)
        state = scope.setdefault("state", {})
        path = scope["path"]
        if path == "/v1/classify":
            status, payload, extra = await self.inference.classify(headers, body, receive_gone(receive), state)
        else:
            match = INFER_PATH.fullmatch(path)
            status, payload, extra = await self.inference.infer(match.group(1), match.group(2), headers, body,
                                                                receive_gone(receive), state)
        await send({"type": "http.response.start", "status": status,
                    "headers": [*extra, (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})
