"""One proxy -> worker ZeroMQ channel, with micro-batching.

Requests for the same worker and model that queue while a batch is out at it (and those
arriving within `max_delay_ms` then, up to `max_batch_size`) leave as one message: one JSON header
and one uint8 tensor frame; a request to an idle channel leaves at once. Replies are
matched to requests by batch id and item id.

A request whose caller gave up (its client disconnected, or the proxy's timeout for this
worker passed) after its image was sent is named in a Cancel message, one per turn of
the event loop for all such items, so the worker drops the image if it is still waiting.

Failure is loud, never silent: a socket monitor reports the TCP connection dropping
(a killed worker), which fails every request waiting on this channel at once with
WorkerError and tells the pool (`on_disconnect`), so the worker is ejected and its
requests retried elsewhere without waiting for a timeout or for Consul's TTL.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import zmq
import zmq.asyncio
from zmq.utils.monitor import recv_monitor_message

from edge.tasks import cancel, collect_batch
from worker.protocol import BatchReply, BatchRequest, Cancel, ErrorInfo, ItemResult, ProtocolError, WorkerLoad

log = logging.getLogger(__name__)


class WorkerError(Exception):
    """A request did not get a result from this worker: the worker refused the whole batch
    or this item (`error` says how), or it was unreachable (`error` is None). The message
    is for logs, never for clients."""

    def __init__(self, message: str, error: ErrorInfo | None = None):
        super().__init__(message)
        self.error = error


@dataclass
class _Item:
    id: str
    image: np.ndarray
    k: int
    request_id: str
    probabilities: bool
    model: str
    future: asyncio.Future
    deadline: float | None = None  # time.monotonic() by which the caller needs the answer
    sent: bool = False


class WorkerChannel:
    def __init__(self, context: zmq.asyncio.Context, endpoint: str, max_batch_size: int, max_delay_ms: float,
                 token: str, on_disconnect: Callable[[str], None],
                 on_load: Callable[[WorkerLoad], None] = lambda load: None):
        self.endpoint = endpoint
        self.token = token
        self.on_disconnect = on_disconnect
        self.on_load = on_load  # the load the worker reports with each reply
        self.max_batch_size = max_batch_size
        self.max_delay_ms = max_delay_ms
        self.batches_sent = 0
        self._socket = context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._monitor = self._socket.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECTED)
        self._socket.connect(endpoint)
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._pending: dict[str, list[_Item]] = {}
        self._ids = itertools.count()
        self._prefix = uuid.uuid4().hex[:8]
        self.failed: str | None = None
        self._waiting_since = 0.0  # when images were last sent to an idle worker, or last answered
        self._cancelled: list[str] = []  # items sent whose callers gave up, not yet told to the worker
        self._cancels: set[asyncio.Task] = set()
        self._tasks = [asyncio.create_task(c) for c in (self._send_loop(), self._recv_loop(), self._watch())]

    def silent_for(self, now: float) -> float:
        """Seconds the worker has answered nothing while images sent to it wait (0 when none
        wait): a frozen or hung worker's grows without bound."""
        return now - self._waiting_since if self._pending else 0.0

    @property
    def awaiting_reply(self) -> int:
        """Images sent to the worker and not yet answered."""
        return sum(len(batch) for batch in self._pending.values())

    async def submit(self, image: np.ndarray, k: int, request_id: str = "", probabilities: bool = False,
                     model: str = "", deadline: float | None = None) -> ItemResult:
        """One image's result from `model` on the worker (with every class's probability when
        asked); WorkerError when there is none. The worker is told the time left before
        `deadline` (monotonic), and refuses an image it could not answer by then."""
        if self.failed:
            raise WorkerError(self.failed)
        future = asyncio.get_running_loop().create_future()
        item = _Item(f"{self._prefix}-{next(self._ids)}", image, k, request_id, probabilities, model, future,
                     deadline)
        self._queue.put_nowait(item)
        try:
            return await future
        except asyncio.CancelledError:  # not sent yet: the send loop skips it; sent: tell the worker
            if item.sent and not self.failed:
                self._cancel(item.id)
            raise

    def _cancel(self, item_id: str) -> None:
        if not self._cancelled:  # the first this turn: send them all once the turn is over
            asyncio.get_running_loop().call_soon(self._send_cancels)
        self._cancelled.append(item_id)

    def _send_cancels(self) -> None:
        ids, self._cancelled = self._cancelled, []
        task = asyncio.ensure_future(self._send_cancel(ids))
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def _send_cancel(self, ids: list[str]) -> None:
        try:
            await self._socket.send_multipart(Cancel(ids).encode())
        except zmq.ZMQError as exc:  # the worker is gone: nothing left to cancel there
            log.debug("%s: could not send a cancel: %s", self.endpoint, exc)

    async def _send_loop(self) -> None:
        while True:
            # Wait for company only while a batch is out at the worker; an idle channel sends at once.
            batch = await collect_batch(self._queue, self.max_batch_size, self.max_delay_ms,
                                        busy=lambda: bool(self._pending))
            by_model: dict[str, list[_Item]] = {}
            for item in batch:
                by_model.setdefault(item.model, []).append(item)
            for model, items in by_model.items():  # one message per model: batches never mix models
                await self._send(model, items)

    async def _send(self, model: str, batch: list[_Item]) -> None:
        batch = [item for item in batch if not item.future.done()]  # callers gone (before or while others went)
        if not batch:
            return
        batch_id = f"{self._prefix}-b{next(self._ids)}"
        now = time.monotonic()
        request = BatchRequest(
            batch_id, [i.id for i in batch], np.stack([i.image for i in batch]),
            model=model, k=max(i.k for i in batch), token=self.token,
            request_ids=[i.request_id for i in batch], probabilities=any(i.probabilities for i in batch),
            deadlines_ms=[None if i.deadline is None else round((i.deadline - now) * 1000, 1) for i in batch],
        )
        if not self._pending:
            self._waiting_since = time.monotonic()
        self._pending[batch_id] = batch
        for item in batch:
            item.sent = True
        try:
            await self._socket.send_multipart(request.encode(), copy=False)
            self.batches_sent += 1
        except zmq.ZMQError as exc:
            self._fail_batch(self._pending.pop(batch_id), WorkerError(f"send failed: {exc}"))

    async def _recv_loop(self) -> None:
        while True:
            frames = await self._socket.recv_multipart()
            try:
                reply = BatchReply.decode(frames)
            except ProtocolError as exc:
                log.warning("%s: dropped a malformed reply: %s", self.endpoint, exc)
                continue
            self._waiting_since = time.monotonic()
            if reply.load is not None:
                self.on_load(reply.load)
            batch = self._pending.pop(reply.batch, None)
            if batch is not None:  # None: its requests already gave up (timeout)
                self._resolve(batch, reply)

    def _resolve(self, batch: list[_Item], reply: BatchReply) -> None:
        if reply.error:
            self._fail_batch(batch, WorkerError(f"{reply.worker} refused the batch: {reply.error}", reply.error))
            return
        results = {r.id: r for r in reply.results}
        for item in batch:
            result = results.get(item.id)
            if item.future.done():
                continue
            if result is None:
                item.future.set_exception(WorkerError(f"reply has no result for {item.id}"))
            elif result.error:
                item.future.set_exception(WorkerError(f"{reply.worker}: {result.error}", result.error))
            else:
                result.predictions = result.predictions[: item.k]
                item.future.set_result(result)

    async def _watch(self) -> None:
        while True:
            event = await recv_monitor_message(self._monitor)
            if event["event"] == zmq.EVENT_DISCONNECTED:
                reason = f"lost the connection to {self.endpoint}"
                self.fail(reason)
                self.on_disconnect(reason)

    def fail(self, reason: str) -> None:
        """Mark the channel dead and fail everything waiting on it."""
        if not self.failed:
            self.failed = reason
        for batch in self._pending.values():
            self._fail_batch(batch, WorkerError(reason))
        self._pending.clear()
        while not self._queue.empty():
            self._fail_batch([self._queue.get_nowait()], WorkerError(reason))

    @staticmethod
    def _fail_batch(batch: list[_Item], exc: Exception) -> None:
        for item in batch:
            if not item.future.done():
                item.future.set_exception(exc)

    async def close(self) -> None:
        self.fail("channel closed")
        await cancel(*self._tasks, *self._cancels)
        self._socket.disable_monitor()
        self._monitor.close(linger=0)
        self._socket.close(linger=0)
