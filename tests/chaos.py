"""Fault scenarios under load, on loopback only: the library behind scripts/chaos and
tests/test_chaos.py.

A local cluster (a Consul dev agent, two proxies, three workers on 127.0.0.1) takes a
bounded load (a fixed number of requests, a few in flight) while one fault is injected
part-way: kill -9 of a worker, SIGTERM of a worker (drain), a Consul restart, a proxy
restart (SIGHUP: the seamless handover), or kill -9 of one of the two proxies. Each run
counts what was sent, answered, retried and failed.

- proxy: plain HTTP POSTs to the first proxy, a new connection per request (curl-like),
  no client-side retry; retries are the proxy's own (from its /workers counters).
- proxy-keepalive: the same through a keep-alive connection pool (aiohttp/requests-like).
- p2p: the client library (lookup, then POST to the worker; retries on a fresh lookup),
  given both proxies.
- client-forward: the client library forwarding through the proxies (both given).
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
from tests.processes import ProxyProcess, WorkerProcess, serve_model

MODEL_DIR = PROJECT_ROOT / "models" / "efficientnet_lite0"
PLAIN = ("proxy", "proxy-keepalive", "p2p")
SCENARIOS = {"kill -9 worker": PLAIN, "SIGTERM worker": PLAIN, "Consul restart": PLAIN, "proxy restart": PLAIN,
             "proxy kill -9 (1 of 2)": ("proxy", "p2p", "client-forward")}
# The one fault a plain HTTP client of that proxy cannot ride through: its proxy is gone.
EXPECTED_FAILURES = {("proxy kill -9 (1 of 2)", "proxy")}


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
    """Consul, two proxies and N workers on loopback; faults replace what they break."""

    def __init__(self, out: Path, workers: int = 3):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.agent = DevAgent(log_path=out / "consul.log").start()
        self.workers = [self._worker(i) for i in range(workers)]
        for w in self.workers:
            w.wait_ready()
        self.proxies = [self._proxy(), self._proxy()]
        for proxy in self.proxies:
            proxy.wait_live(len(self.workers))
        self._spawned = workers

    @property
    def proxy(self) -> ProxyProcess:
        """The proxy plain HTTP clients talk to."""
        return self.proxies[0]

    def _worker(self, i: int) -> WorkerProcess:
        return WorkerProcess(self.agent.address, *serve_model(MODEL_DIR), "--heartbeat-ttl", "2",
                             log_path=self.out / f"worker-{i}.log")

    def _proxy(self, port: int | None = None) -> ProxyProcess:
        return ProxyProcess(self.agent.address, port=port, log_path=self.out / f"proxy-{port or 'new'}.log")

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
        code = self.proxy.handover()
        self.proxy.wait_live(len(self.workers))
        return f"SIGHUP: a new proxy took the listening socket over, the old one drained (exit {code})"

    def kill_proxy(self) -> str:
        port = self.proxy.port
        self.proxy.kill()
        self.proxy.stop()
        self.proxies[0] = self._proxy(port)  # a supervisor restarts it
        self.proxy.wait_live(len(self.workers))
        return "kill -9 of the first proxy, restarted on its port by a supervisor"

    def inject(self, scenario: str) -> str:
        return {
            "kill -9 worker": lambda: self.replace_worker(signal.SIGKILL),
            "SIGTERM worker": lambda: self.replace_worker(signal.SIGTERM),
            "Consul restart": self.restart_consul,
            "proxy restart": self.restart_proxy,
            "proxy kill -9 (1 of 2)": self.kill_proxy,
        }[scenario]()

    def settle(self) -> None:
        """Before the next scenario: every worker live in every proxy again."""
        for proxy in self.proxies:
            proxy.wait_live(len(self.workers), timeout=30)

    def stop(self) -> None:
        for proxy in self.proxies:
            proxy.stop()
        for w in self.workers:
            w.stop()
        self.agent.stop()


def sender(mode: str, cluster: Cluster, sessions: dict, client: Client, photo: bytes):
    async def plain_post(session: aiohttp.ClientSession):
        form = aiohttp.FormData()
        form.add_field("data", photo, filename="photo.jpg", content_type="image/jpeg")
        async with session.post(cluster.proxy.url, data=form) as r:
            body = await r.read()
            if r.status != 200:
                raise RuntimeError(f"{r.status}: {body[:120]!r}")

    return {"proxy": lambda: plain_post(sessions["new"]), "proxy-keepalive": lambda: plain_post(sessions["keep"]),
            "p2p": lambda: client.classify(photo, mode="p2p"),
            "client-forward": lambda: client.classify(photo, mode="proxy")}[mode]


async def run(cluster: Cluster, scenario: str, mode: str, photo: bytes, *, requests: int = 150,
              concurrency: int = 6, fault_after: int = 30) -> Counts:
    counts = Counts(scenario, mode)
    fault: asyncio.Task | None = None
    proxy_retries_before = cluster.proxy.workers()["retries"]
    loop = asyncio.get_running_loop()
    done = 0
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(force_close=True)) as new, \
            aiohttp.ClientSession(timeout=timeout) as keep, \
            Client([p.url for p in cluster.proxies], session=keep) as client:
        send = sender(mode, cluster, {"new": new, "keep": keep}, client, photo)

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
    if mode.startswith("proxy") and "proxy" not in scenario:  # a new proxy starts its counters at 0
        counts.retried += cluster.proxy.workers()["retries"] - proxy_retries_before
    cluster.settle()
    return counts


async def run_all(out: Path, photo: bytes, scenarios=SCENARIOS, **kw) -> list[Counts]:
    cluster = await asyncio.to_thread(Cluster, out)
    try:
        return [await run(cluster, s, m, photo, **kw) for s, modes in scenarios.items() for m in modes]
    finally:
        await asyncio.to_thread(cluster.stop)
