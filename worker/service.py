"""What the worker's entry points share: its state and the one way to classify an image.

HTTP (worker/http_api.py) and ZeroMQ (worker/zmq_endpoint.py) both call
`classify_image`, so both feed the same batchers and fail the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from aiohttp import web

from edge.errors import ApiError, retry_later
from edge.inference import pick_model
from worker.batcher import Admission, Batcher, InferenceError, Prediction, QueueFullError, Stopped
from worker.config import WorkerConfig
from worker.protocol import WorkerLoad

log = logging.getLogger(__name__)


@dataclass
class WorkerState:
    """Everything the entry points share; created by the server, filled as start-up proceeds."""

    config: WorkerConfig
    worker_id: str
    batchers: dict[str, Batcher] = field(default_factory=dict)  # per served model; each owns its live version
    draining: bool = False
    in_flight: int = 0  # images accepted and not yet answered, over every entry point
    served: int = 0

    @property
    def models(self) -> dict:
        """The live version of each served model, by name."""
        return {name: batcher.model for name, batcher in self.batchers.items()}

    @property
    def ready(self) -> bool:
        return bool(self.batchers) and not self.draining

    def check_ready(self) -> None:
        if not self.ready:
            reason = "draining" if self.draining else "loading the models"
            raise retry_later("not_ready", f"the worker is not ready: {reason}")

    def batcher(self, model: str | None) -> Batcher:
        """The batcher of the model a request names (None or "": the default); 404 when not served."""
        return self.batchers[pick_model(model, self.batchers, self.config.edge.default_model)]

    def check_room(self, batcher: Batcher) -> None:
        """503 overloaded now when `batcher` has no room left, or its predicted wait is past
        --max-queue-wait-ms: refused before a body is read."""
        try:
            batcher.check_room()
        except QueueFullError as exc:
            raise overloaded(str(exc)) from None
        self.check_wait(batcher)

    def check_wait(self, batcher: Batcher) -> None:
        """503 overloaded when the queue's predicted wait is past --max-queue-wait-ms."""
        bound = self.config.batch.max_queue_wait_ms
        if bound and batcher.predicted_wait_ms() > bound:
            raise overloaded(f"the queue's predicted wait is {batcher.predicted_wait_ms():.0f} ms "
                             f"(--max-queue-wait-ms {bound:g})")

    def admit(self, batcher: Batcher, count: int = 1) -> Admission:
        """Room for `count` images in `batcher`'s queue, reserved once the body is read and
        before decoding (check_room refused a full queue before the read); 503 overloaded
        when there is none, 413 when there never could be."""
        if count > self.config.batch.max_queue:
            raise ApiError(413, "too_many_images", f"{count} images in one request; this worker queues at most "
                                                   f"{self.config.batch.max_queue} (--max-queue)")
        self.check_wait(batcher)
        try:
            return batcher.admit(count)
        except QueueFullError as exc:
            raise overloaded(str(exc)) from None

    @property
    def depth(self) -> int:
        return sum(b.depth for b in self.batchers.values())

    def load(self, batcher: Batcher | None = None) -> WorkerLoad:
        """What this worker reports of its load (every ZeroMQ reply, /stats): the CPU is
        shared, so the queue counts every model's images; the compute time is `batcher`'s,
        or without one the slowest model's."""
        batchers = [batcher] if batcher else self.batchers.values()
        return WorkerLoad(self.depth, self.in_flight, round(max((b.service_ms for b in batchers), default=0.0), 3))

    def check_deadline(self, batcher: Batcher, timeout_s: float | None) -> None:
        """504 now, before any work, when the queue's predicted wait already exceeds the
        time the request has left: it could only be answered too late. (What is left then
        has to cover its own compute too; an image that runs out of time in the queue is
        dropped there, uncomputed.)"""
        if timeout_s is None or not batcher.depth:  # an idle worker takes anything (and so keeps its pace learnt)
            return
        wait_ms = batcher.predicted_wait_ms() + batcher.service_ms  # until its own answer
        if wait_ms > timeout_s * 1000:
            raise ApiError(504, "timeout", f"the queue's predicted wait ({wait_ms:.0f} ms) exceeds the "
                                           f"{timeout_s * 1000:.0f} ms this request has left")


def overloaded(reason: str) -> ApiError:
    return retry_later("overloaded", f"the worker is at capacity: {reason}")


STATE = web.AppKey("state", WorkerState)


def top_k(probabilities: np.ndarray, labels: list[str], k: int) -> list[dict]:
    """The k best classes, best first (equal scores in index order). This runs on the
    event loop: one numpy call picks the k (argpartition, cheaper than sorting 1000
    classes) and Python sorts those few. Each numpy call over the whole vector lets go of
    the GIL, and under load taking it back waits behind the decode threads; four such
    calls took 31 µs here, this one 14."""
    best = np.argpartition(probabilities, len(probabilities) - k)[-k:].tolist()
    best.sort(key=lambda i: (-probabilities[i], i))
    return [{"label": labels[i], "index": i, "score": float(probabilities[i])} for i in best]


async def classify_image(state: WorkerState, admission: Admission, image: np.ndarray,
                         k: int) -> tuple[list[dict], Prediction]:
    """Queue one preprocessed image in room admitted for it; return its top-k and timings. Raises ApiError."""
    try:
        prediction = await admission.submit(image)
    except InferenceError:  # logged by the batcher with its cause
        raise ApiError(500, "inference_failed", "the model failed on the batch this image was in") from None
    except Stopped:  # a drain that ran out of time: another worker can take it
        raise retry_later("shutting_down", "the worker stopped before computing this image: send it again") from None
    state.served += 1
    return top_k(prediction.probabilities, prediction.model.labels, k), prediction
