"""The proxy's InferenceService (edge/inference.py): what the standard protocols run on
the proxy. Each image is decoded once per model input (or taken as a tensor at the
model's input size) and forwarded over ZeroMQ like any other request, so it is batched
with them, retried, and admitted the same way."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from aiohttp import web

from edge.errors import ApiError, retry_later
from edge.inference import Inference, InferRequest, ModelInfo, not_found
from edge.preprocessing import Preprocessing
from proxy.forward import DecodedOnce, forward
from proxy.state import ProxyState, admitted, check_capacity, route_for


class ProxyInference:
    def __init__(self, state: ProxyState, app: web.Application):
        self.state = state
        self.app = app

    def ready(self) -> bool:
        return bool(self.state.pool.live())

    def model(self, name: str, version: str | None = None) -> ModelInfo:
        live = self.state.pool.live()
        if not live:
            raise retry_later("no_worker", "no live worker")
        serving = [h for h in live if name in h.meta.models]
        versions = sorted({h.version(name) for h in serving}, key=lambda v: int(v) if v.isdigit() else 0)
        if not serving or version not in (None, *versions):
            raise not_found(name, version)
        m = serving[0].meta.models[name]
        return ModelInfo(name, tuple(versions), m.backend, m.input_shape, m.num_labels)

    def check_room(self, info: ModelInfo) -> None:
        check_capacity(self.state)

    async def infer(self, request: InferRequest) -> list[Inference]:
        state = self.state
        async with admitted(state):
            info = self.model(request.model, request.version)
            route = route_for(state, info.name, request.version)
            deadline = time.monotonic() + min(request.timeout_s or state.config.request_timeout,
                                              state.config.request_timeout)
            return await asyncio.gather(*(self._one(request, i, route, deadline) for i in range(len(request))))

    async def _one(self, request: InferRequest, i: int, route, deadline: float) -> Inference:
        async def tensor_for(prep: Preprocessing) -> np.ndarray:
            image = request.tensor[i]
            if image.shape != (prep.size, prep.size, prep.channels):
                raise ApiError(400, "wrong_shape",
                               f"the worker's model takes {prep.size}x{prep.size}x{prep.channels} images")
            return image

        image_for = tensor_for if request.tensor is not None else DecodedOnce(self.app, request.encoded[i])

        done = await forward(self.state.pool, self.state.stats, image_for, max(request.top_k, 1),
                             worker_timeout_s=self.state.config.worker_timeout, deadline=deadline,
                             request_id=request.request_id, route=route, probabilities=request.probabilities)
        r = done.result
        return Inference(r.version, r.predictions[:request.top_k], r.probabilities)
