"""Run the app under uvicorn with a graceful drain on SIGTERM/SIGINT.

On the first signal readiness turns 503 at once and new inference requests get 503; queued and
in-flight requests finish; when nothing is pending or ``drain_seconds`` have passed, whichever
comes first, what is still pending is answered 503, connections get at most 1 s to take their
responses, and the process exits. The default (20 s) plus that margin fits Kubernetes' 30 s
termination grace period. A second signal exits at once (status 1): no waiting for connections,
no lifespan shutdown; the runtime's thread is a daemon, so even a hung runtime cannot hold it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time

import uvicorn

from fdkd.serving.app import create_app
from fdkd.serving.http_guard import guarded_protocol
from fdkd.serving.settings import ServeSettings


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if msg.startswith("{"):
            return msg[:-1] + f', "level": "{record.levelname.lower()}", "ts": {record.created:.3f}}}'
        import json

        return json.dumps({"event": "log", "level": record.levelname.lower(), "ts": round(record.created, 3),
                           "message": msg})


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    root = logging.getLogger("fdkd")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def uvicorn_config(app, settings: ServeSettings, log_level: str = "warning") -> uvicorn.Config:
    """uvicorn with the connection limits of ``fdkd.serving.http_guard``: header deadline and size cap, and at most
    ``max_connections`` open connections served at once (a request on one more gets 503; health probes exempt)."""
    return uvicorn.Config(app, host=settings.host, port=settings.port, log_level=log_level, access_log=False,
                          http=guarded_protocol(settings.header_timeout_s, settings.max_header_bytes,
                                                settings.max_connections, settings.max_discard_bytes,
                                                settings.body_timeout_s),
                          timeout_keep_alive=5, timeout_graceful_shutdown=1, lifespan="on")


class DrainingServer(uvicorn.Server):
    """First SIGTERM/SIGINT: drain (see the module docstring). Second: exit at once."""

    def __init__(self, config: uvicorn.Config, state, drain_seconds: float) -> None:
        super().__init__(config)
        self.fdkd_state, self.drain_seconds = state, drain_seconds
        self._draining_task: asyncio.Task | None = None
        self.forced = False

    def handle_exit(self, sig, frame) -> None:
        # a signal handler interrupts the loop between bytecodes: only flags here, the work in the loop
        if self.forced:
            return
        if self._draining_task is not None or self.should_exit:  # second signal: no more waiting
            self.forced = True
            asyncio.get_event_loop().call_soon_threadsafe(self._exit_now, int(sig))
        elif self.fdkd_state.batcher is None:  # nothing to drain
            self.should_exit = True
        else:
            self.fdkd_state.draining = True
            self._draining_task = asyncio.get_event_loop().create_task(self._drain(int(sig)))

    def _exit_now(self, sig: int) -> None:
        """Pending requests answered 503 at once, 0.2 s for those answers to go out, then exit."""
        log = logging.getLogger("fdkd.serve")
        batcher = self.fdkd_state.batcher
        n = batcher.abort("server exiting now (second signal)") if batcher is not None else 0
        log.warning('{"event": "exit_now", "signal": %d, "aborted": %d}', sig, n)
        if self.should_exit:  # uvicorn's shutdown is already under way: stop its waiting
            self.force_exit = True
            if batcher is not None:
                batcher.mark_stopping()
        else:
            self.config.timeout_graceful_shutdown = 0.2
            self.should_exit = True

    async def _drain(self, sig: int) -> None:
        logging.getLogger("fdkd.serve").info('{"event": "draining", "signal": %d, "drain_seconds": %g}', sig,
                                             self.drain_seconds)
        batcher = self.fdkd_state.batcher
        deadline = time.monotonic() + self.drain_seconds
        while batcher.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if batcher.in_flight > 0:  # past the drain: answer what is left (503), do not drop it
            n = batcher.abort(f"server shut down before this request ran ({self.drain_seconds:g} s drain)")
            logging.getLogger("fdkd.serve").warning('{"event": "drain_timeout", "aborted": %d}', n)
        self.should_exit = True  # uvicorn then waits at most timeout_graceful_shutdown (1 s) for responses


def serve(settings: ServeSettings, runtime_override=None) -> None:
    """Serve until signalled; a forced exit (second signal) exits with status 1."""
    if settings.workers > 1 and settings.http != "granian":
        raise SystemExit("--workers needs --http granian (the uvicorn server runs one process, with the drain)")
    if settings.http == "granian" and runtime_override is None:
        from fdkd.serving.granian_server import serve_granian

        return serve_granian(settings)
    configure_logging(settings.log_level)
    app = create_app(settings, runtime_override)
    server = DrainingServer(uvicorn_config(app, settings), app.state.fdkd, settings.drain_seconds)
    server.run()
    if server.forced:
        sys.exit(1)
