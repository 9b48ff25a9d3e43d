"""Dynamic batching: one bounded queue and one inference thread per served model, so
images for different models are never batched together.

Room in the queue is reserved when a request is admitted (`admit()`), once its body is
read and before it is decoded, and used when the preprocessed uint8 image is queued; a
queue already `full` refuses a request before its body is read. Under overload a request
is refused before any decoding is spent on it (an image decoded and then refused for want
of room cost the decode pool most of the CPU the model needed; see docs/performance/history.md,
"Overload refusals"), and a slow upload holds no room while its bytes arrive. Images that
arrive preprocessed (ZeroMQ) use `submit()`, both steps at once.

A collector task takes the first waiting image and whatever else is queued (when others
were queued, it also waits up to `max_batch_delay_ms` for more), up to
`max_batch_size`, and runs the batch on an inference thread. An image that finds the
worker idle goes straight to the model. While the model is busy the next batch
accumulates, so under load batches grow by themselves.

A model that runs several batches at once (`Model.concurrency` > 1: TFLite's one-thread
interpreters, one per core, "lanes") is fed differently. A lane runs its batch's images
one after another, so a big batch saves nothing and holds images that another lane,
finishing sooner, could be running: its batches are at most `LANE_BATCH` images. And one
batch more than there are lanes is handed out, ready in the executor's queue, so a lane
that finishes starts the next at once instead of after a round trip through the event
loop (docs/performance/history.md, "Batching on lanes": at c=32, p99 639 -> 487 ms, 1.03x -> 1.08x mosec).

The knobs mirror TF Serving's (max_batch_size, batch_timeout_micros,
max_enqueued_batches) and Triton's queue policy with rejection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from edge.priority import compute_pool
from edge.tasks import cancel, collect_batch
from worker.metrics import BatchMetrics, ModelMetrics
from worker.model import Model

log = logging.getLogger(__name__)

LANE_BATCH = 4  # most images per batch for a model with lanes (measured against 1, 2 and 32)


class QueueFullError(Exception):
    """No room for another image; the caller should answer 503 with Retry-After."""


class InferenceError(Exception):
    """The batch this request was in failed; the message says why."""


class Stopped(Exception):
    """The worker stopped (a drain that ran out of time) before this image was computed:
    the caller should answer 503, send it again elsewhere."""


@dataclass(frozen=True)
class BatchConfig:
    max_batch_size: int = 32
    max_batch_delay_ms: float = 2.0
    max_queue: int = 256  # images admitted (being decoded or queued); beyond, a fast 503
    max_queue_wait_ms: float = 0.0  # beyond this predicted wait, a fast 503 too; 0: no such bound


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
    taken: bool = False  # collected into a batch (or dropped there)
    abandoned: bool = False  # its caller went away while it waited in the queue


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
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()  # admit() keeps it within max_queue
        self._admitted = 0  # images with room reserved, not yet queued: being decoded
        self._abandoned = 0  # queued images whose callers went away: in the queue, but no one's wait
        # A swapped-in version of the same model has the same concurrency (same settings).
        lanes = model.concurrency > 1
        self._executor = compute_pool(model.concurrency, "inference")
        self._batch_size = min(config.max_batch_size, LANE_BATCH) if lanes else config.max_batch_size
        self._slots = model.concurrency + 1 if lanes else 1  # batches handed out at once
        self._task: asyncio.Task | None = None
        self._batches: dict[asyncio.Task, Model] = {}  # batches handed out, and the version each runs on
        self._slot_freed = asyncio.Event()
        self._running = 0  # images in the batches handed out (computing, or ready for a lane)
        self._closed = False
        # The worker's pace: ms an image at the rate batches recently finished while work was
        # waiting (so decoding, the event loop and the lanes all count), else compute time
        # over the batches that run at once (EWMA; 0 before the first batch). It predicts a
        # queue's wait, for deadlines, and proxies balance on it.
        self.service_ms = 0.0
        self._last_done = 0.0
        self._busy = False  # work was left waiting or running when the last batch finished

    @property
    def room(self) -> int:
        """Images the queue can still admit."""
        return self.config.max_queue - self._admitted - self._queue.qsize()

    @property
    def full(self) -> bool:
        return self.room < 1

    @property
    def depth(self) -> int:
        """Images admitted (being decoded), waiting or being computed, for callers still there."""
        return self._admitted + self._queue.qsize() - self._abandoned + self._running

    def predicted_wait_ms(self) -> float:
        """How long an image admitted now would wait before its batch starts: the images
        ahead of it at the recent pace (0 when none are: an idle worker takes anything, so
        its pace is always learnt anew)."""
        return self.depth * self.service_ms

    def check_room(self, count: int = 1) -> None:
        """QueueFullError when `count` more images would not fit."""
        if count > self.room:
            raise QueueFullError(f"{self.config.max_queue} images already admitted for {self.model.name}")

    def admit(self, count: int = 1) -> Admission:
        """Reserve room for `count` images (QueueFullError when there is none); use it as a
        context manager, so that room an image never takes is given back."""
        self.check_room(count)
        self._admitted += count
        return Admission(self, count)

    def start(self) -> None:
        self._task = asyncio.create_task(self._collect(), name=f"batcher-{self.model.name}")

    def swap(self, model: Model) -> None:
        """Serve `model` from the next batch on; the running batch finishes on the old one."""
        self.model = model

    async def close(self) -> None:
        """Stop now. Every image not yet answered (queued, or in a batch still running when
        a drain ran out of time) fails with Stopped, so its request is answered, not cut.
        The model's processes stop (the live version's, and a retired one's still running
        a batch), so no thread is left waiting on a hung one and the worker exits at once;
        an in-process runtime's thread finishes its batch unwaited. Closing twice is harmless."""
        self._closed = True
        models = {id(model): model for model in (self.model, *self._batches.values())}
        await cancel(self._task, *self._batches)  # each batch fails its own images
        while not self._queue.empty():
            _fail(self._queue.get_nowait(), Stopped("the worker stopped before computing this image"))
        for model in models.values():
            model.stop()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _release(self, count: int) -> None:
        self._admitted -= count

    async def _enqueue(self, image: np.ndarray) -> Prediction:
        if self._closed:  # decoded after close(): nothing would collect it
            raise Stopped("the worker stopped before computing this image")
        future = asyncio.get_running_loop().create_future()
        pending = _Pending(image, future)
        future.add_done_callback(lambda _: self._abandon(pending))
        self._queue.put_nowait(pending)
        return await future

    def _abandon(self, pending: _Pending) -> None:
        if pending.future.cancelled() and not pending.taken:
            pending.abandoned = True
            self._abandoned += 1

    async def submit(self, image: np.ndarray) -> Prediction:
        """Admit and queue a preprocessed image in one step."""
        with self.admit() as admission:
            return await admission.submit(image)

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while len(self._batches) >= self._slots:  # wait for a free slot
                self._slot_freed.clear()
                await self._slot_freed.wait()
            batch = await collect_batch(self._queue, self._batch_size, self.config.max_batch_delay_ms)
            for item in batch:
                item.taken = True
                self._abandoned -= item.abandoned
            # Callers that went away (cancelled futures) need no computation.
            batch = [item for item in batch if not item.future.done()]
            if batch:
                model = self.model  # a swap() takes effect at the next batch
                task = asyncio.create_task(self._run(loop, model, batch))
                self._batches[task] = model
                task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self._batches.pop(task, None)
        self._slot_freed.set()

    async def _run(self, loop, model: Model, batch: list[_Pending]) -> None:
        self._running += len(batch)
        try:
            started, finished, probabilities = await loop.run_in_executor(
                self._executor, self._predict, model, [item.image for item in batch]
            )
        except asyncio.CancelledError:  # close()
            for item in batch:
                _fail(item, Stopped("the worker stopped before this image's batch was computed"))
            raise
        except Exception as exc:  # a failed batch fails its requests, never the loop
            log.exception("inference failed for a batch of %d", len(batch))
            self.stats.failed_batches += 1
            for item in batch:
                _fail(item, InferenceError(f"inference failed: {exc}"))
            return
        finally:
            self._running -= len(batch)
        inference_ms = (finished - started) * 1000
        self._pace(finished, inference_ms, len(batch), model.concurrency)
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

    def _pace(self, finished: float, inference_ms: float, size: int, concurrency: int) -> None:
        if self.stats.batches >= concurrency:  # each interpreter's first batch is cold (weights packed)
            if self._busy:
                per_image = (finished - self._last_done) * 1000 / size
            else:
                per_image = inference_ms / size / concurrency
            self.service_ms = per_image if not self.service_ms else 0.8 * self.service_ms + 0.2 * per_image
        self._last_done, self._busy = max(self._last_done, finished), self.depth > 0

    @staticmethod
    def _predict(model: Model, images: list[np.ndarray]) -> tuple[float, float, np.ndarray]:
        """When the batch started (it may have waited for a lane) and finished, and its rows."""
        started = time.perf_counter()
        probabilities = model.predict(np.stack(images))  # checks one row per image
        return started, time.perf_counter(), probabilities


def _fail(item: _Pending, exc: Exception) -> None:
    if not item.future.done():  # its caller may have gone away
        item.future.set_exception(exc)


class Admission:
    """Room for some images in one batcher's queue, reserved by `Batcher.admit()`."""

    def __init__(self, batcher: Batcher, count: int):
        self._batcher = batcher
        self._left = count

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *_exc) -> None:
        self._batcher._release(self._left)  # room no image took (a bad image, a client gone)
        self._left = 0

    async def submit(self, image: np.ndarray) -> Prediction:
        """Queue one preprocessed image in room reserved for it; its prediction when computed."""
        if self._left <= 0:
            raise RuntimeError("more images submitted than admitted")
        self._left -= 1
        self._batcher._release(1)
        return await self._batcher._enqueue(image)
