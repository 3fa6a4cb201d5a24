"""``ApiError``: an HTTP error with a reason label (metrics) that handlers raise; answered as {"error": ...}."""

from __future__ import annotations

RETRY_AFTER = {"Retry-After": "1"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, reason: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.reason, self.headers = status, message, reason, headers or {}
