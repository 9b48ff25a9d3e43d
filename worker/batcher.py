"""Dynamic batching: one bounded queue and one inference thread per served model, so
images for different models are never batched together.

Every entry point (HTTP and ZeroMQ) calls `submit()` with a preprocessed uint8
image. A collector task takes the first waiting image and whatever else is queued (when
others were queued, it also waits up to `max_batch_delay_ms` for more), up to
`max_batch_size`, and runs the batch on a dedicated thread. An image that finds the
worker idle goes straight to the model. While one batch runs the next one accumulates,
so under load batches grow by themselves. The knobs mirror TF Serving's (max_batch_size,
batch_timeout_micros, max_enqueued_batches) and Triton's queue policy with rejection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from edge.tasks import cancel, collect_batch
from worker.metrics import BatchMetrics, ModelMetrics
from worker.model import Model

log = logging.getLogger(__name__)


class QueueFullError(Exception):
    """The queue is full; the caller should answer 503 with Retry-After."""


class InferenceError(Exception):
    """The batch this request was in failed; the message says why."""


@dataclass(frozen=True)
class BatchConfig:
    max_batch_size: int = 32
    max_batch_delay_ms: float = 2.0
    max_queue: int = 256


@dataclass
class Prediction:
    probabilities: np.ndarray
    queue_ms: float
    inference_ms: float
    batch_size: int
    model: Model  # the model (version) that computed it; a swap may happen between batches


@dataclass
class _Pending:
    image: np.ndarray
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    batches: int = 0
    images: int = 0
    failed_batches: int = 0
    max_batch_size: int = 0

    def as_dict(self) -> dict:
        return {
            "batches": self.batches,
            "images": self.images,
            "failed_batches": self.failed_batches,
            "max_batch_size": self.max_batch_size,
            "mean_batch_size": round(self.images / self.batches, 3) if self.batches else 0.0,
        }


class Batcher:
    """Owns the live model: `swap()` installs a new version, used from the next batch on."""

    def __init__(self, model: Model, config: BatchConfig, metrics: ModelMetrics | None = None):
        self.model = model
        self.config = config
        self.metrics = metrics or BatchMetrics().for_model(model.name)
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=config.max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._task: asyncio.Task | None = None
        self._running = 0  # images in the batch being computed

    @property
    def full(self) -> bool:
        return self._queue.full()

    @property
    def depth(self) -> int:
        """Images waiting or being computed."""
        return self._queue.qsize() + self._running

    def start(self) -> None:
        self._task = asyncio.create_task(self._collect(), name=f"batcher-{self.model.name}")

    def swap(self, model: Model) -> None:
        """Serve `model` from the next batch on; the running batch finishes on the old one."""
        self.model = model

    async def close(self) -> None:
        await cancel(self._task)
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(InferenceError("the worker is shutting down"))
        self._executor.shutdown(wait=True)

    async def submit(self, image: np.ndarray) -> Prediction:
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Pending(image, future))
        except asyncio.QueueFull:
            raise QueueFullError(f"{self._queue.maxsize} requests already queued") from None
        return await future

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await collect_batch(self._queue, self.config.max_batch_size, self.config.max_batch_delay_ms)
            # Callers that went away (cancelled futures) need no computation.
            batch = [item for item in batch if not item.future.done()]
            if batch:
                await self._run(loop, batch)

    async def _run(self, loop, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        self._running = len(batch)
        model = self.model  # a swap() now takes effect at the next batch
        try:
            probabilities = await loop.run_in_executor(
                self._executor, self._predict, model, [item.image for item in batch]
            )
        except Exception as exc:  # a failed batch fails its requests, never the loop
            log.exception("inference failed for a batch of %d", len(batch))
            self.stats.failed_batches += 1
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(InferenceError(f"inference failed: {exc}"))
            return
        finally:
            self._running = 0
        finished = time.perf_counter()
        inference_ms = (finished - started) * 1000
        self.metrics.inference.observe(finished - started)
        self.metrics.batch_size.observe(len(batch))
        self.stats.batches += 1
        self.stats.images += len(batch)
        self.stats.max_batch_size = max(self.stats.max_batch_size, len(batch))
        for item, row in zip(batch, probabilities, strict=True):
            self.metrics.queue_wait.observe(started - item.enqueued)
            if not item.future.done():
                item.future.set_result(
                    Prediction(row, (started - item.enqueued) * 1000, inference_ms, len(batch), model)
                )

    @staticmethod
    def _predict(model: Model, images: list[np.ndarray]) -> np.ndarray:
        return model.predict(np.stack(images))  # checks one row per image
