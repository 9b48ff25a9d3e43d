"""A request's deadline on the native route: the `X-Request-Timeout-Ms` header, the time
the client will wait for its answer. (The Open Inference Protocol carries its own, the
`timeout` parameter, and gRPC its call deadline.) Both tiers honour it: the proxy tells
the worker the time left, a worker refuses at once (504) an image its queue could not
answer in time, and an image still waiting when the time is up is dropped, never computed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from aiohttp import web

from edge.errors import ApiError

HEADER = "X-Request-Timeout-Ms"
T = TypeVar("T")


def header_timeout(request: web.Request) -> float | None:
    """The header's time in seconds; None when absent; 422 when it is not a positive number."""
    text = request.headers.get(HEADER)
    if text is None:
        return None
    try:
        ms = float(text)
    except ValueError:
        ms = -1.0
    if not 0 < ms < float("inf"):
        raise ApiError(422, "invalid_parameter", f"{HEADER} must be a positive number of milliseconds, got {text!r}")
    return ms / 1000


async def within(timeout_s: float | None, work: Awaitable[T]) -> T:
    """`work`, given up with a 504 when `timeout_s` passes first (its image leaves the queue
    uncomputed, as a departed client's does)."""
    if timeout_s is None:
        return await work
    try:
        async with asyncio.timeout(timeout_s) as limit:
            return await work
    except TimeoutError:
        if not limit.expired():
            raise
        raise ApiError(504, "timeout", f"the request's timeout of {timeout_s * 1000:.0f} ms passed "
                                       "before its answer") from None
