"""The worker's ZeroMQ endpoint: batched uint8 tensors in, per-image results out.

A ROUTER socket, so many proxies (DEALER sockets) can talk to one worker and each reply
goes back to its sender. Every image of an incoming batch is queued in its model's
batcher, so proxy batches merge with direct HTTP traffic into the largest batches the
load allows. Each message is for one model (its header's "model"; none: the default).
A malformed message gets an error reply when it carries a batch id and is
dropped with a log line when it does not; nothing on the wire can stop the loop.

A proxy whose caller gave up sends a Cancel naming the item: its image leaves the queue
uncomputed (a batch already running is not stopped) and its result is a 499 error.
"""

from __future__ import annotations

import asyncio
import logging
import time

import zmq
import zmq.asyncio

from edge.auth import token_matches
from edge.deadline import within
from edge.errors import ApiError, bad_top_k
from edge.request_log import QUIET_STATUSES, access_log
from edge.tasks import cancel
from worker.batcher import Batcher
from worker.protocol import BatchReply, BatchRequest, Cancel, ErrorInfo, ItemResult, ProtocolError, decode_message
from worker.service import WorkerState, classify_image

log = logging.getLogger(__name__)
LINGER_S = 0.5  # at close, for replies still in libzmq's queue; a peer gone or stuck forfeits them
CANCELLED = ErrorInfo(499, "cancelled", "the caller gave up before this image was computed")


def _error(exc: ApiError) -> ErrorInfo:
    return ErrorInfo(exc.status, exc.code, exc.message)


class ZmqEndpoint:
    def __init__(self, state: WorkerState, host: str, port: int, max_message_bytes: int):
        self.state = state
        self._context = zmq.asyncio.Context()
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        # A peer that sends more than this is disconnected by libzmq, before we see it.
        self._socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        bind_host = "*" if host in ("", "0.0.0.0") else host
        if port:
            self._socket.bind(f"tcp://{bind_host}:{port}")
            self.port = port
        else:
            self.port = self._socket.bind_to_random_port(f"tcp://{bind_host}")
        self._task: asyncio.Task | None = None
        self._handlers: set[asyncio.Task] = set()
        self._items: dict[tuple[bytes, str], asyncio.Task] = {}  # (peer, item id): the task computing it

    def start(self) -> None:
        self._task = asyncio.create_task(self._receive(), name="zmq-endpoint")

    async def close(self) -> None:
        """Stop receiving, let the handlers still running send their replies (bounded),
        then close: replies libzmq has not yet sent get LINGER_S to go out."""
        await cancel(self._task)
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=1.0)
        self._socket.close(linger=int(LINGER_S * 1000))
        await asyncio.get_running_loop().run_in_executor(None, self._context.term)  # waits out the linger

    async def _receive(self) -> None:
        while True:
            frames = await self._socket.recv_multipart(copy=False)
            task = asyncio.create_task(self._handle(frames))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _handle(self, frames: list[zmq.Frame]) -> None:
        identity, payload = frames[0].bytes, frames[1:]
        worker = self.state.worker_id
        try:
            parts = [payload[0].bytes, *(f.buffer for f in payload[1:])] if payload else []
            message = decode_message(parts)
        except ProtocolError as exc:
            if exc.batch is None:
                log.warning("dropped a malformed ZeroMQ message: %s", exc)
                return
            await self._reply(identity, BatchReply(exc.batch, worker, error=ErrorInfo(400, "bad_message", str(exc))))
            return
        if isinstance(message, Cancel):
            for item_id in message.ids:  # ids already answered, or never seen, are no one's
                task = self._items.get((identity, item_id))
                if task is not None:
                    task.cancel()
            return
        try:
            batcher = self._check(message)
        except ApiError as exc:
            await self._reply(identity, BatchReply(message.batch, worker, error=_error(exc)))
            return
        await self._classify(identity, message, batcher)

    async def _classify(self, identity: bytes, request: BatchRequest, batcher: Batcher) -> None:
        """Each image in its own task, which a Cancel from the same peer can end; then one reply."""
        keys = [(identity, item_id) for item_id in request.ids]
        deadlines = request.deadlines_ms or [None] * len(request.ids)
        tasks = [asyncio.ensure_future(self._one(batcher, item_id, image, request.k, request.probabilities,
                                                 None if ms is None else ms / 1000))
                 for item_id, image, ms in zip(request.ids, request.images, deadlines)]
        self._items.update(zip(keys, tasks))
        self.state.in_flight += len(request.ids)
        started = time.perf_counter()
        try:
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self.state.in_flight -= len(request.ids)
            for key, task in zip(keys, tasks):
                if self._items.get(key) is task:  # a peer reusing an id at once replaced it: not ours to drop
                    del self._items[key]
        results = []
        for item_id, outcome in zip(request.ids, outcomes):
            if isinstance(outcome, asyncio.CancelledError):
                outcome = ItemResult(item_id, error=CANCELLED)
            elif isinstance(outcome, BaseException):
                raise outcome
            results.append(outcome)
        self._log(request, results, (time.perf_counter() - started) * 1000)
        await self._reply(identity, BatchReply(request.batch, self.state.worker_id, batcher.model.name, results,
                                               load=self.state.load(batcher)))

    @staticmethod
    def _log(request: BatchRequest, results: list[ItemResult], ms: float) -> None:
        """One access-log line per image, refused and abandoned ones at debug level (as over HTTP)."""
        for rid, result in zip(request.request_ids or request.ids, results):
            status = result.error.status if result.error else 200
            access_log.log(logging.DEBUG if status in QUIET_STATUSES else logging.INFO,
                           "ZMQ %s %d %.1f ms request_id=%s", request.batch, status, ms, rid,
                           extra={"request_id": rid, "batch": request.batch, "status": status,
                                  "duration_ms": round(ms, 3), "via": "zmq"})

    def _check(self, request: BatchRequest) -> Batcher:
        """The batcher of the model the message is for; ApiError when it cannot be served."""
        token = self.state.config.edge.auth_token
        if token and not token_matches(request.token, token):
            raise ApiError(401, "unauthorized", "a valid token is required")
        self.state.check_ready()
        batcher = self.state.batcher(request.model)
        model = batcher.model
        if request.images.shape[1:] != model.input_shape:
            raise ApiError(400, "wrong_shape", f"images must be {model.input_shape}, got {request.images.shape[1:]}")
        if not 1 <= request.k <= len(model.labels):
            raise bad_top_k(request.k, len(model.labels))
        return batcher

    async def _one(self, batcher: Batcher, item_id: str, image, k: int, probabilities: bool,
                   timeout_s: float | None) -> ItemResult:
        try:  # each image is admitted on its own: a full queue refuses the rest, not the batch
            self.state.check_deadline(batcher, timeout_s)
            with self.state.admit(batcher) as admission:
                predictions, p = await within(timeout_s, classify_image(self.state, admission, image, k))
        except ApiError as exc:
            return ItemResult(item_id, error=_error(exc))
        return ItemResult(item_id, predictions, p.model.version, round(p.queue_ms, 3), round(p.inference_ms, 3),
                          p.batch_size, probabilities=p.probabilities if probabilities else None)

    async def _reply(self, identity: bytes, reply: BatchReply) -> None:
        try:
            await self._socket.send_multipart([identity, *reply.encode()])
        except zmq.ZMQError as exc:  # the peer went away; nothing to answer
            log.warning("could not send a ZeroMQ reply: %s", exc)
