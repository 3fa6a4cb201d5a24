"""uvicorn's httptools protocol, guarded against slow and oversized senders.

uvicorn bounds neither the time a client may take to send its request headers nor their size
(httptools has no header limit; ``h11_max_incomplete_event_size`` only applies to the slower h11
protocol). :func:`guarded_protocol` returns a subclass that, per connection:

- closes a connection that sent nothing within ``header_timeout_s`` of opening, and answers 408
  and closes when a request's headers are still incomplete ``header_timeout_s`` after its first
  byte (slowloris);
- answers 431 and closes once a request's line and headers pass ``max_header_bytes``, before
  parsing further (nothing past the cap is buffered);
- closes the connection after a response sent before the request body was fully received (a 401,
  413 or 408), so a slow sender cannot keep it open by trickling the rest;
- answers a request 503 (JSON, Retry-After, and close) while more than ``max_connections``
  connections are open, this one included; health probes (``/v2/health/...``) are exempt, so an
  overloaded server is not restarted by its liveness probe. (uvicorn's ``limit_concurrency`` does
  the same in plain text and without the exemption; it stays off.)

The body read deadline itself is ASGI-level (``serving.middleware.read_body``).
"""

from __future__ import annotations

import json
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("fdkd.serve")
REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a refused request."""


async def _busy(scope, receive, send) -> None:
    """The ASGI app a request gets while the server is at its connection limit."""
    body = json.dumps({"error": "server at its connection limit; retry"}).encode()
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"retry-after", b"1"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout_s = 10.0
    max_header_bytes = 32 << 10
    max_connections = 512

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_bytes = 0
        self._awaiting_headers = True
        self._refused = False
        self._silent = True  # nothing received yet
        self._feeding = 0  # length of the chunk being parsed
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._on_header_timeout)

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._silent = False
        self._feeding = len(data)
        super().data_received(data)
        if self._awaiting_headers and not self._refused:  # a request's headers still incomplete after this chunk
            self._header_bytes += len(data)  # bytes since the request's first byte (counted after the feed)
            if self._header_bytes > self.max_header_bytes:
                self._refuse(431, f"request line and headers exceed {self.max_header_bytes} bytes")
            elif self._header_timer is None:  # armed only for requests that do not arrive in one piece
                self._header_timer = self.loop.call_later(self.header_timeout_s, self._on_header_timeout)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._awaiting_headers, self._header_bytes = True, 0

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._cancel_header_timer()
        if self._header_bytes + self._feeding > self.max_header_bytes:  # only then can they be over the cap
            size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
            if size > self.max_header_bytes:  # arrived in one piece: refuse before any app sees it
                self._refuse(431, f"request line and headers exceed {self.max_header_bytes} bytes")
                raise _Refused  # stops the parser; httptools reports it as a parser error, answered below
        if len(self.connections) > self.max_connections and not self.url.startswith(b"/v2/health/"):
            app, self.app = self.app, _busy  # uvicorn starts the request's task with self.app
            try:
                super().on_headers_complete()
            finally:
                self.app = app
            return
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # a refusal already answered and closed
            super().send_400_response(msg)

    def on_response_complete(self) -> None:
        if self.cycle is not None and self.cycle.more_body and not self.transport.is_closing():
            self.transport.close()  # answered before its body was read: the sender must not hold the connection
        super().on_response_complete()

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if not self._awaiting_headers or self.transport.is_closing():
            return
        if self._silent:  # sent nothing since it opened: just close
            self._refused = True
            self.transport.close()
            return
        self._refuse(408, f"request headers not received within {self.header_timeout_s:g} s")

    def _refuse(self, status: int, message: str) -> None:
        self._refused = True
        self._cancel_header_timer()
        log.info(json.dumps({"event": "refused", "status": status, "reason": message}))
        body = json.dumps({"error": message}).encode()
        head = (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n" % (status, REASONS[status], len(body)))
        self.transport.write(head + body)
        self.transport.close()


def guarded_protocol(header_timeout_s: float, max_header_bytes: int,
                     max_connections: int = 512) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)``, with these limits."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,),
                {"header_timeout_s": header_timeout_s, "max_header_bytes": max_header_bytes,
                 "max_connections": max_connections})
