"""asyncio helpers both tiers use: micro-batch collection (the worker's batcher and the
proxy's channels) and stopping background tasks."""

from __future__ import annotations

import asyncio


async def collect_batch(queue: asyncio.Queue, max_size: int, max_delay_ms: float) -> list:
    """Wait for one item, then take what else arrives within `max_delay_ms`, up to `max_size`."""
    loop = asyncio.get_running_loop()
    batch = [await queue.get()]
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
