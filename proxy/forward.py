"""Forward one image to a worker, retrying elsewhere until it is answered.

Every request ends in exactly one answer: a result; the worker's answer when the fault is
the client's (a `k` the model cannot give); 502 when a worker refuses the proxy's own
message (a token or shape mismatch: the proxy and the workers disagree on configuration,
which is not the client's fault); 503 when no live worker is left to try; 504 when the
deadline passes (the worker is told it, and refuses an image it could not answer in
time). A worker that fails or times out counts towards its ejection (proxy/pool.py) and
the request moves on; one that is merely full is kept and the request moves on. Retries
spend the pool's retry budget: past it, a fast 503 instead of more load on failing workers. What went wrong is
logged with the request id; the client gets a generic message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from edge.app import decode_image
from edge.errors import ApiError, bad_top_k, retry_later
from edge.preprocessing import Preprocessing
from proxy.channel import WorkerError
from proxy.pool import WorkerHandle, WorkerPool
from worker.protocol import BUSY_CODES, CLIENT_CODES, ErrorInfo, ItemResult

log = logging.getLogger(__name__)
DEFAULT_TOP_K = 5  # predictions when the request names no k (fewer when the model has fewer classes)


class DecodedOnce:
    """`image_for` for forward(): an upload decoded once per distinct model input, so a
    retry on a worker with the same input reuses it; `ms` is the decoding time spent."""

    def __init__(self, app, data: bytes):
        self.app, self.data = app, data
        self.ms = 0.0
        self._images: dict[Preprocessing, np.ndarray] = {}

    async def __call__(self, prep: Preprocessing) -> np.ndarray:
        if prep not in self._images:
            started = time.perf_counter()
            self._images[prep] = await decode_image(self.app, self.data, prep)
            self.ms += (time.perf_counter() - started) * 1000
        return self._images[prep]


@dataclass
class Forwarded:
    result: ItemResult
    handle: WorkerHandle
    forward_ms: float
    attempts: int
    model: str


@dataclass
class ForwardStats:
    retries: int = 0
    timeouts: int = 0


@dataclass
class Route:
    """Where a request may go: workers serving `model`; `version` picks those serving that
    version and, unless `strict` (the caller asked for it), any version will do once none
    of that one is left."""

    model: str
    version: str | None = None
    strict: bool = False

    def choose(self, pool: WorkerPool, tried: set[WorkerHandle]) -> WorkerHandle | None:
        handle = pool.choose(self.model, exclude=tried, version=self.version)
        if handle is None and self.version is not None and not self.strict:
            handle = pool.choose(self.model, exclude=tried)
        return handle


def _on_worker_error(pool: WorkerPool, handle: WorkerHandle, exc: WorkerError, request_id: str) -> ErrorInfo | None:
    """Decide what a worker's failure means: relay (the client's fault), 502 (a proxy/worker
    mismatch), or return to try another worker; the pool counts it towards ejecting this
    one, unless the worker was only full or too far behind for the deadline (that refusal
    is returned: the answer if no other worker takes the request)."""
    err = exc.error
    if err is not None and err.code in CLIENT_CODES:
        pool.answered(handle, ok=True)  # the worker is fine; the request was not
        raise ApiError(err.status, err.code, err.message)
    if err is not None and err.status < 500:
        log.error("worker %s refused the proxy's message (check --auth-token and the model on both tiers): "
                  "%s request_id=%s", handle.id, exc, request_id)
        raise ApiError(502, "worker_rejected", "a worker refused the proxy's request: the proxy and the "
                                               "workers are configured differently")
    pool.answered(handle, ok=False, refused=err is not None and err.code in BUSY_CODES)
    return err if err is not None and err.code in BUSY_CODES else None


def _unanswered(route: Route, refused: ErrorInfo | None, over_budget: bool) -> ApiError:
    """Why no worker will answer: the last worker's refusal in its own words (every one
    that could take it was full, or too far behind for the deadline), else the retry budget
    is spent, else no live worker serves the model."""
    if refused is not None:
        return ApiError(refused.status, refused.code, refused.message,
                        {"Retry-After": "1"} if refused.status == 503 else None)
    if over_budget:
        return retry_later("overloaded", "retries are over the proxy's budget: the workers are failing or full")
    which = f" version {route.version}" if route.version and route.strict else ""
    return retry_later("no_worker", f"no live worker serving {route.model}{which} could take the request")


async def forward(
    pool: WorkerPool,
    stats: ForwardStats,
    image_for: Callable[[Preprocessing], Awaitable[np.ndarray]],
    k: int,
    *,
    worker_timeout_s: float,
    deadline: float,
    request_id: str = "",
    route: Route,
    probabilities: bool = False,
) -> Forwarded:
    """`image_for(preprocessing)` returns the image prepared for a worker's model input;
    `k` 0 means the default. `deadline` (monotonic) travels to the worker; a retry needs
    time left and the pool's retry budget."""
    # Handles, not worker ids: when Consul changes a worker's Meta (a new model version)
    # the pool replaces its handle, and the fresh handle of that same worker may be tried.
    tried: set[WorkerHandle] = set()
    refused: ErrorInfo | None = None  # the last worker's refusal (full, or too far behind for the deadline)
    pool.budget.request(time.monotonic())
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            log.warning("no worker answered in time after %d attempts request_id=%s", len(tried), request_id)
            raise ApiError(504, "timeout", f"no worker answered in time ({len(tried)} attempts)")
        handle = route.choose(pool, tried)
        if handle is None or (tried and not pool.budget.try_retry(time.monotonic())):
            raise _unanswered(route, refused, over_budget=handle is not None)
        served = handle.meta.models[route.model]
        k = k or min(DEFAULT_TOP_K, served.num_labels)
        if k > served.num_labels:
            raise bad_top_k(k, served.num_labels)
        if tried:
            stats.retries += 1
        tried.add(handle)
        wait_ms = handle.balance.predicted_wait_ms(time.monotonic())
        if wait_ms > remaining * 1000:  # refused here, before decoding: it could only be answered late
            refused = ErrorInfo(504, "timeout", f"the queue's predicted wait ({wait_ms:.0f} ms) exceeds the "
                                                f"{remaining * 1000:.0f} ms this request has left")
            continue
        result = await _attempt(pool, stats, handle, image_for, k, route.model, probabilities,
                                worker_timeout_s, deadline, request_id)
        if isinstance(result, tuple):
            return Forwarded(*result, len(tried), route.model)
        refused = result or refused


async def _attempt(pool: WorkerPool, stats: ForwardStats, handle: WorkerHandle, image_for, k: int, model: str,
                   probabilities: bool, worker_timeout_s: float, deadline: float,
                   request_id: str) -> tuple[ItemResult, WorkerHandle, float] | ErrorInfo | None:
    """One try at `handle`: (result, handle, forward ms); else, to try another worker, the
    worker's refusal or None (None also when the deadline passed: the worker is not blamed)."""
    remaining = deadline - time.monotonic()
    # Outstanding from the moment it is chosen: a handle being replaced stays open until
    # this request is done with it (decoding included).
    handle.begin()
    try:
        image = await image_for(handle.meta.preprocessing(model))
        started = time.perf_counter()
        result = await asyncio.wait_for(
            handle.channel.submit(image, k, request_id, probabilities, model, deadline=deadline),
            min(worker_timeout_s, remaining))
    except TimeoutError:
        if remaining >= worker_timeout_s:  # the worker's own time limit, not the request's
            stats.timeouts += 1
            pool.answered(handle, ok=False)
        return None
    except WorkerError as exc:
        log.info("attempt on %s failed: %s request_id=%s", handle.id, exc, request_id)
        return _on_worker_error(pool, handle, exc, request_id)
    finally:
        handle.end()
    handle.served += 1
    pool.answered(handle, ok=True)
    return result, handle, (time.perf_counter() - started) * 1000
