"""A bounded load generator: `concurrency` loops send requests until a duration or a count
is reached, and the result reports throughput and latency percentiles."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np


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
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

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
