"""The worker's HTTP front (aiohttp): classify, health, readiness, info, stats.
`?model=NAME` picks one of the served models; without it, the default model."""

from __future__ import annotations

import time
from dataclasses import asdict

from aiohttp import web

from edge.app import create_edge_app, decode_image
from edge.deadline import header_timeout, within
from edge.jsonio import json_response
from edge.metrics import register_state
from edge.request_log import SERVED_BY
from edge.tfserving import add_tfserving_routes
from edge.upload import parse_top_k, read_image
from edge.v2_rest import SERVICE, add_v2_routes
from worker import model_host
from worker.inference import WorkerInference
from worker.service import STATE, classify_image


async def classify(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.check_ready()
    batcher = state.batcher(request.query.get("model"))
    model = batcher.model
    k = parse_top_k(request, state.config.default_top_k, len(model.labels))

    timeout_s = header_timeout(request)
    state.check_room(batcher)  # a full queue refuses here, before the body is read
    state.check_deadline(batcher, timeout_s)  # and so does one too long for the client's deadline
    state.in_flight += 1
    try:
        started = time.perf_counter()
        # No room is held while the body arrives: slow uploads must not fill the queue
        # while the model idles (docs/guide/worker.md, "Slow uploads").
        data = await read_image(request, state.config.edge.max_body_bytes, state.config.edge.read_timeout)
        if timeout_s is not None:  # again, now that the images whose bodies came first are queued
            state.check_deadline(batcher, timeout_s - (time.perf_counter() - started))
        with state.admit(batcher) as admission:  # room reserved before decoding
            image = await decode_image(request.app, data, model.preprocessing)
            decoded = time.perf_counter()
            left = None if timeout_s is None else timeout_s - (decoded - started)
            predictions, prediction = await within(left, classify_image(state, admission, image, k))
    finally:
        state.in_flight -= 1
    request[SERVED_BY] = state.worker_id
    return json_response(
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
                "total": round((time.perf_counter() - started) * 1000, 3),
            },
        }
    )


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "alive", "worker": request.app[STATE].worker_id})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.check_ready()
    return json_response({"status": "ready", "worker": state.worker_id})


async def info(request: web.Request) -> web.Response:
    state = request.app[STATE]
    models = {
        name: {"version": m.version, "backend": m.backend, "precision": m.precision, "input_shape": list(m.input_shape),
               "num_labels": len(m.labels), "load_seconds": round(m.load_seconds, 3)}
        for name, m in state.models.items()
    }
    return json_response({"worker": state.worker_id, "ready": state.ready, "draining": state.draining,
                          "default_model": state.config.edge.default_model,
                          "preprocessing": state.config.preprocessing, "models": models})


async def stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return json_response({"worker": state.worker_id, "in_flight": state.in_flight, "served": state.served,
                          "load": asdict(state.load()),
                          "queue_depth": state.depth,
                          "batching": {name: b.stats.as_dict() for name, b in state.batchers.items()}})


def create_app(state) -> web.Application:
    app = create_edge_app(state.config.edge, classify, healthz, readyz)
    app[STATE] = state
    app[SERVICE] = WorkerInference(state, app)
    add_v2_routes(app)
    add_tfserving_routes(app, state.config.edge.version_labels)
    app.router.add_get("/info", info)
    app.router.add_get("/stats", stats)
    register_state(app, lambda: [
        ("gauge", "imagecluster_queue_depth", "Images admitted: being decoded, waiting or computed", state.depth, None),
        ("gauge", "imagecluster_in_flight", "Requests accepted and not yet answered", state.in_flight, None),
        ("gauge", "imagecluster_ready", "1 when the models are loaded and the worker is not draining",
         int(state.ready), None),
        ("counter", "imagecluster_model_host_restarts_total",
         "fp16 model host processes found dead or hung and started afresh (their batch ran again)",
         model_host.restarts(), None),
    ])
    return app
