"""What the worker's entry points share: its state and the one way to classify an image.

HTTP (worker/http_api.py) and ZeroMQ (worker/zmq_endpoint.py) both call
`classify_image`, so both feed the same batcher and fail the same way.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from aiohttp import web

from worker.batcher import Batcher, InferenceFailed, Overloaded, Prediction
from worker.config import WorkerConfig
from worker.errors import ApiError
from worker.model import Model


@dataclass
class WorkerState:
    """Everything the entry points share; created by the server, filled as start-up proceeds."""

    config: WorkerConfig
    worker_id: str
    decode_pool: ThreadPoolExecutor
    model: Model | None = None
    batcher: Batcher | None = None
    draining: bool = False
    in_flight: int = 0  # images accepted and not yet answered, over every entry point
    served: int = 0

    @property
    def ready(self) -> bool:
        return self.model is not None and not self.draining

    def not_ready_reason(self) -> str:
        return "draining" if self.draining else "loading the model"

    def check_ready(self) -> None:
        if not self.ready:
            raise ApiError(503, "not_ready", f"the worker is not ready: {self.not_ready_reason()}",
                           {"Retry-After": "1"})


def overloaded(reason: str) -> ApiError:
    return ApiError(503, "overloaded", f"the worker is at capacity: {reason}", {"Retry-After": "1"})


def check_capacity(state: WorkerState) -> None:
    """Refuse before reading and decoding a body that the full queue could not take."""
    if state.batcher.full:
        raise overloaded(f"{state.config.batch.max_queue} requests already queued")


STATE = web.AppKey("state", WorkerState)


def top_k(probabilities: np.ndarray, labels: list[str], k: int) -> list[dict]:
    # argpartition then sort only the k best: cheaper than a full sort of 1000 classes.
    best = np.argpartition(-probabilities, k - 1)[:k]
    best = best[np.argsort(-probabilities[best])]
    return [{"label": labels[i], "index": int(i), "score": float(probabilities[i])} for i in best]


async def classify_image(state: WorkerState, image: np.ndarray, k: int) -> tuple[list[dict], Prediction]:
    """Queue one preprocessed image; return its top-k and timings. Raises ApiError."""
    try:
        prediction = await state.batcher.submit(image)
    except Overloaded as exc:
        raise overloaded(str(exc)) from None
    except InferenceFailed as exc:
        raise ApiError(500, "inference_failed", str(exc)) from None
    state.served += 1
    return top_k(prediction.probabilities, prediction.model.labels, k), prediction
