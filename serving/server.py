"""Run the app under uvicorn with a graceful drain on SIGTERM/SIGINT.

On the first signal readiness turns 503 at once and new inference requests get 503; queued and
in-flight requests finish; the process exits when nothing is pending or ``drain_seconds`` have
passed, whichever comes first. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time

import uvicorn

from serving.app import create_app
from serving.settings import ServeSettings


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


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state, drain_seconds: float) -> None:
        super().__init__(config)
        self.fdkd_state, self.drain_seconds = state, drain_seconds
        self._draining_task: asyncio.Task | None = None

    def handle_exit(self, sig, frame) -> None:
        if self._draining_task is not None or self.fdkd_state.batcher is None:
            return super().handle_exit(sig, frame)  # second signal, or nothing to drain: exit now
        self.fdkd_state.draining = True
        logging.getLogger("fdkd.serve").info('{"event": "draining", "signal": %d}', int(sig))
        self._draining_task = asyncio.get_event_loop().create_task(self._drain())

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.drain_seconds
        while self.fdkd_state.batcher.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self.should_exit = True


def serve(settings: ServeSettings, runtime_override=None) -> None:
    if settings.workers > 1 and settings.http != "granian":
        raise SystemExit("--workers needs --http granian (the uvicorn server runs one process, with the drain)")
    if settings.http == "granian" and runtime_override is None:
        from serving.granian_server import serve_granian

        return serve_granian(settings)
    configure_logging(settings.log_level)
    app = create_app(settings, runtime_override)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=max(1, int(settings.drain_seconds)), lifespan="on")
    DrainingServer(config, app.state.fdkd, settings.drain_seconds).run()
