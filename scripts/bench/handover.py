"""Proxy restarts under load, counted: N seamless handovers (SIGHUP) of a proxy while
plain HTTP clients keep posting to it, with a new connection per request (curl-like) and
through a keep-alive pool (aiohttp/requests-like), no client-side retries.

    .venv/bin/python scripts/bench/handover.py [--restarts 20] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from client.load import run_load  # noqa: E402
from tests.consul_dev import DevAgent  # noqa: E402
from tests.processes import ProxyProcess, WorkerProcess, serve_model  # noqa: E402

MODEL_DIR = ROOT / "models" / "efficientnet_lite0"
PHOTO = ROOT / ".cache" / "photos" / "coffee.jpg"


async def measure(proxy: ProxyProcess, photo: bytes, restarts: int, concurrency: int) -> dict:
    handover_s: list[float] = []
    stop = asyncio.Event()

    async def restart_all():
        for _ in range(restarts):
            await asyncio.sleep(1.0)
            t = time.perf_counter()
            await asyncio.to_thread(proxy.handover)
            handover_s.append(time.perf_counter() - t)
        stop.set()

    async def load(session: aiohttp.ClientSession):
        async def post():
            form = aiohttp.FormData()
            form.add_field("data", photo, filename="p.jpg")
            async with session.post(proxy.url, data=form) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(str(r.status))
        results = []
        while not stop.is_set():
            results.append(await run_load(post, concurrency=concurrency, duration_s=1.0))
        return sum(r.ok for r in results), [e for r in results for e in r.errors]

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(force_close=True)) as new, \
            aiohttp.ClientSession(timeout=timeout) as keep:
        (ok_new, err_new), (ok_keep, err_keep), _ = await asyncio.gather(load(new), load(keep), restart_all())
    return {"restarts": restarts, "new_connection": {"answered": ok_new, "failed": len(err_new), "errors": err_new[:3]},
            "keep_alive": {"answered": ok_keep, "failed": len(err_keep), "errors": err_keep[:3]},
            "handover_s_median": round(sorted(handover_s)[len(handover_s) // 2], 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--restarts", type=int, default=20)
    p.add_argument("--concurrency", type=int, default=4, help="per client kind")
    p.add_argument("--out", type=Path, default=ROOT / "run" / "bench")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    agent = DevAgent(log_path=a.out / "consul-handover.log").start()
    worker = WorkerProcess(agent.address, *serve_model(MODEL_DIR), log_path=a.out / "worker-handover.log")
    proxy = ProxyProcess(agent.address, log_path=a.out / "proxy-handover.log")
    try:
        worker.wait_ready()
        proxy.wait_live(1)
        result = asyncio.run(measure(proxy, PHOTO.read_bytes(), a.restarts, a.concurrency))
    finally:
        proxy.stop()
        worker.stop()
        agent.stop()
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
