"""The worker's HTTP front (aiohttp): classify, health, readiness, info, stats."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from worker.auth import bearer_auth
from worker.errors import ApiError, json_errors
from worker.imaging import ImageError, preprocess
from worker.metrics import metrics_handler, register_state
from worker.request_log import request_log
from worker.service import STATE, WorkerState, check_capacity, classify_image
from worker.upload import parse_top_k, read_image


async def classify(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.check_ready()
    check_capacity(state)
    model = state.model
    k = parse_top_k(request, state.config.default_top_k, len(model.labels))

    state.in_flight += 1
    try:
        started = time.perf_counter()
        data = await read_image(request, state.config.max_body_bytes, state.config.read_timeout_s)
        try:
            image = await asyncio.get_running_loop().run_in_executor(
                state.decode_pool, preprocess, data, model.preprocessing, state.config.max_pixels
            )
        except ImageError as exc:
            raise ApiError(exc.status, exc.code, exc.message) from None
        decoded = time.perf_counter()
        predictions, prediction = await classify_image(state, image, k)
        request["served_by"] = state.worker_id
        total_ms = (time.perf_counter() - started) * 1000
        return web.json_response(
            {
                "model": prediction.model.name,
                "version": prediction.model.version,
                "predictions": predictions,
                "worker": state.worker_id,
                "batch_size": prediction.batch_size,
                "timings_ms": {
                    "decode": round((decoded - started) * 1000, 3),
                    "queue": round(prediction.queue_ms, 3),
                    "inference": round(prediction.inference_ms, 3),
                    "total": round(total_ms, 3),
                },
            }
        )
    finally:
        state.in_flight -= 1


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive", "worker": request.app[STATE].worker_id})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.check_ready()
    return web.json_response({"status": "ready", "worker": state.worker_id})


async def info(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = {"worker": state.worker_id, "ready": state.ready, "draining": state.draining}
    if state.model is not None:
        m = state.model
        body.update(
            model=m.name,
            version=m.version,
            backend=m.backend,
            input_shape=list(m.input_shape),
            num_labels=len(m.labels),
            load_seconds=round(m.load_seconds, 3),
        )
    return web.json_response(body)


async def stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = {"worker": state.worker_id, "in_flight": state.in_flight, "served": state.served}
    if state.batcher is not None:
        body["queue_depth"] = state.batcher.depth
        body["batching"] = state.batcher.stats.as_dict()
    return web.json_response(body)


def create_app(state: WorkerState) -> web.Application:
    # client_max_size guards aiohttp's own body readers; ours stream with the same limit.
    app = web.Application(middlewares=[request_log, json_errors, bearer_auth(state.config.auth_token)],
                          client_max_size=state.config.max_body_bytes)
    app[STATE] = state
    app.router.add_post("/", classify)
    app.router.add_post("/classify", classify)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/info", info)
    app.router.add_get("/stats", stats)
    app.router.add_get("/metrics", metrics_handler)
    register_state(app, lambda: [
        ("gauge", "imagecluster_queue_depth", "Images waiting or being computed",
         state.batcher.depth if state.batcher else 0, None),
        ("gauge", "imagecluster_in_flight", "Requests accepted and not yet answered", state.in_flight, None),
        ("gauge", "imagecluster_ready", "1 when the model is loaded and the worker is not draining",
         int(state.ready), None),
    ])
    return app
