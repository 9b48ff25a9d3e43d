"""The proxy's aiohttp app: forward (POST), lookup (GET /), health and the live set.

Resources that live as long as the app (the worker pool, the Consul watcher, the decode
threads) are opened and closed in `cleanup_ctx`; handlers reach them through typed
AppKeys.
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from discovery.registration import ConsulAddress
from discovery.watcher import ServiceWatcher
from proxy.forward import ForwardStats, forward
from proxy.policy import POLICIES, VersionSplit
from proxy.pool import WorkerPool
from proxy.recent import RecentWindow
from worker.auth import bearer_auth
from worker.errors import ApiError, json_errors
from worker.imaging import ImageError, Preprocessing, preprocess
from worker.metrics import metrics_handler, register_state
from worker.request_log import request_log
from worker.upload import parse_top_k, read_image


@dataclass(frozen=True)
class ProxyConfig:
    host: str = "0.0.0.0"
    port: int = 12480
    consul: ConsulAddress = field(default_factory=ConsulAddress)
    service_name: str = "classifier"
    policy: str = "round-robin"
    max_batch_size: int = 32
    max_delay_ms: float = 2.0
    worker_timeout_s: float = 10.0
    request_timeout_s: float = 30.0
    max_body_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    read_timeout_s: float = 30.0  # the whole body must arrive within this (408)
    max_in_flight: int = 1024  # accepted forward requests; beyond, a fast 503
    decode_threads: int = field(default_factory=lambda: os.cpu_count() or 2)
    auth_token: str | None = None  # required from clients and passed on to workers (worker/auth.py)
    split: str = ""  # weights between model versions, e.g. "1=90,2=10" (proxy/policy.py VersionSplit)


@dataclass
class ProxyState:
    config: ProxyConfig
    pool: WorkerPool
    watcher: ServiceWatcher
    decode_pool: ThreadPoolExecutor
    split: VersionSplit | None = None
    stats: ForwardStats = field(default_factory=ForwardStats)
    recent: RecentWindow = field(default_factory=RecentWindow)
    in_flight: int = 0


def requested_version(request: web.Request) -> tuple[str | None, bool]:
    """(version, strict): `?version=N` is strict; otherwise the configured split, if any."""
    state = request.app[STATE]
    asked = request.query.get("version")
    if asked is not None:
        if not asked.isdigit():
            raise ApiError(422, "invalid_parameter", f"version must be a version number, got {asked!r}")
        return asked, True
    if state.split:
        return state.split.pick(state.pool.versions()), False
    return None, False


STATE = web.AppKey("proxy_state", ProxyState)


async def classify(request: web.Request) -> web.Response:
    state = request.app[STATE]
    config = state.config
    if state.in_flight >= config.max_in_flight:
        raise ApiError(503, "overloaded", f"{state.in_flight} requests in flight", {"Retry-After": "1"})
    if not state.pool.live():
        raise ApiError(503, "no_worker", "no live worker", {"Retry-After": "1"})
    k = parse_top_k(request, 5, 1_000_000)  # the upper bound is checked per worker
    state.in_flight += 1
    started = time.perf_counter()
    status = 500
    try:
        deadline = time.monotonic() + config.request_timeout_s
        data = await read_image(request, config.max_body_bytes, config.read_timeout_s)
        loop = asyncio.get_running_loop()
        prepared: dict[Preprocessing, object] = {}
        decode_ms = 0.0

        async def image_for(prep: Preprocessing):
            nonlocal decode_ms
            if prep not in prepared:  # decode once per distinct model input
                t = time.perf_counter()
                try:
                    prepared[prep] = await loop.run_in_executor(
                        state.decode_pool, preprocess, data, prep, config.max_pixels)
                except ImageError as exc:
                    raise ApiError(exc.status, exc.code, exc.message) from None
                decode_ms += (time.perf_counter() - t) * 1000
            return prepared[prep]

        version, strict = requested_version(request)
        done = await forward(state.pool, state.stats, image_for, k, worker_timeout_s=config.worker_timeout_s,
                             deadline=deadline, request_id=request["request_id"], version=version, strict=strict)
        r = done.result
        request["served_by"] = r["worker"]
        status = 200
        return web.json_response({
            "model": r["model"],
            "version": r["version"],
            "predictions": r["predictions"],
            "worker": r["worker"],
            "worker_address": done.handle.instance.http_address,
            "batch_size": r["batch_size"],
            "attempts": done.attempts,
            "timings_ms": {
                "decode": round(decode_ms, 3),
                "queue": r["queue_ms"],
                "inference": r["inference_ms"],
                "forward": round(done.forward_ms, 3),
                "total": round((time.perf_counter() - started) * 1000, 3),
            },
        })
    except ApiError as exc:
        status = exc.status
        raise
    finally:
        state.in_flight -= 1
        state.recent.record((time.perf_counter() - started) * 1000, status)


def _lookup(request: web.Request):
    pool = request.app[STATE].pool
    version, strict = requested_version(request)
    handle = pool.choose(version=version) or (None if strict else pool.choose())
    if handle is None:
        raise ApiError(503, "no_worker", "no live worker" + (f" serving version {version}" if strict else ""),
                       {"Retry-After": "1"})
    return handle


async def lookup_text(request: web.Request) -> web.Response:
    """`host:port` and a newline: curl -XPOST "$(curl -s proxy:12480)" -F data=@photo.jpg"""
    return web.Response(text=_lookup(request).instance.http_address + "\n")


async def lookup_json(request: web.Request) -> web.Response:
    h = _lookup(request)
    return web.json_response({"address": h.instance.http_address, "worker": h.id,
                              "model": h.instance.meta.get("model"), "version": h.instance.meta.get("version")})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    live = len(request.app[STATE].pool.live())
    if not live:
        raise ApiError(503, "no_worker", "no live worker", {"Retry-After": "1"})
    return web.json_response({"status": "ready", "live_workers": live})


async def workers(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response({
        "policy": state.pool.policy.name,
        "split": state.split.weights if state.split else None,
        "consul_connected": state.watcher.connected,
        "live": len(state.pool.live()),
        "in_flight": state.in_flight,
        "retries": state.stats.retries,
        "timeouts": state.stats.timeouts,
        "ejections": state.pool.ejections,
        "recent": state.recent.summary(),
        "workers": [h.describe() for h in sorted(state.pool.workers.values(), key=lambda h: h.id)],
    })


STATUS_PAGE = (Path(__file__).parent / "status.html").read_text()


async def status_page(request: web.Request) -> web.Response:
    return web.Response(text=STATUS_PAGE, content_type="text/html")


def create_app(config: ProxyConfig) -> web.Application:
    app = web.Application(middlewares=[request_log, json_errors, bearer_auth(config.auth_token)],
                          client_max_size=config.max_body_bytes)

    async def resources(app: web.Application):
        pool = WorkerPool(max_batch_size=config.max_batch_size, max_delay_ms=config.max_delay_ms,
                          policy=POLICIES[config.policy](), token=config.auth_token or "")
        await pool.start()
        watcher = ServiceWatcher(config.consul, config.service_name, pool.update)
        watcher.start()
        decode_pool = ThreadPoolExecutor(config.decode_threads, thread_name_prefix="decode")
        split = VersionSplit.parse(config.split) if config.split else None
        app[STATE] = ProxyState(config, pool, watcher, decode_pool, split)
        yield
        await watcher.close()
        await pool.close()
        decode_pool.shutdown(wait=False, cancel_futures=True)

    app.cleanup_ctx.append(resources)
    app.router.add_post("/", classify)
    app.router.add_post("/classify", classify)
    app.router.add_get("/", lookup_text)
    app.router.add_get("/lookup", lookup_json)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/workers", workers)
    app.router.add_get("/status", status_page)
    app.router.add_get("/metrics", metrics_handler)
    register_state(app, lambda: pool_metrics(app[STATE]))
    return app


def pool_metrics(state: ProxyState):
    pool = state.pool
    return [
        ("gauge", "imagecluster_live_workers", "Workers the proxy routes to", len(pool.live()), None),
        ("gauge", "imagecluster_in_flight", "Forward requests accepted and not yet answered", state.in_flight, None),
        ("gauge", "imagecluster_worker_outstanding", "Requests in flight to each worker",
         {h.id: h.outstanding for h in pool.workers.values()}, "worker"),
        ("counter", "imagecluster_worker_served", "Requests each worker answered",
         {h.id: h.served for h in pool.workers.values()}, "worker"),
        ("counter", "imagecluster_retries", "Forward attempts after the first", state.stats.retries, None),
        ("counter", "imagecluster_worker_timeouts", "Forward attempts that timed out", state.stats.timeouts, None),
        ("counter", "imagecluster_ejections", "Workers ejected after a failure", pool.ejections, None),
        ("gauge", "imagecluster_consul_connected", "1 while the Consul watch is connected",
         int(state.watcher.connected), None),
    ]
