"""Pure ASGI middleware: body size cap and read deadline, API key, request id + JSON log.

Pure ASGI (not BaseHTTPMiddleware) so the body cap sees every chunk before the app does and
nothing is buffered past the limit. ``read_body`` is the one body reader (a route that reads
``receive`` itself should use it): at most ``limit`` bytes (else 413), all of them within
``timeout_s`` of the first read (else 408: a slow sender cannot hold a request open). Both
answers close the connection, since the rest of the body was never read.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid

from starlette.routing import Match

from fdkd.serving.webpage import PUBLIC_PATHS

log = logging.getLogger("fdkd.serve")

# health, metrics and the page's own files (its calls need the key); webpage imports nothing from here
EXEMPT = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"}) | PUBLIC_PATHS
CLOSE = [(b"connection", b"close")]


class BodyError(Exception):
    """The body was refused while being read: ``status`` (408 or 413) and a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_body(receive, limit: int, timeout_s: float, declared: bytes | None = None) -> bytes | None:
    """The whole request body, or None if the client disconnected; raises :class:`BodyError`."""
    if declared is not None:
        if not declared.isdigit() or len(declared) > 20:
            raise BodyError(400, "invalid Content-Length")
        if int(declared) > limit:
            raise BodyError(413, f"body of {int(declared)} bytes exceeds the {limit}-byte limit")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return None
                chunk = msg.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise BodyError(413, f"body exceeds the {limit}-byte limit ({size} bytes received so far)")
                chunks.append(chunk)
                if not msg.get("more_body", False):
                    break
    except TimeoutError:
        raise BodyError(408, f"request body not received within {timeout_s:g} s ({size} bytes arrived)") from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send_json(send, status: int, payload: dict, headers: list | None = None) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Reads the whole body with :func:`read_body`, then replays it; too large: 413, too slow: 408."""

    def __init__(self, app, limit: int, timeout_s: float = 30.0) -> None:
        self.app, self.limit, self.timeout_s = app, limit, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
        try:
            body = await read_body(receive, self.limit, self.timeout_s, declared)
        except BodyError as e:
            return await _send_json(send, e.status, {"error": str(e)}, CLOSE)
        if body is None:
            return None
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later: the disconnect, for is_disconnected()

        return await self.app(scope, replay, send)


class ApiKey:
    """``Authorization: Bearer KEY`` or ``X-API-Key: KEY``, compared in constant time; health and metrics exempt.

    With ``routes`` (the app's), a request without a valid key whose path is a route that does not take its method
    goes on to the app, which answers 405 with ``Allow`` and runs nothing: the method is wrong whoever asks, and a
    client (or a conformance check) learns that, not a 401 it could never get past. Paths that are no route still
    get 401, so which paths exist is not told to a caller without the key.
    """

    def __init__(self, app, key: str | None, routes: list | None = None) -> None:
        if key is not None and not key.strip():
            raise ValueError("empty API key: a configuration error, not 'auth off' (pass None for no key)")
        self.app, self.key, self.routes = app, key.encode() if key is not None else None, routes or []

    def _wrong_method(self, scope) -> bool:
        """True when some route matches the path but none takes the method (Starlette's PARTIAL match)."""
        partial = False
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return False
            partial = partial or match is Match.PARTIAL
        return partial

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.key is None or scope["path"] in EXEMPT:
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        given = headers.get(b"x-api-key")
        auth = headers.get(b"authorization", b"")
        if given is None and auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        if given is None or not hmac.compare_digest(given, self.key):
            if self._wrong_method(scope):
                return await self.app(scope, receive, send)
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
