"""Server settings: environment variables ``FDKD_SERVE_*`` and ``fdkd serve`` flags (pydantic-settings).

An API key that is set but empty (``FDKD_SERVE_API_KEY=""``) is a configuration error, never
"auth off": leave the variable unset to serve without a key.

Off loopback a key is required: a server bound to anything but a loopback address (``--host 0.0.0.0``,
a LAN address, a host name) without ``FDKD_SERVE_API_KEY`` is a configuration error unless the user
opts out by name (``--insecure-no-api-key`` / ``FDKD_SERVE_INSECURE_NO_API_KEY=1``). Loopback
(127.0.0.0/8, ::1, ``localhost``) stays keyless by default: only this machine reaches it.

``python -m fdkd.serving.settings`` checks the ``FDKD_SERVE_*`` environment the same way and exits 2 with the
message (the container entrypoint runs it before building an engine, so a missing key fails in a second, not
after a build of minutes).
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

K8S_GRACE_SECONDS = 30.0  # Kubernetes' default terminationGracePeriodSeconds
SHUTDOWN_MARGIN_SECONDS = 2.0  # after the drain: answer what was cut off (503), close connections, stop the batcher
OPT_OUT_FLAG = "--insecure-no-api-key"
OPT_OUT_ENV = "FDKD_SERVE_INSECURE_NO_API_KEY"


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, ``localhost``); False for
    0.0.0.0 / :: (every interface), any other address, and any other host name (it may resolve anywhere)."""
    if host.strip().lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


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
    batch_timeout_s: float = Field(10.0, gt=0)  # a batch still running after this: runtime hung, 503, not ready
    max_body_bytes: int = Field(16 << 20, ge=1024)
    # after an early answer (413, 401, 408) the rest of the body is read and dropped, up to this, then the
    # connection closes: closing at once would reset a client still sending, which then never reads the answer
    max_discard_bytes: int = Field(64 << 20, ge=0)
    body_timeout_s: float = Field(30.0, gt=0)  # the whole body must arrive within this after the headers: else 408
    header_timeout_s: float = Field(10.0, gt=0)  # a request's headers must arrive within this: else 408 and close
    max_header_bytes: int = Field(32 << 10, ge=1024)  # request line + headers; beyond: 431 and close
    max_connections: int = Field(512, ge=1)  # open connections served at once; a request on one more: 503
    max_json_depth: int = Field(32, ge=2)
    cors_origins: list[str] = []
    drain_seconds: float = Field(20.0, ge=0)  # default + SHUTDOWN_MARGIN_SECONDS fits K8S_GRACE_SECONDS
    allow_unvalidated: bool = False
    insecure_no_api_key: bool = False  # serve off loopback without a key: only by this name (see the docstring)
    trust: Path | None = None  # a PEM Ed25519 public key: serve only runs it signed (fdkd.serving.signature)
    threads: int | None = Field(None, ge=1)
    log_level: str = "info"
    debug_delay_ms: float = Field(0.0, ge=0)  # artificial compute time per batch (drain/backpressure tests)
    # NaN/Inf input values (binary tensors, FP32 overflow): "reject" with 400, or "accept" as Triton does
    nonfinite_inputs: Literal["reject", "accept"] = "reject"
    hot_path: bool = True  # the bare ASGI inference routes (False: through FastAPI, for comparison)
    http: Literal["uvicorn", "granian"] = "uvicorn"  # the HTTP server (granian: see .granian_server)
    workers: int = Field(1, ge=1)  # granian only: processes sharing the port, each with its model and batcher

    @field_validator("api_key")
    @classmethod
    def _key_not_empty(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().strip():
            raise ValueError("the API key is set but empty; set a non-empty key, or unset FDKD_SERVE_API_KEY "
                             f"to serve without one (on loopback; elsewhere only with {OPT_OUT_FLAG}, "
                             f"{OPT_OUT_ENV}=1)")
        return v

    @model_validator(mode="after")
    def _key_off_loopback(self) -> ServeSettings:
        if self.api_key is None and not self.insecure_no_api_key and not is_loopback(self.host):
            raise ValueError(f"serving on {self.host} (not loopback) needs an API key: set FDKD_SERVE_API_KEY to the "
                             f"key clients must send, or serve without one only by saying so: {OPT_OUT_FLAG} "
                             f"({OPT_OUT_ENV}=1)")
        return self


def main(argv: list[str] | None = None) -> int:
    """``python -m fdkd.serving.settings [--host H]``: exit 2 with the reason if ``fdkd serve`` would refuse these
    ``FDKD_SERVE_*`` settings (the container entrypoint's early check), else 0."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m fdkd.serving.settings", description=main.__doc__)
    p.add_argument("--host", help="the address the server will bind")
    args = p.parse_args(argv)
    try:
        ServeSettings(run_dir=Path("."), **({"host": args.host} if args.host else {}))
    except ValidationError as e:
        for err in e.errors():
            where = ".".join(map(str, err["loc"]))
            print(f"fdkd: {where + ': ' if where else ''}{err['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
