"""Forward one preprocessed image to a worker, retrying elsewhere until it is answered.

Every request ends in exactly one answer: a result, the worker's own 4xx (bad input is
not retried), 503 when no live worker is left to try, or 504 when the deadline passes.
A worker that fails or times out is ejected at once and the request moves on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from proxy.channel import ChannelFailed
from proxy.pool import WorkerHandle, WorkerPool
from worker.errors import ApiError
from worker.imaging import Preprocessing

# Worker answers that mean "try another worker" rather than "your input is bad".
RETRY_ELSEWHERE = {500, 503}


@dataclass
class Forwarded:
    result: dict
    handle: WorkerHandle
    attempts: int
    forward_ms: float


@dataclass
class ForwardStats:
    retries: int = 0
    timeouts: int = 0


async def forward(
    pool: WorkerPool,
    stats: ForwardStats,
    image_for: Callable[[Preprocessing], Awaitable[np.ndarray]],
    k: int,
    *,
    worker_timeout_s: float,
    deadline: float,
    request_id: str = "",
    version: str | None = None,
    strict: bool = False,
) -> Forwarded:
    """`image_for(preprocessing)` returns the image prepared for a worker's model input.
    `version` picks the workers serving it; unless `strict` (the caller asked for it), any
    worker will do once none of that version is left."""
    # Handles, not worker ids: when Consul changes a worker's Meta (a new model version)
    # the pool replaces its handle, and the fresh handle of that same worker may be tried.
    tried: set[WorkerHandle] = set()
    attempts = 0
    last_error = "no live worker"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ApiError(504, "timeout", f"no worker answered in time ({attempts} attempts: {last_error})")
        handle = pool.choose(exclude=tried, version=version)
        if handle is None and version is not None and not strict:
            handle = pool.choose(exclude=tried)
        if handle is None:
            which = f"serving version {version} " if version and strict else ""
            raise ApiError(503, "no_worker", f"no live worker {which}can take the request ({last_error})",
                           {"Retry-After": "1"})
        if k > handle.num_labels:
            raise ApiError(422, "invalid_parameter", f"k must be from 1 to {handle.num_labels}, got {k}")
        if attempts:
            stats.retries += 1
        attempts += 1
        tried.add(handle)
        # Outstanding from the moment it is chosen: a handle being replaced stays open
        # until this request is done with it (decoding included).
        handle.outstanding += 1
        try:
            image = await image_for(handle.preprocessing)
            started = time.perf_counter()
            result = await asyncio.wait_for(handle.channel.submit(image, k, request_id), min(worker_timeout_s, remaining))
        except TimeoutError:
            stats.timeouts += 1
            last_error = f"{handle.id} timed out"
            pool.eject(handle, "timed out")
            continue
        except ChannelFailed as exc:
            last_error = f"{handle.id}: {exc}"
            if exc.status is not None and exc.status not in RETRY_ELSEWHERE:
                raise ApiError(exc.status, exc.code or "worker_error", str(exc)) from None
            if exc.code != "overloaded":
                pool.eject(handle, str(exc))
            continue
        finally:
            handle.outstanding -= 1
        forward_ms = (time.perf_counter() - started) * 1000
        if "error" in result:
            err = result["error"]
            status = int(err.get("status", 500))
            last_error = f"{handle.id}: {err.get('message')}"
            if status in RETRY_ELSEWHERE:
                if err.get("code") != "overloaded":
                    pool.eject(handle, err.get("message", "error"))
                continue
            raise ApiError(status, err.get("code", "worker_error"), err.get("message", ""))
        handle.served += 1
        return Forwarded(result, handle, attempts, forward_ms)
