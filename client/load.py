"""A bounded load generator: `concurrency` loops send requests until a duration or a count
is reached, and the result reports throughput and latency percentiles."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    concurrency: int
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    @property
    def per_second(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    def summary(self) -> dict:
        return {
            "concurrency": self.concurrency,
            "ok": self.ok,
            "errors": len(self.errors),
            "seconds": round(self.seconds, 3),
            "per_second": round(self.per_second, 2),
            "p50_ms": round(self.percentile(50), 2),
            "p90_ms": round(self.percentile(90), 2),
            "p99_ms": round(self.percentile(99), 2),
        }


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile, interpolated between the two nearest ranks as numpy's default
    does (the client installs without numpy); nan for no values."""
    if not values:
        return float("nan")
    ranked = sorted(values)
    position = (len(ranked) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ranked) - 1)
    return ranked[low] + (ranked[high] - ranked[low]) * (position - low)


async def run_load(send: Callable[[], Awaitable[object]], *, concurrency: int, duration_s: float,
                   max_requests: int = 1_000_000) -> LoadResult:
    """Call `send()` from `concurrency` loops for `duration_s` seconds or `max_requests` calls."""
    result = LoadResult(concurrency)
    started = time.perf_counter()
    stop_at = started + duration_s
    budget = iter(range(max_requests))

    async def loop():
        for _ in budget:
            if time.perf_counter() >= stop_at:
                return
            t = time.perf_counter()
            try:
                await send()
            except Exception as exc:  # reported, never hidden
                result.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            result.latencies_ms.append((time.perf_counter() - t) * 1000)

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result
