"""The autoscaler under a load ramp, measured: load, live workers and p99 latency against
time, and how long added capacity takes to arrive after a load step.

A local cluster on loopback (Consul, the proxy, `python -m autoscaler` with the local
actuator starting and draining workers), then a bounded ramp low -> high -> low, half
plain HTTP through the proxy and half p2p through the client library. Writes
autoscale.png and autoscale.json.

    .venv/bin/python scripts/bench/autoscale.py [--low 2 --high 24] [--phase 20 60 60] [--out run/bench]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from client import Client  # noqa: E402
from tests.consul_dev import DevAgent  # noqa: E402
from tests.processes import AutoscalerProcess, ProxyProcess, wait_for  # noqa: E402

MODEL_DIR = ROOT / "models" / "efficientnet_lite0"
PHOTO = ROOT / ".cache" / "photos" / "coffee.jpg"


async def sample_live(proxy_url: str, out: list, stop: asyncio.Event, started: float) -> None:
    async with aiohttp.ClientSession() as s:
        while not stop.is_set():
            async with s.get(proxy_url + "/workers") as r:
                out.append((time.perf_counter() - started, (await r.json())["live"]))
            await asyncio.sleep(0.5)


async def drive(proxy_url: str, photo: bytes, phases: list[tuple[int, float]], started: float) -> dict:
    """Run the phases; every request's (finish time, latency ms, ok) is kept."""
    done: list[tuple[float, float, bool]] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s, \
            Client(proxy_url, session=s) as client:
        async def post():
            form = aiohttp.FormData()
            form.add_field("data", photo, filename="p.jpg")
            async with s.post(proxy_url, data=form) as r:
                await r.read()
                return r.status == 200

        async def p2p():
            await client.classify(photo, mode="p2p")
            return True

        async def loop(send, until):
            while time.perf_counter() < until:
                t = time.perf_counter()
                try:
                    ok = await send()
                except Exception:
                    ok = False
                done.append((time.perf_counter() - started, (time.perf_counter() - t) * 1000, ok))

        for concurrency, seconds in phases:
            until = time.perf_counter() + seconds
            await asyncio.gather(*(loop(post if i % 2 else p2p, until) for i in range(concurrency)))
    return {"requests": done}


def capacity_times(live: list[tuple[float, int]], step_at: float, down_at: float) -> dict:
    after = [(t, n) for t, n in live if t >= step_at]
    first_up = next((t - step_at for t, n in after if n > 1), None)
    peak = max(n for _, n in live)
    at_peak = next((t - step_at for t, n in after if n == peak), None)
    back = next((t - down_at for t, n in live if t >= down_at and n == 1), None)
    return {"first_worker_added_s": first_up, "peak_workers": peak, "peak_reached_s": at_peak,
            "back_to_one_s": back}


def plot(live, requests, phases, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_load, ax_live, ax_p99) = plt.subplots(3, 1, figsize=(7, 6), sharex=True)
    t, edges = 0.0, []
    for concurrency, seconds in phases:
        edges.append((t, t + seconds, concurrency))
        t += seconds
    for start, end, c in edges:
        ax_load.plot([start, end], [c, c], color="tab:blue")
    ax_load.set_ylabel("concurrent\nrequests")
    ax_live.step(*zip(*live), where="post", color="tab:green")
    ax_live.set_ylabel("live workers")
    times = np.array([r[0] for r in requests])
    lat = np.array([r[1] for r in requests])
    bins = np.arange(0, times.max() + 2, 2.0)
    p99 = [np.percentile(lat[(times >= a) & (times < a + 2)], 99) if ((times >= a) & (times < a + 2)).any()
           else np.nan for a in bins]
    ax_p99.plot(bins + 1, p99, color="tab:red")
    ax_p99.set_ylabel("p99 ms\n(2 s windows)")
    ax_p99.set_xlabel("seconds")
    for ax in (ax_load, ax_live, ax_p99):
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    path = out / "autoscale.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--low", type=int, default=2)
    p.add_argument("--high", type=int, default=24)
    p.add_argument("--phase", type=float, nargs=3, default=[20.0, 60.0, 60.0], help="seconds low, high, low")
    p.add_argument("--out", type=Path, default=ROOT / "run" / "bench")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    phases = [(a.low, a.phase[0]), (a.high, a.phase[1]), (a.low, a.phase[2])]
    agent = DevAgent(log_path=a.out / "consul-autoscale.log").start()
    proxy = ProxyProcess(agent.address, log_path=a.out / "proxy-autoscale.log")
    scaler = AutoscalerProcess(agent.address, "--min", "1", "--max", "4", "--target-in-flight", "3",
                               "--upscale-delay", "1", "--downscale-delay", "10", "--interval", "0.25",
                               "--worker-command", f"python -m worker --host 127.0.0.1 --port 0 "
                                                   f"--model-repository {MODEL_DIR.parent} --models {MODEL_DIR.name}",
                               log_path=a.out / "autoscaler.log").wait_ready()
    try:
        wait_for(lambda: proxy.workers()["live"] == 1, timeout=30, what="1 worker")
        result = asyncio.run(run(proxy.url, PHOTO.read_bytes(), phases))
    finally:
        scaler.signal(signal.SIGTERM)
        scaler.wait(60)
        proxy.stop()
        agent.stop()
    times = capacity_times(result["live"], phases[0][1], phases[0][1] + phases[1][1])
    requests = result["requests"]
    failed = sum(1 for r in requests if not r[2])
    print(json.dumps({**times, "requests": len(requests), "failed": failed}, indent=1))
    (a.out / "autoscale.json").write_text(json.dumps({**times, "requests": len(requests), "failed": failed,
                                                      "live": result["live"], "phases": phases}) + "\n")
    print(f"wrote {plot(result['live'], requests, phases, a.out)}")
    return 0


async def run(proxy_url: str, photo: bytes, phases) -> dict:
    live, stop = [], asyncio.Event()
    started = time.perf_counter()
    sampler = asyncio.create_task(sample_live(proxy_url, live, stop, started))
    result = await drive(proxy_url, photo, phases, started)
    await asyncio.sleep(15)  # let the scale-down finish on the plot
    stop.set()
    await sampler
    return {**result, "live": live}


if __name__ == "__main__":
    sys.exit(main())
