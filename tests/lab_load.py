"""A bounded load from inside a network namespace (the multi-host lab's client host):
`python -m tests.lab_load --photo P --requests N [--proxy URL,...] [--dns HOST:PORT]
[--mode p2p|proxy|plain]` prints one JSON line: sent, answered, failed, retried, and the
first errors. `plain` posts straight to the first proxy with no client-side retry."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import aiohttp

from client import Client
from client.load import run_load


async def main(a) -> dict:
    photo = Path(a.photo).read_bytes()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s, \
            Client(a.proxy.split(",") if a.proxy else [], dns=a.dns, timeout_s=a.timeout) as client:
        async def plain():
            form = aiohttp.FormData()
            form.add_field("data", photo, filename="p.jpg")
            async with s.post(a.proxy.split(",")[0], data=form) as r:
                if r.status != 200:
                    raise RuntimeError(f"{r.status}: {(await r.read())[:100]!r}")
                await r.read()

        send = plain if a.mode == "plain" else (lambda: client.classify(photo, mode=a.mode))
        result = await run_load(send, concurrency=a.concurrency, duration_s=a.seconds, max_requests=a.requests)
        return {"sent": result.ok + len(result.errors), "answered": result.ok, "failed": len(result.errors),
                "retried": client.stats["retries"], "errors": result.errors[:3],
                "workers": sorted(client.known_workers)}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--photo", required=True)
    p.add_argument("--proxy", default="")
    p.add_argument("--dns", default=None)
    p.add_argument("--mode", choices=["p2p", "proxy", "plain"], default="p2p")
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request attempt (client library)")
    print(json.dumps(asyncio.run(main(p.parse_args()))), flush=True)
    sys.exit(0)
