"""Overload: beyond its bounds a worker or the proxy refuses at once with 503 and
Retry-After, every accepted request is answered correctly, and memory stays bounded.
Latencies are printed for the record, never asserted."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import numpy as np
import pytest

from tests.conftest import ESPRESSO, rss_mb
from tests.processes import wait_for

pytestmark = pytest.mark.system


async def burst(url: str, photo: bytes, n: int) -> list[tuple[int, dict, dict, float]]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        async def one():
            form = aiohttp.FormData()
            form.add_field("data", photo, filename="p.jpg", content_type="image/jpeg")
            t = time.perf_counter()
            async with s.post(url, data=form) as r:
                return r.status, await r.json(), dict(r.headers), (time.perf_counter() - t) * 1000
        return await asyncio.gather(*(one() for _ in range(n)))


def check(results, capsys, label: str) -> None:
    statuses = {status for status, *_ in results}
    assert statuses <= {200, 503}, statuses
    refused = [(b, h, ms) for status, b, h, ms in results if status == 503]
    accepted = [(b, ms) for status, b, _, ms in results if status == 200]
    assert refused and accepted, f"expected both: {len(refused)} refused, {len(accepted)} accepted"
    assert all(b["error"]["code"] == "overloaded" and int(h["Retry-After"]) >= 1 for b, h, _ in refused)
    assert all(b["predictions"][0]["index"] == ESPRESSO for b, _ in accepted)
    with capsys.disabled():
        print(f"\n{label}: {len(accepted)} accepted (p50 {np.median([m for _, m in accepted]):.0f} ms, "
              f"max {max(m for _, m in accepted):.0f} ms), {len(refused)} refused "
              f"(p50 {np.median([m for *_, m in refused]):.0f} ms)")


async def test_worker_queue_bound(start_worker, coffee_jpeg, capsys):
    w = start_worker("--max-queue", "2", "--max-batch-size", "1")
    results = await burst(w.url, coffee_jpeg, 64)
    check(results, capsys, "worker, queue 2, 64 at once")
    before = rss_mb(w.proc.pid)
    for _ in range(5):
        await burst(w.url, coffee_jpeg, 64)
    assert rss_mb(w.proc.pid) - before < 30  # no unbounded queue behind the refusals


async def test_proxy_in_flight_bound(start_worker, start_proxy, coffee_jpeg, capsys):
    service = f"classifier-{uuid.uuid4().hex[:6]}"
    start_worker("--service-name", service)
    proxy = start_proxy("--service-name", service, "--max-in-flight", "4")
    wait_for(lambda: proxy.workers()["live"] == 1, what="live worker")
    results = await burst(proxy.url, coffee_jpeg, 64)
    check(results, capsys, "proxy, 4 in flight, 64 at once")
    assert proxy.workers()["in_flight"] == 0
