"""Slow uploads beside fast clients: phones on a slow link posting photos while others,
whose photos arrive at once, want answers. A server that reserves a place in its queue
before a body arrives lets the slow ones fill the queue while the model idles; ours
reserves once the body is read (docs/guide/worker.md, "Slow uploads").

Straight to a worker (the default model, `--max-queue` 256) and through the proxy:
`--fast` clients post coffee in a loop for `--seconds`, first alone, then while `--slow`
clients each take `--seconds` to upload theirs. Prints the fast clients' answers a
second, their refusals, and how the slow uploads ended.

    .venv/bin/python scripts/bench/slow_uploads.py [--slow 300] [--fast 16] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts" / "bench"))

from suite import PHOTO  # noqa: E402

from tests.processes import local_cluster  # noqa: E402

CHUNKS = 20  # a slow upload sends its photo in this many parts, evenly over the time it takes


async def slow_upload(url: str, photo: bytes, seconds: float) -> int | str:
    """One client on a slow link: the photo in CHUNKS parts over `seconds`; the status, or
    "reset" when the server answered before the body was in (a refusal with the queue
    full) and closed the connection while the client was still sending."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
                     f"Content-Length: {len(photo)}\r\nConnection: close\r\n\r\n".encode())
        step = len(photo) // CHUNKS + 1
        for start in range(0, len(photo), step):
            writer.write(photo[start:start + step])
            await writer.drain()
            await asyncio.sleep(seconds / CHUNKS)
        return int((await reader.readline()).split()[1])
    except ConnectionError:
        return "reset"
    finally:
        writer.close()


async def fast_client(session: aiohttp.ClientSession, url: str, photo: bytes, until: float, seen: Counter) -> None:
    while time.perf_counter() < until:
        async with session.post(url + "/", data=photo, headers={"Content-Type": "image/jpeg"}) as r:
            await r.read()
            seen[r.status] += 1
        if r.status != 200:
            await asyncio.sleep(0.01)  # refused: a moment before the next, as a client would


async def scenario(url: str, photo: bytes, fast: int, slow: int, seconds: float) -> dict:
    seen: Counter = Counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        uploads = [asyncio.ensure_future(slow_upload(url, photo, seconds)) for _ in range(slow)]
        await asyncio.sleep(0.3)  # the slow ones have started
        started = time.perf_counter()
        await asyncio.gather(*(fast_client(session, url, photo, started + seconds - 0.5, seen) for _ in range(fast)))
        elapsed = time.perf_counter() - started
        slow_statuses = Counter(await asyncio.gather(*uploads))
    return {"fast_answered_per_s": round(seen[200] / elapsed, 1), "fast_refused": sum(seen.values()) - seen[200],
            "slow": dict(slow_statuses)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slow", type=int, default=300)
    p.add_argument("--fast", type=int, default=16)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--out", type=Path, default=ROOT / "run" / "bench")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    photo, rows = PHOTO.read_bytes(), []
    quiet = ("--log-level", "warning")
    with local_cluster(a.out, "slow-uploads", quiet, quiet) as (worker, proxy):
        for path, url in (("worker", worker.url), ("proxy", proxy.url)):
            for slow in (0, a.slow):
                row = {"path": path, "slow_uploads": slow, **asyncio.run(scenario(url, photo, a.fast, slow, a.seconds))}
                print(json.dumps(row), flush=True)
                rows.append(row)
    (a.out / "slow_uploads.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
