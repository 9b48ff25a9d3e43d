"""Proxy restarts under load, counted: N seamless handovers (SIGHUP) of a proxy while
clients keep sending to it, no client-side retries: plain HTTP with a new connection per
request (curl-like) and through a keep-alive pool (aiohttp/requests-like); tritonclient
over gRPC on one channel (a long-lived client), on a new channel per call, and on one
channel given RIDE_THROUGH_RESTARTS (the recipe in docs/operations/faults.md: gRPC's own wait-for-ready and
retry policy).

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
import tritonclient.grpc.aio as tritongrpc

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from client.load import LoadResult, run_load  # noqa: E402
from edge.imaging import preprocess  # noqa: E402
from edge.preprocessing import Preprocessing  # noqa: E402
from tests.consul_dev import DevAgent  # noqa: E402
from tests.processes import RIDE_THROUGH_RESTARTS, ProxyProcess, WorkerProcess, serve_model  # noqa: E402

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

    async def load(send) -> dict:
        results: list[LoadResult] = []
        while not stop.is_set():
            results.append(await run_load(send, concurrency=concurrency, duration_s=1.0))
        errors = [e for r in results for e in r.errors]
        return {"answered": sum(r.ok for r in results), "failed": len(errors), "errors": errors[:3]}

    def post(session: aiohttp.ClientSession):
        async def send():
            form = aiohttp.FormData()
            form.add_field("data", photo, filename="p.jpg")
            async with session.post(proxy.url, data=form) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(str(r.status))
        return send

    pixels = preprocess(photo, Preprocessing(), 10**8)[None]

    async def infer(client: tritongrpc.InferenceServerClient):
        image = tritongrpc.InferInput("image", list(pixels.shape), "UINT8")
        image.set_data_from_numpy(pixels)
        top1 = tritongrpc.InferRequestedOutput("probabilities", class_count=1)
        await client.infer("efficientnet_lite0", [image], outputs=[top1], client_timeout=60)

    async def infer_on_new_channel():
        async with tritongrpc.InferenceServerClient(proxy.grpc) as client:
            await infer(client)

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(force_close=True)) as new, \
            aiohttp.ClientSession(timeout=timeout) as keep, tritongrpc.InferenceServerClient(proxy.grpc) as channel, \
            tritongrpc.InferenceServerClient(proxy.grpc, channel_args=RIDE_THROUGH_RESTARTS) as riding:
        *loads, _ = await asyncio.gather(load(post(new)), load(post(keep)), load(lambda: infer(channel)),
                                         load(infer_on_new_channel), load(lambda: infer(riding)), restart_all())
    kinds = ("new_connection", "keep_alive", "grpc_channel", "grpc_new_channel", "grpc_channel_riding_through")
    return {"restarts": restarts, **dict(zip(kinds, loads, strict=True)),
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
