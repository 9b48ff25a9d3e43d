"""The worker's InferenceService (edge/inference.py): what the standard protocols run on
a worker. Images are decoded by the shared path (or taken as a tensor at the model's
input size) and queued in that model's batcher with every other request."""

from __future__ import annotations

import asyncio

from aiohttp import web

from edge.app import decode_image
from edge.errors import retry_later
from edge.inference import Inference, InferRequest, ModelInfo, check_tensor, not_found
from worker.service import WorkerState, classify_image


class WorkerInference:
    def __init__(self, state: WorkerState, app: web.Application):
        self.state = state
        self.app = app

    def ready(self) -> bool:
        return self.state.ready

    def model(self, name: str, version: str | None = None) -> ModelInfo:
        if not self.state.batchers:
            raise retry_later("not_ready", "the worker is loading its models")
        batcher = self.state.batchers.get(name)
        if batcher is None or version not in (None, batcher.model.version):
            raise not_found(name, version)
        m = batcher.model
        return ModelInfo(m.name, (m.version,), m.backend, m.input_shape, len(m.labels))

    def check_room(self, info: ModelInfo) -> None:
        self.state.check_ready()
        self.state.check_room(self.state.batchers[info.name])

    async def infer(self, request: InferRequest) -> list[Inference]:
        state = self.state
        state.check_ready()
        info = self.model(request.model, request.version)
        batcher = state.batchers[info.name]
        if request.tensor is not None:
            check_tensor(request.tensor, info)
        state.check_deadline(batcher, request.timeout_s)
        with state.admit(batcher, len(request)) as admission:  # room for every image, or a 503 now
            state.in_flight += len(request)
            try:
                if request.tensor is not None:
                    images = list(request.tensor)
                else:
                    prep = batcher.model.preprocessing
                    images = await asyncio.gather(*(decode_image(self.app, data, prep) for data in request.encoded))
                k = min(max(request.top_k, 1), info.num_classes)
                answers = await asyncio.gather(*(classify_image(state, admission, image, k) for image in images))
            finally:
                state.in_flight -= len(request)
        return [Inference(p.model.version, top[:request.top_k], p.probabilities if request.probabilities else None)
                for top, p in answers]
