"""The skeleton both HTTP fronts are built on: middlewares in order (request log and
metrics outermost, then JSON errors, then auth), the body limit, `GET /metrics` on the
app's own registry, and the decode thread pool with the one way to decode an upload."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from aiohttp import web
from prometheus_client import CollectorRegistry

from edge.auth import bearer_auth
from edge.config import EdgeConfig
from edge.errors import ApiError, json_errors
from edge.imaging import ImageError, configure_decoding, preprocess
from edge.metrics import METRICS, HttpMetrics, metrics_handler
from edge.preprocessing import Preprocessing
from edge.priority import compute_pool
from edge.request_log import request_log
from edge.upload import UPLOADS, UploadBudget

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DECODE_POOL = web.AppKey("decode_pool", ThreadPoolExecutor)
EDGE_CONFIG = web.AppKey("edge_config", EdgeConfig)


def app_runner(app: web.Application, shutdown_timeout: float) -> web.AppRunner:
    """The runner both servers use: access logged by our middleware, signals ours, and a
    client that disconnects cancels its handler (aiohttp's handler cancellation, off by
    default): the image of a caller that gave up leaves the queue uncomputed instead of
    taking a turn of the model for no one (docs/guide/worker.md, "Clients that give up")."""
    return web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout,
                         handler_cancellation=True)


def create_edge_app(config: EdgeConfig, classify: Handler, healthz: Handler, readyz: Handler) -> web.Application:
    """The app both fronts start from, with the routes they share: the classify contract
    (POST / and /classify), liveness, readiness and metrics."""
    # client_max_size guards aiohttp's own body readers; ours stream with the same limit.
    app = web.Application(middlewares=[request_log, json_errors, *bearer_auth(config.auth_token)],
                          client_max_size=config.max_body_bytes)
    app[EDGE_CONFIG] = config
    app[METRICS] = HttpMetrics(CollectorRegistry())
    app[UPLOADS] = UploadBudget(config.max_upload_bytes)
    app.router.add_post("/", classify)
    app.router.add_post("/classify", classify)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)

    async def decode_pool(app: web.Application):
        configure_decoding()
        app[DECODE_POOL] = pool = compute_pool(config.decode_threads, "decode")
        yield
        pool.shutdown(wait=False, cancel_futures=True)

    app.cleanup_ctx.append(decode_pool)
    return app


async def decode_image(app: web.Application, data: bytes, prep: Preprocessing) -> np.ndarray:
    """The model input for uploaded bytes, decoded off the event loop; ApiError if unusable."""
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(app[DECODE_POOL], preprocess, data, prep, app[EDGE_CONFIG].max_pixels)
    except ImageError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
