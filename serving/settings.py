"""Server settings: environment variables ``FDKD_SERVE_*`` and ``fdkd serve`` flags (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FDKD_SERVE_", extra="forbid")

    run_dir: Path
    artifact: str = "auto"  # a file name in the run directory, an engine path, or "auto"
    engine_dir: Path | None = None  # where the container keeps engines built on first start
    model_name: str | None = None  # default: the run's name
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: SecretStr | None = None
    max_batch: int = Field(64, ge=1)
    max_queue: int = Field(256, ge=1)  # requests waiting for the batcher; beyond: 503
    max_queue_delay_ms: float = Field(0.0, ge=0)  # wait this long after the oldest request for more rows
    queue_timeout_ms: float = Field(10_000.0, gt=0)  # a request still queued after this: 503
    max_body_bytes: int = Field(16 << 20, ge=1024)
    max_json_depth: int = Field(32, ge=2)
    cors_origins: list[str] = []
    drain_seconds: float = Field(30.0, ge=0)
    allow_unvalidated: bool = False
    threads: int | None = Field(None, ge=1)
    log_level: str = "info"
    debug_delay_ms: float = Field(0.0, ge=0)  # artificial compute time per batch (drain/backpressure tests)
    # NaN/Inf input values (binary tensors, FP32 overflow): "reject" with 400, or "accept" as Triton does
    nonfinite_inputs: Literal["reject", "accept"] = "reject"
    hot_path: bool = True  # the bare ASGI inference routes (False: through FastAPI, for comparison)
    http: Literal["uvicorn", "granian"] = "uvicorn"  # the HTTP server (granian: faster, see serving.granian_server)
    workers: int = Field(1, ge=1)  # granian only: processes sharing the port, each with its model and batcher
