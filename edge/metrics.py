"""Prometheus metrics (prometheus-client): the HTTP half, and the plumbing both fronts use.

Each app has its own `CollectorRegistry`, so a process exports only the metrics it owns:
the proxy never shows the worker's batching histograms. Request counts and latencies come
from the request-log middleware (edge/request_log.py), which times each request once;
live state (queue depth, in-flight, live workers...) is read at scrape time by a
`StateCollector`, so there is no second copy of it to keep in step. Names follow
Prometheus conventions: an `imagecluster_` prefix, base units (seconds), `_total` on
counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def protocol_of(path: str) -> str:
    """Which protocol a path belongs to: its error format (edge/errors.py) and metrics label."""
    if path == "/v2" or path.startswith("/v2/"):
        return "v2"
    return "tfserving" if path.startswith("/v1/models") else "native"


class HttpMetrics:
    """Requests by route pattern (bounded labels, not raw paths), method and status."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        # The process_* and python_gc_* families the default registry would have shown.
        ProcessCollector(registry=registry)
        GCCollector(registry=registry)
        self.requests = Counter("imagecluster_http_requests_total",
                                "HTTP requests by protocol (native, v2, tfserving), route, method and status",
                                ["protocol", "route", "method", "status"], registry=registry)
        self.latency = Histogram("imagecluster_http_request_duration_seconds", "End-to-end HTTP request latency",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=registry)

    def observe(self, request: web.Request, status: int, seconds: float) -> None:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        self.requests.labels(protocol_of(request.path), route, request.method, str(status)).inc()
        self.latency.labels(route).observe(seconds)


METRICS = web.AppKey("http_metrics", HttpMetrics)


async def metrics_handler(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


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
    """Export live state read by `read()` in this app's registry."""
    app[METRICS].registry.register(StateCollector(read))
