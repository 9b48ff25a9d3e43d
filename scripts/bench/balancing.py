"""Balancing under faults, measured open-loop: a local cluster of 3 workers and a proxy on
this machine, Poisson arrivals at a share of the cluster's measured capacity, every
latency from its scheduled time.

1. capacity: closed-loop c=32 through the proxy, all workers healthy (round-robin);
2. one worker throttled to a quarter of a core (cgroup v1 cpu quota): forwarded p99 at
   70% of capacity, healthy and throttled, for each policy;
3. one worker frozen and thawed in a loop (SIGSTOP 2 s / SIGCONT 2 s) at 50%: failures,
   p99, ejections;
4. 150% of capacity, without and with 200 ms deadlines: goodput, retries against the
   budget, how fast refusals are;
5. 200 ms deadlines at 120%: how many 200s came after their deadline;
6. p2p lookups at 50%: each worker's own count, beside forwarding's.

    sudo .venv/bin/python scripts/bench/balancing.py [--duration 10] [--policies round-robin peak-ewma ...]

Needs root (the cgroup); prints tables and writes run/bench/balancing.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from machine import describe, label  # noqa: E402  (beside this file)
from open_loop import PHOTO, sender  # noqa: E402

from client.load import run_load, run_open_loop  # noqa: E402
from tests.consul_dev import DevAgent  # noqa: E402
from tests.processes import ProxyProcess, WorkerProcess, child_pids, serve_model  # noqa: E402
from tests.throttle import available, cpu_quota  # noqa: E402

MODEL_DIR = ROOT / "models" / "efficientnet_lite0"
POLICIES = ("round-robin", "least-outstanding", "power-of-two", "peak-ewma")
DEADLINE = {"X-Request-Timeout-Ms": "200"}


@contextlib.contextmanager
def proxy_with(agent: DevAgent, out: Path, policy: str, *extra: str):
    proxy = ProxyProcess(agent.address, "--policy", policy, *extra, log_path=out / f"proxy-balancing-{policy}.log")
    try:
        proxy.wait_live(3)
        yield proxy
    finally:
        proxy.stop()


async def open_loop(url: str, photo: bytes, rate: float, duration: float, mode: str = "native",
                    headers: dict | None = None, slo_ms: float = 200.0) -> dict:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        send = sender(session, url, mode, photo, headers)
        result = await run_open_loop(send, rate=rate, duration_s=duration, slo_ms=slo_ms)
    return result.summary()


async def capacity(url: str, photo: bytes, duration: float) -> float:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        send = sender(session, url, "native", photo)
        return (await run_load(send, concurrency=32, duration_s=duration)).per_second


async def freeze_loop(worker: WorkerProcess, seconds: float) -> None:
    """SIGSTOP 2 s / SIGCONT 2 s until `seconds` have passed; left running."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    try:
        while loop.time() < end:
            worker.signal(signal.SIGSTOP)
            await asyncio.sleep(2)
            worker.signal(signal.SIGCONT)
            await asyncio.sleep(2)
    finally:
        worker.signal(signal.SIGCONT)


def row(name: str, r: dict) -> str:
    return (f"| {name} | {r['rate']:.0f} | {r['ok']} | {r['errors']} | {r['goodput']:.1f} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {r['error_p99_ms']:.1f} |")


HEADER = ("| case | rate/s | ok | errors | goodput/s (≤200 ms) | p50 ms | p99 ms | refusals p99 ms |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|")


async def throttled_policies(agent, workers, out, photo, cap, args) -> list[dict]:
    rows = []
    rate = 0.7 * cap
    for policy in args.policies:
        with proxy_with(agent, out, policy, "--slow-start", "0") as proxy:
            healthy = await open_loop(proxy.url, photo, rate, args.duration)
            with cpu_quota([workers[0].proc.pid, *child_pids(workers[0].proc.pid)], 0.25):
                slowed = await open_loop(proxy.url, photo, rate, args.duration)
            shares = {w["id"]: w["served"] for w in proxy.workers()["workers"]}
        rows.append({"policy": policy, "healthy": healthy, "throttled": slowed,
                     "throttled_share": shares.get(workers[0].worker_id, 0) / max(1, sum(shares.values()))})
        print(row(f"{policy}, healthy", healthy))
        print(row(f"{policy}, one worker at 1/4 core", slowed))
    return rows


async def faults(agent, workers, out, photo, cap, args, policy: str) -> dict:
    found = {}
    with proxy_with(agent, out, policy) as proxy:
        freeze = asyncio.create_task(freeze_loop(workers[1], args.duration))
        found["freeze"] = await open_loop(proxy.url, photo, 0.5 * cap, args.duration)
        await freeze
        found["freeze"]["ejections"] = proxy.workers()["ejections"]
        print(row(f"{policy}, one worker frozen 2 s / thawed 2 s", found["freeze"]))
        await asyncio.sleep(3)  # the frozen worker back, its slow start under way
        for name, share, headers in (("overload", 1.5, None), ("overload_deadlines", 1.5, DEADLINE),
                                     ("deadline", 1.2, DEADLINE)):
            before = proxy.workers()
            found[name] = r = await open_loop(proxy.url, photo, share * cap, args.duration, headers=headers)
            after = proxy.workers()
            r["retries"] = after["retries"] - before["retries"]
            r["retries_over_budget"] = after["retries_over_budget"] - before["retries_over_budget"]
            print(row(f"{policy}, {share:.0%} of capacity" + (", 200 ms deadlines" if headers else ""), r)
                  + f" 200s past 200 ms: {r['ok_past_slo']}; retries {r['retries']} "
                    f"({r['retries_over_budget']} over budget)")
        found["p2p"] = await p2p_spread(proxy, workers, photo, 0.5 * cap, args.duration)
    return found


async def p2p_spread(proxy, workers, photo, rate, duration) -> dict:
    async def own_counts():
        async with aiohttp.ClientSession() as s:
            counts = {}
            for w in workers:
                async with s.get(w.url + "/stats") as r:
                    counts[w.worker_id] = (await r.json())["served"]
            return counts
    before = await own_counts()
    result = await open_loop(proxy.url, photo, rate, duration, mode="p2p")
    after = await own_counts()
    result["per_worker"] = {w: after[w] - before[w] for w in after}
    print(row("p2p lookups, 50%", result) + f" per worker {list(result['per_worker'].values())}")
    return result


async def main_async(args, out: Path) -> dict:
    photo = args.photo.read_bytes()
    agent = DevAgent(log_path=out / "consul-balancing.log").start()
    workers = []
    try:
        workers = [WorkerProcess(agent.address, *serve_model(MODEL_DIR), log_path=out / f"worker-balancing-{i}.log")
                   for i in range(3)]
        for w in workers:
            w.wait_ready()
        with proxy_with(agent, out, "round-robin") as proxy:
            await capacity(proxy.url, photo, 2)  # warm every worker
            cap = await capacity(proxy.url, photo, args.duration)
        print(f"capacity through the proxy, closed loop c=32: {cap:.1f} img/s\n\n{HEADER}", flush=True)
        result = {"capacity": cap, "throttled": await throttled_policies(agent, workers, out, photo, cap, args)}
        result["faults"] = await faults(agent, workers, out, photo, cap, args, args.fault_policy)
        return result
    finally:
        for w in workers:
            w.stop()
        agent.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=10.0, help="seconds a case")
    p.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES))
    p.add_argument("--fault-policy", choices=POLICIES, default="peak-ewma", help="the policy for cases 3-6")
    p.add_argument("--photo", type=Path, default=PHOTO)
    p.add_argument("--out", type=Path, default=ROOT / "run" / "bench")
    args = p.parse_args()
    if not available():
        sys.exit("needs root and cgroup v1's cpu controller (/sys/fs/cgroup/cpu)")
    args.out.mkdir(parents=True, exist_ok=True)
    machine = describe()
    print(f"{label(machine)}; {args.duration:g} s a case", flush=True)
    result = {"machine": machine, **asyncio.run(main_async(args, args.out))}
    print("\nthrottled p99 over healthy p99, by policy: " + ", ".join(
        f"{r['policy']} {r['throttled']['p99_ms'] / r['healthy']['p99_ms']:.2f}x "
        f"(its share {r['throttled_share']:.0%})" for r in result["throttled"]))
    (args.out / "balancing.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
