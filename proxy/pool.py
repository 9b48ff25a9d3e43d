"""The proxy's live set of workers: Consul's passing instances minus ejected ones.

Consul (through the watcher) adds and removes workers. The proxy ejects a worker on its
own the moment a request to it fails or times out, without waiting for Consul's TTL;
a probe of the worker's /readyz brings it back when it answers again, and a worker
Consul no longer lists is forgotten. A removed worker's channel stays open until the
requests already sent to it are answered (a draining worker finishes them).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import aiohttp
import zmq.asyncio

from discovery.watcher import Instance
from edge.tasks import cancel
from proxy.channel import WorkerChannel
from proxy.policy import RoundRobin
from worker.protocol import ProtocolError, WorkerMeta

log = logging.getLogger(__name__)


@dataclass(eq=False)  # compared and hashed by identity: a replaced handle is a different one
class WorkerHandle:
    instance: Instance
    meta: WorkerMeta
    channel: WorkerChannel | None = None
    outstanding: int = 0
    served: int = 0
    failures: int = 0
    ejected: str | None = None  # why, while ejected

    @property
    def id(self) -> str:
        return self.instance.id

    def version(self, model: str) -> str | None:
        """The version of `model` this worker serves; None when it does not serve it."""
        served = self.meta.models.get(model)
        return served.version if served else None

    @property
    def zmq_endpoint(self) -> str:
        return f"tcp://{self.instance.address}:{self.meta.zmq_port}"

    def describe(self) -> dict:
        i = self.instance
        return {
            "id": i.id,
            "address": i.http_address,
            "zmq": self.zmq_endpoint,
            "models": {name: m.version for name, m in sorted(self.meta.models.items())},
            "live": self.ejected is None,
            "ejected": self.ejected,
            "outstanding": self.outstanding,
            "served": self.served,
            "failures": self.failures,
            "batches_sent": self.channel.batches_sent,
        }


class WorkerPool:
    def __init__(self, *, max_batch_size: int, max_batch_delay_ms: float, probe_interval_s: float = 0.5,
                 retire_timeout_s: float = 30.0, policy=None, token: str = ""):
        self.policy = policy or RoundRobin()
        self.max_batch_size = max_batch_size
        self.max_batch_delay_ms = max_batch_delay_ms
        self.probe_interval_s = probe_interval_s
        self.retire_timeout_s = retire_timeout_s
        self.token = token
        self.workers: dict[str, WorkerHandle] = {}
        self.ejections = 0
        self._context = zmq.asyncio.Context()
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task] = set()

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _handle(self, instance: Instance, meta: WorkerMeta) -> WorkerHandle:
        handle = WorkerHandle(instance, meta)
        handle.channel = WorkerChannel(self._context, handle.zmq_endpoint, self.max_batch_size,
                                       self.max_batch_delay_ms, self.token,
                                       on_disconnect=lambda reason: self.eject(handle, reason))
        return handle

    def update(self, instances: dict[str, Instance]) -> None:
        """The watcher's callback: Consul's passing set changed."""
        for worker_id in list(self.workers):
            if worker_id not in instances:
                handle = self.workers.pop(worker_id)
                log.info("worker %s left (Consul)", worker_id)
                self._spawn(self._retire(handle))
        for worker_id, instance in instances.items():
            current = self.workers.get(worker_id)
            if current is not None and current.instance == instance:
                continue
            try:
                meta = WorkerMeta.from_meta(instance.meta)
            except ProtocolError as exc:
                log.warning("ignoring %s: %s", worker_id, exc)
                continue
            if current is not None:
                self._spawn(self._retire(self.workers.pop(worker_id)))
            self.workers[worker_id] = self._handle(instance, meta)
            log.info("worker %s joined at %s", worker_id, instance.http_address)

    def live(self) -> list[WorkerHandle]:
        return [h for h in self.workers.values() if h.ejected is None]

    def models(self) -> set[str]:
        """Every model some live worker serves."""
        return {name for h in self.live() for name in h.meta.models}

    def versions(self, model: str) -> set[str]:
        return {h.version(model) for h in self.live() if model in h.meta.models}

    def choose(self, model: str, exclude: set[WorkerHandle] = frozenset(),
               version: str | None = None) -> WorkerHandle | None:
        """A live worker serving `model` (at `version`, when given), by the policy."""
        candidates = [h for h in self.live() if h not in exclude and model in h.meta.models
                      and version in (None, h.version(model))]
        return self.policy.choose(candidates) if candidates else None

    def eject(self, handle: WorkerHandle, reason: str) -> None:
        """Stop routing to a worker at once; probe it until it answers again."""
        handle.failures += 1
        if handle.ejected is not None or self.workers.get(handle.id) is not handle:
            return
        handle.ejected = reason
        self.ejections += 1
        handle.channel.fail(reason)
        log.warning("ejected worker %s: %s", handle.id, reason)
        self._spawn(self._probe(handle))

    async def _probe(self, handle: WorkerHandle) -> None:
        url = f"http://{handle.instance.http_address}/readyz"
        while self.workers.get(handle.id) is handle:
            await asyncio.sleep(self.probe_interval_s)
            try:
                async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status != 200:
                        continue
            except (aiohttp.ClientError, TimeoutError):
                continue
            if self.workers.get(handle.id) is handle:
                await handle.channel.close()
                self.workers[handle.id] = self._handle(handle.instance, handle.meta)
                log.info("worker %s is back (probe)", handle.id)
            return

    async def worker_stats(self, timeout_s: float = 1.0) -> dict[str, dict]:
        """Each known worker's own /stats (what it answered to every client, p2p ones too,
        and what it holds now), fetched side by side; {"error": ...} for one that did not
        answer in `timeout_s`. For the status page: nothing routes on it."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}

        async def one(handle: WorkerHandle) -> dict:
            url = f"http://{handle.instance.http_address}/stats"
            try:
                async with self._session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
                    body = await r.json(content_type=None)
                    if r.status != 200:
                        return {"error": f"{r.status}"}
                    return {key: body.get(key) for key in ("served", "in_flight", "queue_depth")}
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                return {"error": type(exc).__name__}

        handles = list(self.workers.values())
        answers = await asyncio.gather(*(one(h) for h in handles))
        return {h.id: answer for h, answer in zip(handles, answers)}

    async def _retire(self, handle: WorkerHandle) -> None:
        deadline = asyncio.get_running_loop().time() + self.retire_timeout_s
        while handle.outstanding and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        await handle.channel.close()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        await cancel(*self._tasks)
        for handle in self.workers.values():
            await handle.channel.close()
        self.workers.clear()
        if self._session:
            await self._session.close()
        self._context.term()
