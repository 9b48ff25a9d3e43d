"""Prometheus metrics (prometheus-client), shared by the worker and the proxy.

Both expose `GET /metrics`. Request counts and latencies come from the request-log
middleware (worker/request_log.py), which times each request once; the
worker's batcher observes queue wait, inference time and batch size; gauges and
counters that mirror live state (queue depth, in-flight, live workers, per-worker
outstanding, retries, ejections) are read at scrape time by a collector, so there is no
second copy of that state to keep in step. Names follow Prometheus conventions: a
`imagecluster_` prefix, base units (seconds), `_total` on counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

HTTP_REQUESTS = Counter("imagecluster_http_requests_total", "HTTP requests by route, method and status",
                        ["route", "method", "status"])
HTTP_LATENCY = Histogram("imagecluster_http_request_duration_seconds", "End-to-end HTTP request latency",
                         ["route"], buckets=LATENCY_BUCKETS)
QUEUE_WAIT = Histogram("imagecluster_queue_wait_seconds", "Time an image waited in the batch queue",
                       buckets=LATENCY_BUCKETS)
INFERENCE = Histogram("imagecluster_inference_duration_seconds", "Model time per batch", buckets=LATENCY_BUCKETS)
BATCH_SIZE = Histogram("imagecluster_batch_size", "Images per batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128))


def observe_request(request: web.Request, status: int, seconds: float) -> None:
    """Count and time a finished request by its route pattern (not its raw path: bounded
    labels). Called by the request-log middleware, which already times every request."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    HTTP_REQUESTS.labels(route, request.method, str(status)).inc()
    HTTP_LATENCY.labels(route).observe(seconds)


async def metrics_handler(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


class StateCollector(Collector):
    """Metrics read from live state at scrape time: `read()` yields (kind, name, help,
    value or {label value: value}, label name)."""

    def __init__(self, read: Callable[[], Iterable[tuple]]):
        self.read = read

    def collect(self):
        for kind, name, help_text, value, label in self.read():
            family = (GaugeMetricFamily if kind == "gauge" else CounterMetricFamily)(
                name, help_text, labels=[label] if label else None)
            if label:
                for key, v in value.items():
                    family.add_metric([key], v)
            else:
                family.add_metric([], value)
            yield family


def register_state(app: web.Application, read: Callable[[], Iterable[tuple]]) -> None:
    """Register a StateCollector for the app's lifetime (unregistered on cleanup)."""
    collector = StateCollector(read)

    async def ctx(_app):
        REGISTRY.register(collector)
        yield
        REGISTRY.unregister(collector)

    app.cleanup_ctx.append(ctx)
