"""asyncio helpers both tiers use: micro-batch collection (the worker's batcher and the
proxy's channels) and stopping background tasks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def collect_batch(queue: asyncio.Queue, max_size: int, max_delay_ms: float,
                        busy: Callable[[], bool] = lambda: False) -> list:
    """Wait for one item and take what is already queued. An item that finds nothing else
    waiting, and nothing `busy()` (a batch still running), goes at once: no batching delay
    when idle. Otherwise wait up to `max_delay_ms` for more, up to `max_size`."""
    loop = asyncio.get_running_loop()
    batch = [await queue.get()]
    while len(batch) < max_size and not queue.empty():
        batch.append(queue.get_nowait())
    if len(batch) == 1 and not busy():
        return batch  # idle: straight on
    deadline = loop.time() + max_delay_ms / 1000
    while len(batch) < max_size:
        if not queue.empty():
            batch.append(queue.get_nowait())
            continue
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            batch.append(await asyncio.wait_for(queue.get(), remaining))
        except TimeoutError:
            break
    return batch


async def cancel(*tasks: asyncio.Task | None) -> None:
    """Cancel background tasks and wait until they have stopped."""
    live = [t for t in tasks if t is not None]
    for task in live:
        task.cancel()
    await asyncio.gather(*live, return_exceptions=True)
