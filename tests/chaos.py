"""Fault scenarios under load, on loopback only: the library behind scripts/chaos and
tests/test_chaos.py.

A local cluster (a Consul dev agent, the proxy, three workers on 127.0.0.1) takes a
bounded load (a fixed number of requests, a few in flight) while one fault is injected
part-way: kill -9 of a worker, SIGTERM of a worker (drain), a Consul restart, or a proxy
restart. Each run counts what was sent, answered, retried and failed.

- proxy mode: plain HTTP POSTs to the proxy with no client-side retry; retries are the
  proxy's own (from its /workers counters).
- p2p mode: the client library (lookup, then POST to the worker; retries on a fresh lookup).
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from client import Client
from client.load import run_load
from tests.consul_dev import PROJECT_ROOT, DevAgent
from tests.processes import ProxyProcess, WorkerProcess

MODEL_DIR = PROJECT_ROOT / "models" / "efficientnet_lite0"
SCENARIOS = ("kill -9 worker", "SIGTERM worker", "Consul restart", "proxy restart")


@dataclass
class Counts:
    scenario: str
    mode: str
    sent: int = 0
    answered: int = 0
    retried: int = 0
    failed: int = 0
    notes: list[str] = field(default_factory=list)

    def row(self) -> str:
        return (f"| {self.scenario} | {self.mode} | {self.sent} | {self.answered} | {self.retried} | "
                f"{self.failed} | {'; '.join(self.notes)} |")


TABLE_HEAD = "| scenario | mode | sent | answered | retried | failed | notes |\n|---|---|---:|---:|---:|---:|---|"


class Cluster:
    """Consul, the proxy and N workers on loopback; faults replace what they break."""

    def __init__(self, out: Path, workers: int = 3):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.agent = DevAgent(log_path=out / "consul.log").start()
        self.workers = [self._worker(i) for i in range(workers)]
        for w in self.workers:
            w.wait_ready()
        self.proxy = self._proxy()
        self.proxy.wait_live(len(self.workers))
        self._spawned = workers

    def _worker(self, i: int) -> WorkerProcess:
        return WorkerProcess(self.agent.address, "--model-dir", str(MODEL_DIR), "--heartbeat-ttl", "2",
                             log_path=self.out / f"worker-{i}.log")

    def _proxy(self, port: int | None = None) -> ProxyProcess:
        return ProxyProcess(self.agent.address, port=port, log_path=self.out / "proxy.log")

    def replace_worker(self, sig: int) -> str:
        """Signal the first worker, wait for it to exit, start a replacement."""
        victim = self.workers.pop(0)
        victim.signal(sig)
        code = victim.wait(60)
        victim.stop()
        fresh = self._worker(self._spawned)
        self._spawned += 1
        self.workers.append(fresh.wait_ready())
        return f"worker exited with {code}"

    def restart_consul(self) -> str:
        port, log = self.agent.http_port, self.agent.log_path
        self.agent.stop()
        self.agent = DevAgent(http_port=port, log_path=log).start()
        return "Consul restarted empty (dev mode); workers re-register on their next heartbeat"

    def restart_proxy(self) -> str:
        port = self.proxy.port
        self.proxy.stop()
        self.proxy = self._proxy(port)
        self.proxy.wait_live(len(self.workers))
        return "proxy stopped (SIGTERM) and started again on the same port"

    def inject(self, scenario: str) -> str:
        return {
            "kill -9 worker": lambda: self.replace_worker(signal.SIGKILL),
            "SIGTERM worker": lambda: self.replace_worker(signal.SIGTERM),
            "Consul restart": self.restart_consul,
            "proxy restart": self.restart_proxy,
        }[scenario]()

    def settle(self) -> None:
        """Before the next scenario: every worker live in the proxy again."""
        self.proxy.wait_live(len(self.workers), timeout=30)

    def stop(self) -> None:
        self.proxy.stop()
        for w in self.workers:
            w.stop()
        self.agent.stop()


async def run(cluster: Cluster, scenario: str, mode: str, photo: bytes, *, requests: int = 150,
              concurrency: int = 6, fault_after: int = 30) -> Counts:
    counts = Counts(scenario, mode)
    fault: asyncio.Task | None = None
    proxy_retries_before = cluster.proxy.workers()["retries"]
    loop = asyncio.get_running_loop()
    done = 0

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session, \
            Client(cluster.proxy.url, session=session) as client:

        async def proxy_post():
            form = aiohttp.FormData()
            form.add_field("data", photo, filename="photo.jpg", content_type="image/jpeg")
            async with session.post(cluster.proxy.url, data=form) as r:
                body = await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{r.status}: {body[:120]!r}")

        send = proxy_post if mode == "proxy" else (lambda: client.classify(photo, mode="p2p"))

        async def counted():
            nonlocal done, fault
            try:
                await send()
            finally:
                done += 1
                if done == fault_after:
                    fault = loop.create_task(asyncio.to_thread(cluster.inject, scenario))

        result = await run_load(counted, concurrency=concurrency, duration_s=300, max_requests=requests)
        counts.sent, counts.answered, counts.failed = done, result.ok, len(result.errors)
        counts.notes = [e[:120] for e in result.errors[:3]]
        if fault is not None:
            counts.notes.insert(0, await fault)
        counts.retried = client.stats["retries"]
    if mode == "proxy" and scenario != "proxy restart":  # a restarted proxy starts its counters at 0
        counts.retried += cluster.proxy.workers()["retries"] - proxy_retries_before
    cluster.settle()
    return counts


async def run_all(out: Path, photo: bytes, scenarios=SCENARIOS, modes=("proxy", "p2p"), **kw) -> list[Counts]:
    cluster = await asyncio.to_thread(Cluster, out)
    try:
        return [await run(cluster, s, m, photo, **kw) for s in scenarios for m in modes]
    finally:
        await asyncio.to_thread(cluster.stop)
