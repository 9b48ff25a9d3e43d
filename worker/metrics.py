"""The worker's own metrics: how long images wait, how long batches take, how big they are.
Registered in the worker app's registry only (edge/metrics.py), so no other process
exports them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from edge.metrics import LATENCY_BUCKETS


class BatchMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        registry = registry or CollectorRegistry()  # a private one when nobody scrapes (tests)
        self.queue_wait = Histogram("imagecluster_queue_wait_seconds", "Time an image waited in the batch queue",
                                    buckets=LATENCY_BUCKETS, registry=registry)
        self.inference = Histogram("imagecluster_inference_duration_seconds", "Model time per batch",
                                   buckets=LATENCY_BUCKETS, registry=registry)
        self.batch_size = Histogram("imagecluster_batch_size", "Images per batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=registry)
