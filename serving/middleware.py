"""Pure ASGI middleware: body size cap (Content-Length and chunked), API key, request id + JSON log.

Pure ASGI (not BaseHTTPMiddleware) so the body cap sees every chunk before the app does and
nothing is buffered past the limit.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid

log = logging.getLogger("fdkd.serve")

EXEMPT = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics",
                    "/", "/ui/page.js", "/ui/page.css"})  # the page itself: its calls need the key


async def _send_json(send, status: int, payload: dict, headers: list | None = None) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Reads the whole body up to ``limit`` bytes, then replays it; beyond the limit: 413."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                if int(declared) > self.limit:
                    return await _send_json(send, 413, {"error": f"body of {int(declared)} bytes exceeds the "
                                                                 f"{self.limit}-byte limit"})
            except ValueError:
                return await _send_json(send, 400, {"error": "invalid Content-Length"})
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return None
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await _send_json(send, 413, {"error": f"body exceeds the {self.limit}-byte limit"})
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later: the disconnect, for is_disconnected()

        return await self.app(scope, replay, send)


class ApiKey:
    """``Authorization: Bearer KEY`` or ``X-API-Key: KEY``, compared in constant time; health and metrics exempt."""

    def __init__(self, app, key: str | None) -> None:
        self.app, self.key = app, key.encode() if key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.key is None or scope["path"] in EXEMPT:
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        given = headers.get(b"x-api-key")
        auth = headers.get(b"authorization", b"")
        if given is None and auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        if given is None or not hmac.compare_digest(given, self.key):
            return await _send_json(send, 401, {"error": "missing or invalid API key"},
                                    [(b"www-authenticate", b"Bearer")])
        return await self.app(scope, receive, send)


class RequestLog:
    """Request ids and one JSON log line per request (method, path, status, duration, rows; never payloads or keys).

    A request id exists only where the client sent one (``X-Request-ID``, or a V2 ``id``, which wins) and
    is then echoed back; none is made up for the response. Successful batched inference requests without
    a client id are not logged one by one (the batcher logs each batch: requests, rows, times) unless the
    level is DEBUG; every error, and every request the client named, gets its own line.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = ""
        for k, v in scope["headers"]:
            if k == b"x-request-id":
                rid = v.decode("latin-1")[:128]
        state = scope.setdefault("state", {})
        started = time.perf_counter()
        status = 500

        async def send_with_id(msg):
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
                final = state.get("v2_id") or rid
                if final:
                    msg = dict(msg, headers=[*msg.get("headers", []), (b"x-request-id",
                                                                       final.encode("latin-1", "replace"))])
            await send(msg)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            named = state.get("v2_id") or rid
            if status >= 400 or named or not state.get("batched") or log.isEnabledFor(logging.DEBUG):
                log.info(json.dumps({"event": "request", "request_id": named or uuid.uuid4().hex,
                                     "method": scope["method"], "path": scope["path"], "status": status,
                                     "duration_ms": round(1000 * (time.perf_counter() - started), 3),
                                     "rows": state.get("rows")}))
