"""The worker's own metrics: how long images wait, how long batches take, how big they are,
per served model (the `model` label: one value per model in the worker's repository, so
bounded). Registered in the worker app's registry only (edge/metrics.py), so no other
process exports them."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Histogram

from edge.metrics import LATENCY_BUCKETS


@dataclass
class ModelMetrics:
    """One model's children of the worker's histograms (what a Batcher observes)."""

    queue_wait: object
    inference: object
    batch_size: object


class BatchMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        registry = registry or CollectorRegistry()  # a private one when nobody scrapes (tests)
        self.queue_wait = Histogram("imagecluster_queue_wait_seconds", "Time an image waited in the batch queue",
                                    ["model"], buckets=LATENCY_BUCKETS, registry=registry)
        self.inference = Histogram("imagecluster_inference_duration_seconds", "Model time per batch",
                                   ["model"], buckets=LATENCY_BUCKETS, registry=registry)
        self.batch_size = Histogram("imagecluster_batch_size", "Images per batch", ["model"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=registry)

    def for_model(self, name: str) -> ModelMetrics:
        return ModelMetrics(self.queue_wait.labels(name), self.inference.labels(name), self.batch_size.labels(name))
