"""Benchmark the data path, side by side in one run:

- the in-process ceiling: the worker's own decode + preprocess (2 threads) and batched
  model (batch 32), pipelined, no network;
- direct: POST to the worker;
- proxy: POST to the proxy, which forwards over ZeroMQ;
- p2p: the client library's lookup on the proxy, then POST to the worker;

each at concurrency 1, 8 and 32 with the default model and a real photo. Prints a
table (img/s, p50/p90/p99, and img/s as a ratio of the ceiling) and writes JSON.
Everything runs on this machine: the load generator shares its cores with the servers.

    .venv/bin/python scripts/bench/datapath.py [--duration 8] [--workers 1] [--out run/bench]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from client import Client  # noqa: E402
from client.load import LoadResult, run_load  # noqa: E402
from discovery.consul_agent import DevAgent  # noqa: E402
from proxy.process import ProxyProcess  # noqa: E402
from worker.process import WorkerProcess  # noqa: E402

MODEL_DIR = ROOT / "models" / "efficientnet_lite0"
PHOTO = ROOT / ".cache" / "photos" / "coffee.jpg"


def ceiling(photo: bytes, seconds: float, batch: int = 32) -> dict:
    """img/s of decode+preprocess (2 threads) pipelined with batched inference, in process."""
    import numpy as np

    from worker.imaging import preprocess
    from worker.model import load_model

    model = load_model(MODEL_DIR)
    prep = model.preprocessing
    with ThreadPoolExecutor(2) as pool:
        def decode_batch():
            return list(pool.map(lambda _: preprocess(photo, prep, 10**8), range(batch)))

        model.predict(np.stack(decode_batch()))  # warm-up
        images, done = 0, 0
        started = time.perf_counter()
        pending = pool.submit(decode_batch)
        while time.perf_counter() - started < seconds:
            ready = pending.result()
            pending = pool.submit(decode_batch)  # decode the next batch while this one runs
            model.predict(np.stack(ready))
            images += len(ready)
            done += 1
        elapsed = time.perf_counter() - started
        pending.result()
    return {"per_second": round(images / elapsed, 2), "images": images, "batches": done,
            "seconds": round(elapsed, 3), "batch_size": batch}


async def measure(mode: str, send, concurrency: int, duration: float) -> LoadResult:
    await run_load(send, concurrency=concurrency, duration_s=min(2.0, duration / 4))  # warm-up
    return await run_load(send, concurrency=concurrency, duration_s=duration)


async def bench_servers(worker_urls: list[str], proxy_url: str, photo: bytes, duration: float,
                        concurrencies: list[int]) -> list[dict]:
    rows = []
    turn = iter(range(10**9))
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as s, \
            Client(proxy_url, session=s) as client:

        async def post(url: str):
            form = aiohttp.FormData()
            form.add_field("data", photo, filename="photo.jpg", content_type="image/jpeg")
            async with s.post(url, data=form) as r:
                body = await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{r.status}: {body[:200]!r}")

        senders = {
            "direct": lambda: post(worker_urls[next(turn) % len(worker_urls)]),
            "proxy": lambda: post(proxy_url),
            "p2p": lambda: client.classify(photo, mode="p2p"),
        }
        for mode, send in senders.items():
            for c in concurrencies:
                result = await measure(mode, send, c, duration)
                row = {"mode": mode, **result.summary()}
                if result.errors:
                    row["first_error"] = result.errors[0]
                print(f"  {mode:7s} c={c:<3d} {row['per_second']:7.1f} img/s  p50 {row['p50_ms']:7.1f} ms  "
                      f"p99 {row['p99_ms']:7.1f} ms  errors {row['errors']}", flush=True)
                rows.append(row)
    return rows


def table(ceiling_row: dict, rows: list[dict]) -> str:
    top = ceiling_row["per_second"]
    lines = [
        "| configuration | concurrency | img/s | of ceiling | p50 ms | p90 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| in-process ceiling (batch {ceiling_row['batch_size']}) | - | {top:.1f} | 1.00 | - | - | - | - |",
    ]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['concurrency']} | {r['per_second']:.1f} | {r['per_second'] / top:.2f} | "
                     f"{r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--photo", type=Path, default=PHOTO)
    p.add_argument("--worker-arg", action="append", default=[], help="extra worker flag (repeatable)")
    p.add_argument("--out", type=Path, default=ROOT / "run" / "bench")
    args = p.parse_args()
    photo = args.photo.read_bytes()
    args.out.mkdir(parents=True, exist_ok=True)

    print(f"photo {args.photo} ({len(photo)} bytes); measuring the in-process ceiling...", flush=True)
    ceiling_row = ceiling(photo, args.duration)
    print(f"  ceiling {ceiling_row['per_second']:.1f} img/s", flush=True)

    agent = DevAgent(log_path=args.out / "consul.log").start()
    workers, proxy = [], None
    try:
        workers = [WorkerProcess(agent.address, "--model-dir", str(MODEL_DIR), *args.worker_arg,
                                 log_path=args.out / f"worker-{i}.log") for i in range(args.workers)]
        for w in workers:
            w.wait_ready()
        proxy = ProxyProcess(agent.address, log_path=args.out / "proxy.log")
        deadline = time.monotonic() + 10
        while proxy.workers()["live"] < len(workers):
            if time.monotonic() > deadline:
                raise TimeoutError("the proxy did not see every worker")
            time.sleep(0.1)
        print(f"{len(workers)} worker(s) and the proxy are up; load for {args.duration} s per point", flush=True)
        rows = asyncio.run(bench_servers([w.url for w in workers], proxy.url, photo, args.duration,
                                         args.concurrency))
    finally:
        if proxy:
            proxy.stop()
        for w in workers:
            w.stop()
        agent.stop()

    result = {"photo": str(args.photo), "workers": args.workers, "duration_s": args.duration,
              "ceiling": ceiling_row, "rows": rows}
    (args.out / "datapath.json").write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(table(ceiling_row, rows))
    print(f"\nwrote {args.out / 'datapath.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
