"""The worker's HTTP front (aiohttp): classify, health, readiness, info, stats."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from aiohttp import web

from worker.batcher import Batcher, InferenceFailed, Overloaded
from worker.config import WorkerConfig
from worker.errors import ApiError, json_errors
from worker.imaging import ImageError, preprocess
from worker.model import Model
from worker.upload import parse_top_k, read_image


@dataclass
class WorkerState:
    """Everything the handlers share; created by the server, filled as start-up proceeds."""

    config: WorkerConfig
    worker_id: str
    decode_pool: ThreadPoolExecutor
    model: Model | None = None
    batcher: Batcher | None = None
    draining: bool = False
    in_flight: int = 0
    served: int = 0

    @property
    def ready(self) -> bool:
        return self.model is not None and not self.draining

    def not_ready_reason(self) -> str:
        return "draining" if self.draining else "loading the model"


STATE = web.AppKey("state", WorkerState)


def top_k(probabilities: np.ndarray, labels: list[str], k: int) -> list[dict]:
    # argpartition then sort only the k best: cheaper than a full sort of 1000 classes.
    best = np.argpartition(-probabilities, k - 1)[:k]
    best = best[np.argsort(-probabilities[best])]
    return [{"label": labels[i], "index": int(i), "score": float(probabilities[i])} for i in best]


async def classify(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if not state.ready:
        raise ApiError(503, "not_ready", f"the worker is not ready: {state.not_ready_reason()}", {"Retry-After": "1"})
    model = state.model
    k = parse_top_k(request, state.config.default_top_k, len(model.labels))

    state.in_flight += 1
    try:
        started = time.perf_counter()
        data = await read_image(request, state.config.max_body_bytes)
        try:
            image = await asyncio.get_running_loop().run_in_executor(
                state.decode_pool, preprocess, data, model.preprocessing, state.config.max_pixels
            )
        except ImageError as exc:
            status = 413 if exc.code == "image_too_large" else 400
            raise ApiError(status, exc.code, exc.message) from None
        decoded = time.perf_counter()
        try:
            prediction = await state.batcher.submit(image)
        except Overloaded as exc:
            raise ApiError(503, "overloaded", f"the worker is at capacity: {exc}", {"Retry-After": "1"}) from None
        except InferenceFailed as exc:
            raise ApiError(500, "inference_failed", str(exc)) from None
        state.served += 1
        total_ms = (time.perf_counter() - started) * 1000
        return web.json_response(
            {
                "model": model.name,
                "version": model.version,
                "predictions": top_k(prediction.probabilities, model.labels, k),
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
    if not state.ready:
        raise ApiError(503, "not_ready", state.not_ready_reason(), {"Retry-After": "1"})
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
    app = web.Application(middlewares=[json_errors], client_max_size=state.config.max_body_bytes)
    app[STATE] = state
    app.router.add_post("/", classify)
    app.router.add_post("/classify", classify)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/info", info)
    app.router.add_get("/stats", stats)
    return app
