"""Bounded load generators, each stopping by itself after a duration or a count:
closed-loop (`concurrency` loops, each sending when its last answer came) and open-loop
(requests at scheduled arrival times, whatever came back: the latency of a request counts
from its scheduled time, so queueing shows instead of slowing the sender: no
coordinated omission)."""

from __future__ import annotations

import asyncio
import math
import random
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


@dataclass
class OpenLoopResult:
    """What an open-loop run saw: every latency counts from the request's scheduled time,
    so a slow answer shows as latency instead of delaying the next request."""

    rate: float
    arrivals: str
    slo_ms: float
    seconds: float = 0.0
    scheduled: int = 0
    latencies_ms: list[float] = field(default_factory=list)  # answered 200, from the scheduled time
    errors: dict[str, int] = field(default_factory=dict)  # what went wrong, counted
    error_latencies_ms: list[float] = field(default_factory=list)  # refusals too: fast or not
    not_sent: int = 0  # past max_in_flight: the generator itself could not keep up
    max_lateness_ms: float = 0.0  # how far behind schedule a send started

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    def summary(self) -> dict:
        good = sum(1 for ms in self.latencies_ms if ms <= self.slo_ms)
        seconds = self.seconds or float("nan")
        return {
            "rate": self.rate, "arrivals": self.arrivals, "seconds": round(self.seconds, 3),
            "scheduled": self.scheduled, "ok": self.ok, "errors": sum(self.errors.values()),
            "not_sent": self.not_sent, "error_kinds": dict(self.errors),
            "throughput": round(self.ok / seconds, 2),
            "goodput": round(good / seconds, 2), "slo_ms": self.slo_ms, "ok_past_slo": self.ok - good,
            "p50_ms": round(percentile(self.latencies_ms, 50), 2),
            "p90_ms": round(percentile(self.latencies_ms, 90), 2),
            "p99_ms": round(percentile(self.latencies_ms, 99), 2),
            "p999_ms": round(percentile(self.latencies_ms, 99.9), 2),
            "error_p99_ms": round(percentile(self.error_latencies_ms, 99), 2),
            "max_lateness_ms": round(self.max_lateness_ms, 2),
        }


def arrival_times(rate: float, duration_s: float, arrivals: str = "poisson", seed: int = 1) -> list[float]:
    """Offsets in seconds of every request in `duration_s`: exponential gaps (a Poisson
    process) or even ones ("constant"); seeded, so two runs send the same schedule."""
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be positive")
    if arrivals == "constant":
        return [i / rate for i in range(int(rate * duration_s))]
    if arrivals != "poisson":
        raise ValueError(f"arrivals must be poisson or constant, got {arrivals!r}")
    rng, times, t = random.Random(seed), [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration_s:
            return times
        times.append(t)


async def run_open_loop(send: Callable[[], Awaitable[object]], *, rate: float, duration_s: float,
                        arrivals: str = "poisson", slo_ms: float = 200.0, max_in_flight: int = 4096,
                        seed: int = 1) -> OpenLoopResult:
    """Call `send()` at the scheduled times, whether or not earlier calls have answered.
    A call that raises is an error, counted by its text's first 80 characters; beyond
    `max_in_flight` unanswered calls a scheduled one is not sent and is counted as such."""
    result = OpenLoopResult(rate, arrivals, slo_ms)
    schedule = arrival_times(rate, duration_s, arrivals, seed)
    result.scheduled = len(schedule)
    loop = asyncio.get_running_loop()
    started = loop.time()
    in_flight: set[asyncio.Task] = set()

    async def one(at: float) -> None:
        try:
            await send()
        except Exception as exc:  # reported, never hidden
            kind = f"{type(exc).__name__}: {exc}"[:80]
            result.errors[kind] = result.errors.get(kind, 0) + 1
            result.error_latencies_ms.append((loop.time() - at) * 1000)
            return
        result.latencies_ms.append((loop.time() - at) * 1000)

    for offset in schedule:
        at = started + offset
        delay = at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        result.max_lateness_ms = max(result.max_lateness_ms, (loop.time() - at) * 1000)
        if len(in_flight) >= max_in_flight:
            result.not_sent += 1
            continue
        task = asyncio.create_task(one(at))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.gather(*in_flight)
    result.seconds = loop.time() - started
    return result
