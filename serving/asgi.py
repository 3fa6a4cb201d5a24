"""An importable ASGI app built from ``FDKD_SERVE_*`` environment variables, for other ASGI servers.

    FDKD_SERVE_RUN_DIR=runs/avdigits granian --interface asgi --loop uvloop fdkd.serving.asgi:app
    FDKD_SERVE_RUN_DIR=runs/avdigits uvicorn --workers 2 fdkd.serving.asgi:app

``fdkd serve`` (uvicorn, one process, graceful drain) is the default way to run the server.
``fdkd serve --http granian`` (``fdkd.serving.granian_server``) runs this module's ``app`` in each Granian
worker, with the settings passed as those variables; ``python -m bench.serve.load``'s HTTP-layer trial
uses it too. Several worker processes each load the model and run their own batcher.
"""

from __future__ import annotations

from fdkd.serving.app import create_app
from fdkd.serving.server import configure_logging
from fdkd.serving.settings import ServeSettings

_settings = ServeSettings()
configure_logging(_settings.log_level)
app = create_app(_settings)
