"""Prometheus metrics of one app (own registry, so several apps in one process do not collide).

Invariant: for every inference endpoint, success + failure = requests (both are the one counter
``fdkd_requests_total`` split by ``outcome``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, max_batch: int) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("fdkd_requests", "Inference requests by endpoint, outcome and reason",
                                ["endpoint", "outcome", "reason"], registry=r)
        self.rows = Counter("fdkd_inferred_rows", "Rows (samples) inferred", registry=r)
        self.executions = Counter("fdkd_executions", "Runtime executions (batches)", registry=r)
        self.pending = Gauge("fdkd_pending_requests", "Requests accepted and not yet answered", registry=r)
        self.request_duration = Histogram("fdkd_request_duration_seconds", "Request time in the server",
                                          ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue = Histogram("fdkd_queue_duration_seconds", "Time queued before dispatch",
                               buckets=LATENCY_BUCKETS, registry=r)
        self.compute = Histogram("fdkd_compute_duration_seconds", "Runtime time per batch",
                                 buckets=LATENCY_BUCKETS, registry=r)
        buckets = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, max_batch})
        self.batch_size = Histogram("fdkd_batch_size", "Rows per executed batch",
                                    buckets=[b for b in buckets if b <= max_batch], registry=r)
