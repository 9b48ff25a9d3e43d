"""Clients that give up: a burst of requests whose clients time out and disconnect, then
one fresh request. A server that computes every accepted image, whether or not anyone
still waits for it, makes the fresh request wait behind the abandoned ones; ours drops
them (docs/guide/worker.md, "Clients that give up").

`--v2-timeout`: the burst's clients send the Open Inference Protocol's `timeout`
parameter instead (tritonclient's `timeout=`) and wait for the answer: the server gives
up for them, with a 504 (docs/guide/protocols.md, "Timeouts").

Straight to a worker (the default model) and through the proxy: `--burst` requests at
once, each client giving up after `--give-up` seconds, then one request that waits as
long as it takes. Prints, per round: the burst's answers, when its last client was done
(answered or gone), the fresh request's latency, and how many images the worker computed
for the burst (its /stats).

    .venv/bin/python scripts/bench/abandoned.py [--burst 250] [--give-up 0.3] [--rounds 3] [--v2-timeout]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts" / "bench"))

from proxy_rate import V2_PATH, v2_base64_body  # noqa: E402
from suite import PHOTO  # noqa: E402

from tests.processes import local_cluster  # noqa: E402

HEADERS = {"Content-Type": "image/jpeg"}


async def computed(session: aiohttp.ClientSession, worker_url: str) -> int:
    """Images the worker has computed so far, once it has nothing in flight (bounded wait)."""
    for _ in range(300):
        async with session.get(worker_url + "/stats") as r:
            stats = await r.json()
        if stats["in_flight"] == 0:
            break
        await asyncio.sleep(0.1)
    return sum(model["images"] for model in stats["batching"].values())


async def burst(url: str, worker_url: str, photo: bytes, size: int, give_up_s: float, v2: bool) -> dict:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        before = await computed(session, worker_url)

        async def impatient() -> bool:
            try:
                async with session.post(url, data=photo, headers=HEADERS,
                                        timeout=aiohttp.ClientTimeout(total=give_up_s)) as r:
                    await r.read()
                    return r.status == 200
            except asyncio.TimeoutError:  # the client closes its connection: it gave up
                return False

        async def with_timeout(body: bytes) -> bool:  # the server gives up for it, with a 504
            async with session.post(url + V2_PATH.lstrip("/"), data=body) as r:
                await r.read()
                assert r.status in (200, 504), r.status
                return r.status == 200

        timeout = {"timeout": round(give_up_s * 1e6)}  # the v2 parameter, microseconds
        clients = [with_timeout(v2_base64_body(photo, timeout)) if v2 else impatient() for _ in range(size)]
        started = time.perf_counter()
        answered = sum(await asyncio.gather(*clients))
        burst_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        async with session.post(url, data=photo, headers=HEADERS) as r:
            await r.read()
            assert r.status == 200, r.status
        fresh_ms = (time.perf_counter() - started) * 1000
        return {"answered": answered, "gave_up": size - answered, "burst_ms": round(burst_ms, 1),
                "fresh_ms": round(fresh_ms, 1),
                "computed": await computed(session, worker_url) - before - 1}


def table(rows: list[dict], size: int, give_up_s: float) -> str:
    lines = [f"burst of {size}, giving up after {give_up_s:g} s; medians over the rounds", "",
             "| path | answered | gave up | last of the burst done, ms | fresh request ms "
             "| images computed for the burst |", "|---|---:|---:|---:|---:|---:|"]
    for path in dict.fromkeys(r["path"] for r in rows):
        mine = [r for r in rows if r["path"] == path]
        med = {k: statistics.median(r[k] for r in mine)
               for k in ("answered", "gave_up", "burst_ms", "fresh_ms", "computed")}
        lines.append(f"| {path} | {med['answered']:.0f} | {med['gave_up']:.0f} | {med['burst_ms']:.0f} "
                     f"| {med['fresh_ms']:.0f} | {med['computed']:.0f} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--burst", type=int, default=250)
    p.add_argument("--give-up", type=float, default=0.3, help="each burst client's timeout, seconds")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--v2-timeout", action="store_true", help="the burst sends the v2 timeout parameter and waits")
    p.add_argument("--out", type=Path, default=ROOT / "run" / "bench")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    photo, rows = PHOTO.read_bytes(), []
    quiet = ("--log-level", "warning")
    with local_cluster(a.out, "abandoned", quiet, quiet) as (worker, proxy):
        for r in range(1, a.rounds + 1):
            for path, url in (("worker", worker.url + "/"), ("proxy", proxy.url + "/")):
                result = asyncio.run(burst(url, worker.url, photo, a.burst, a.give_up, a.v2_timeout))
                row = {"path": path, "round": r, **result}
                print(json.dumps(row), flush=True)
                rows.append(row)
    print("\n" + table(rows, a.burst, a.give_up))
    (a.out / "abandoned.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
