"""The proxy's aiohttp app: forward (POST), lookup (GET /), health and the live set.

Resources that live as long as the app (the worker pool, the Consul watcher, the decode
threads) are opened and closed in `cleanup_ctx`; handlers reach them through typed
AppKeys.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from pathlib import Path

from aiohttp import web

from discovery.watcher import ServiceWatcher
from edge.app import create_edge_app
from edge.deadline import header_timeout
from edge.errors import retry_later
from edge.jsonio import json_response
from edge.metrics import METRICS, register_state
from edge.request_log import ANSWERED, REQUEST_ID, SERVED_BY
from edge.tfserving import add_tfserving_routes
from edge.upload import parse_top_k, read_image
from edge.v2_grpc import start_grpc
from edge.v2_rest import SERVICE, add_v2_routes
from proxy.config import ProxyConfig
from proxy.forward import DecodedOnce, Forwarded, Route, forward
from proxy.inference import ProxyInference
from proxy.pool import WorkerPool
from proxy.recent import RecentWindow
from proxy.state import STATE, ProxyState, admitted, check_capacity, route_for


def requested_route(request: web.Request) -> Route:
    """`?model=NAME` (default: --default-model); `?version=N` is strict; otherwise the
    configured split, if any."""
    return route_for(request.app[STATE], request.query.get("model"), request.query.get("version"))


async def classify(request: web.Request) -> web.Response:
    state = request.app[STATE]
    config = state.config
    started = time.perf_counter()
    k = parse_top_k(request, 0, None)  # 0: the model's default; its worker checks the upper bound
    timeout_s = min(header_timeout(request) or config.request_timeout, config.request_timeout)
    check_capacity(state)  # refused before the body is read; a slow upload holds no place in flight
    data = await read_image(request, config.edge.max_body_bytes, config.edge.read_timeout)
    async with admitted(state):
        deadline = time.monotonic() + timeout_s - (time.perf_counter() - started)
        image = DecodedOnce(request.app, data)
        done = await forward(state.pool, state.stats, image, k, worker_timeout_s=config.worker_timeout,
                             deadline=deadline, request_id=request[REQUEST_ID], route=requested_route(request))
        request[SERVED_BY] = done.handle.id
        return json_response(answer(done, image.ms, started))


def answer(done: Forwarded, decode_ms: float, started: float) -> dict:
    r, h = done.result, done.handle
    return {
        "model": done.model,
        "version": r.version,
        "predictions": r.predictions,
        "worker": h.id,
        "worker_address": h.instance.http_address,
        "batch_size": r.batch_size,
        "attempts": done.attempts,
        "timings_ms": {
            "decode": round(decode_ms, 3),
            "queue": r.queue_ms,
            "inference": r.inference_ms,
            "forward": round(done.forward_ms, 3),
            "total": round((time.perf_counter() - started) * 1000, 3),
        },
    }


def _lookup(request: web.Request):
    if not request.app[STATE].pool.live():
        raise retry_later("no_worker", "no live worker")
    route = requested_route(request)
    pool = request.app[STATE].pool
    handle = route.choose(pool, set())
    if handle is None:
        raise retry_later("no_worker", f"no live worker serving {route.model}"
                                       + (f" version {route.version}" if route.strict else ""))
    pool.lookup(handle)
    return handle, route


async def lookup_text(request: web.Request) -> web.Response:
    """`host:port` and a newline: curl -XPOST "$(curl -s proxy:12480)" -F data=@photo.jpg;
    with ?model=NAME, `host:port/?model=NAME`, so the same two-step curl reaches that model."""
    handle, route = _lookup(request)
    model = request.query.get("model")
    return web.Response(text=handle.instance.http_address + (f"/?model={route.model}" if model else "") + "\n")


async def lookup_json(request: web.Request) -> web.Response:
    h, route = _lookup(request)
    b = h.balance
    load = {"queue": b.load(time.monotonic()), "service_ms": round(b.service.value, 3)}
    return json_response({"address": h.instance.http_address, "worker": h.id, "model": route.model,
                          "version": h.version(route.model),
                          "grpc_address": f"{h.instance.address}:{h.meta.grpc_port}", "load": load})


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    live = len(request.app[STATE].pool.live())
    if not live:
        raise retry_later("no_worker", "no live worker")
    return json_response({"status": "ready", "live_workers": live})


async def workers(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return json_response({
        "policy": state.pool.policy.name,
        "split": state.config.split or None,
        "consul_connected": state.watcher.connected,
        "live": len(state.pool.live()),
        "in_flight": state.in_flight,
        "retries": state.stats.retries,
        "timeouts": state.stats.timeouts,
        "ejections": state.pool.ejections,
        "ejections_capped": state.pool.ejections_capped,
        "retries_over_budget": state.pool.budget.refused,
        "recent": state.recent.summary(),
        "workers": [h.describe() for h in sorted(state.pool.workers.values(), key=lambda h: h.id)],
    })


async def worker_stats(request: web.Request) -> web.Response:
    """GET /workers/stats: each worker's own counts (every client's answers, p2p included),
    for the status page."""
    state = request.app[STATE]
    return json_response({"workers": await state.pool.worker_stats()})


STATUS_PAGE = (Path(__file__).parent / "status.html").read_text()


async def status_page(request: web.Request) -> web.Response:
    return web.Response(text=STATUS_PAGE, content_type="text/html")


DRAINING = web.AppKey("draining", asyncio.Event)


@web.middleware
async def close_when_draining(request: web.Request, handler):
    """While the proxy drains, every answer closes its connection: a keep-alive client's
    next request then opens a connection to whoever holds the listening socket now."""
    response = await handler(request)
    if request.app[DRAINING].is_set():
        response.force_close()
    return response


SUCCESSOR_SYNC_S = 10.0  # how long a successor waits for Consul's first answer; its predecessor serves meanwhile


class ConsulSilent(Exception):
    """A successor heard nothing from Consul, so it knows no worker: it would answer 503."""


def create_app(config: ProxyConfig) -> web.Application:
    app = create_edge_app(config.edge, classify, healthz, readyz)
    app.middlewares.insert(0, close_when_draining)
    app[DRAINING] = asyncio.Event()
    recent = RecentWindow()  # every inference answer, refusals included, for the status page
    app[ANSWERED] = recent.record

    async def resources(app: web.Application):
        async with AsyncExitStack() as opened:  # closed in reverse order, after a failed start too
            pool = WorkerPool(config)
            await pool.start()
            opened.push_async_callback(pool.close)
            watcher = ServiceWatcher(config.consul, config.edge.service_name, pool.update,
                                     wait_s=config.watch_wait, resync_grace_s=config.resync_grace)
            watcher.start()
            opened.push_async_callback(watcher.close)
            # A successor shares its predecessor's listening socket (and gRPC port) from the moment
            # it listens: it must know the workers by then, or it answers what it takes 503.
            if config.listen_fd >= 0 and not await watcher.wait_synced(SUCCESSOR_SYNC_S):
                raise ConsulSilent(f"Consul at {config.consul.host}:{config.consul.port} did not answer within "
                                   f"{SUCCESSOR_SYNC_S:g} s")
            app[STATE] = state = ProxyState(config, pool, watcher, recent=recent)
            app[SERVICE] = ProxyInference(state, app)
            state.grpc = await start_grpc(app[SERVICE], config.edge, config.host, config.grpc_port,
                                          app[METRICS].registry, recent.record)
            opened.push_async_callback(state.grpc.stop, 1.0)  # stopped already after a drain
            yield

    app.cleanup_ctx.append(resources)
    app.router.add_get("/", lookup_text)
    app.router.add_get("/lookup", lookup_json)
    app.router.add_get("/workers", workers)
    app.router.add_get("/workers/stats", worker_stats)
    app.router.add_get("/status", status_page)
    add_v2_routes(app)
    add_tfserving_routes(app, config.edge.version_labels)
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
        ("counter", "imagecluster_ejections_capped", "Ejections refused by --max-ejection-percent",
         pool.ejections_capped, None),
        ("counter", "imagecluster_retries_over_budget", "Retries the retry budget refused", pool.budget.refused, None),
        ("gauge", "imagecluster_consul_connected", "1 while the Consul watch is connected",
         int(state.watcher.connected), None),
    ]
