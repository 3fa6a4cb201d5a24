"""``fdkd serve --http granian``: the same app under Granian (a Rust HTTP server) instead of uvicorn.

Measured in ``python -m bench.serve.load`` (docs/results.md, section 4, generated from the raw records):
ahead of uvicorn at 32 clients on a busy 2-core machine, within noise of it on a quieter one;
``--workers 2`` adds most.
The settings travel to the worker processes as ``FDKD_SERVE_*`` variables (``fdkd.serving.asgi``
builds the app from them).

Differences from the default uvicorn server: on SIGTERM Granian stops accepting connections and
lets in-flight requests finish (its own graceful shutdown) instead of ``fdkd.serving.server``'s drain
(readiness 503 while queued work finishes); the connection and slow-sender limits configured for
uvicorn do not apply. Use it where throughput matters more than those. ``--workers N`` runs N
processes on the port, each with its own model copy and batcher (JSON decoding then uses every
core; each batcher sees only its share of the requests). Granian is the ``granian`` extra
(``pip install 'fdkd[granian]'``), not part of ``serve``: without it ``--http granian`` exits with
that instruction.
"""

from __future__ import annotations

import json
import os

from fdkd.serving.settings import ServeSettings

INSTALL_HINT = "--http granian needs Granian, which is not installed: pip install 'fdkd[granian]'"


def settings_env(settings: ServeSettings) -> dict[str, str]:
    """Every explicitly set field as its ``FDKD_SERVE_*`` variable (pydantic-settings reads them back)."""
    env = {}
    for name, value in settings.model_dump(exclude_unset=True).items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if isinstance(value, list | dict):
            value = json.dumps(value)
        env[f"FDKD_SERVE_{name.upper()}"] = str(value)
    return env


def serve_granian(settings: ServeSettings) -> None:
    try:
        from granian import Granian
    except ImportError:
        raise SystemExit(INSTALL_HINT) from None

    os.environ.update(settings_env(settings))
    Granian("fdkd.serving.asgi:app", address=settings.host, port=settings.port, interface="asgi",
            workers=settings.workers,
            loop="uvloop", log_enabled=False, workers_kill_timeout=max(1, int(settings.drain_seconds))).serve()
