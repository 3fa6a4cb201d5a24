"""uvicorn's httptools protocol, guarded against slow and oversized senders.

uvicorn bounds neither the time a client may take to send its request headers nor their size
(httptools has no header limit; ``h11_max_incomplete_event_size`` only applies to the slower h11
protocol). :func:`guarded_protocol` returns a subclass that, per connection:

- closes a connection that sent nothing within ``header_timeout_s`` of opening, and answers 408
  and closes when a request's headers are still incomplete ``header_timeout_s`` after its first
  byte (slowloris);
- answers 431 and closes once a request's line and headers pass ``max_header_bytes``, before
  parsing further (nothing past the cap is buffered);
- after a response sent before the request body was fully received (a 401, 413 or 408), reads and
  discards the rest of the body, at most ``max_discard_bytes`` of it and for at most
  ``discard_timeout_s``, then closes. Closing at once would leave the client's unsent body unread:
  the kernel answers it with a reset, and a client still sending sees "connection reset" instead of
  the response. While discarding, the write side is shut (FIN after the response), so a client
  reading to the end sees it end; past either bound the connection is closed anyway (a client still
  sending then may see a reset: the response was written first, and one that reads while it sends
  has it), so a slow or endless sender cannot keep the connection;
- answers a request 503 (JSON, Retry-After, and close) while more than ``max_connections``
  connections are open, this one included; health probes (``/v2/health/...``) are exempt, so an
  overloaded server is not restarted by its liveness probe. (uvicorn's ``limit_concurrency`` does
  the same in plain text and without the exemption; it stays off.)

The body read deadline itself is ASGI-level (``fdkd.serving.middleware.read_body``).
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


class _CloseAfterDiscard:
    """The request cycle's view of the transport: its ``close()`` after an early response discards first."""

    def __init__(self, transport, protocol) -> None:
        self._transport, self._protocol = transport, protocol

    def close(self) -> None:
        self._protocol._close_or_discard()

    def __getattr__(self, name):
        return getattr(self._transport, name)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout_s = 10.0
    max_header_bytes = 32 << 10
    max_connections = 512
    max_discard_bytes = 64 << 20
    discard_timeout_s = 30.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_bytes = 0
        self._awaiting_headers = True
        self._refused = False
        self._silent = True  # nothing received yet
        self._feeding = 0  # length of the chunk being parsed
        self._discarding = False  # answered early: the rest of the request body is read and dropped
        self._discard_left = 0
        self._discard_timer = None
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._on_header_timeout)

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        self._cancel_discard_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._discarding:
            self._discard(data)
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
        else:
            super().on_headers_complete()
        if self.cycle is not None and not isinstance(self.cycle.transport, _CloseAfterDiscard):
            self.cycle.transport = _CloseAfterDiscard(self.transport, self)

    def on_message_complete(self) -> None:
        if self._discarding:  # the discarded body ended: everything the client sent was read, close cleanly
            self._end_discard("body discarded")
            raise _Refused  # stops the parser: nothing after this request is served
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        if self._discarding:  # a malformed rest of a body already answered: just close
            self._end_discard("malformed body while discarding")
        elif not self._refused:  # a refusal already answered and closed
            super().send_400_response(msg)

    def on_response_complete(self) -> None:
        if self.cycle is not None and self.cycle.more_body and not self.transport.is_closing():
            self._start_discard()  # answered before its body was read: drop the rest (bounded), then close
        super().on_response_complete()
        if self._discarding:
            self._unset_keepalive_if_required()  # the discard has its own deadline

    # --- the rest of an early-answered body: read and dropped, bounded in bytes and time ---
    def _close_or_discard(self) -> None:
        """The cycle closes the connection after its response: discard first if the body is still arriving."""
        cycle = self.cycle
        if cycle is not None and cycle.response_complete and cycle.more_body and not cycle.disconnected:
            self._start_discard()
        elif not self._discarding:
            self.transport.close()

    def _start_discard(self) -> None:
        if self._discarding or self.transport.is_closing():
            return
        self._discarding = True
        self._discard_left = self.max_discard_bytes
        if self.cycle is not None:
            self.cycle.body = bytearray()  # what was buffered for the app is not needed any more
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the response is all there is: the client may stop reading
        self._discard_timer = self.loop.call_later(self.discard_timeout_s, self._end_discard,
                                                   f"body still arriving after {self.discard_timeout_s:g} s")
        self.flow.resume_reading()

    def _discard(self, data: bytes) -> None:
        self._discard_left -= len(data)
        if self._discard_left < 0:
            self._end_discard(f"more than {self.max_discard_bytes} bytes discarded")
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)  # to find where the body ends (Content-Length or the last chunk)
        except Exception:  # noqa: BLE001 - _Refused from on_message_complete, or a malformed rest
            if not self.transport.is_closing():
                self._end_discard("malformed body while discarding")

    def _end_discard(self, why: str) -> None:
        self._cancel_discard_timer()
        self._refused = True  # nothing more is parsed or served on this connection
        if not self.transport.is_closing():
            log.debug(json.dumps({"event": "discard_end", "reason": why}))
            self.transport.close()

    def _cancel_discard_timer(self) -> None:
        if self._discard_timer is not None:
            self._discard_timer.cancel()
            self._discard_timer = None

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


def guarded_protocol(header_timeout_s: float, max_header_bytes: int, max_connections: int = 512,
                     max_discard_bytes: int = 64 << 20, discard_timeout_s: float = 30.0,
                     ) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)``, with these limits."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,),
                {"header_timeout_s": header_timeout_s, "max_header_bytes": max_header_bytes,
                 "max_connections": max_connections, "max_discard_bytes": max_discard_bytes,
                 "discard_timeout_s": discard_timeout_s})
