"""The proxy's live set of workers: Consul's passing instances minus ejected ones.

Consul (through the watcher) adds and removes workers. The proxy ejects a worker on its
own, without waiting for Consul's TTL, when its connection drops, after
`--consecutive-failures` failures or timeouts in a row, when it has answered nothing for
`--stall-timeout` with requests outstanding (a frozen process), or when at least half its
answers in a second failed (`--failure-rate`). An ejected worker is probed on /readyz
after an ejection time that grows with each ejection, and comes back in slow start. Never
more than `--max-ejection-percent` of the workers are ejected at once (at least one may
be, and never the last): beyond it a failing worker stays in the set, as Envoy's panic
threshold does, since ejecting most of a cluster would put all the load on the rest. A
dropped connection ejects regardless: nothing can reach that worker. A worker Consul no longer
lists is forgotten; its channel stays open until the requests already sent to it are
answered (a draining worker finishes them).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field

import aiohttp
import zmq.asyncio

from discovery.watcher import Instance
from edge.tasks import cancel
from proxy.balance import RetryBudget, WorkerBalance
from proxy.channel import WorkerChannel
from proxy.config import ProxyConfig
from proxy.policy import POLICIES
from worker.protocol import ProtocolError, WorkerLoad, WorkerMeta

log = logging.getLogger(__name__)


@dataclass(eq=False)  # compared and hashed by identity: a replaced handle is a different one
class WorkerHandle:
    instance: Instance
    meta: WorkerMeta
    channel: WorkerChannel | None = None
    balance: WorkerBalance = field(default_factory=WorkerBalance)
    served: int = 0
    failures: int = 0
    ejected: str | None = None  # why, while ejected

    @property
    def outstanding(self) -> int:
        return self.balance.outstanding

    def begin(self) -> None:
        """A request of this proxy's is now at this worker."""
        self.balance.outstanding += 1

    def end(self) -> None:
        self.balance.outstanding -= 1

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
            "reported": self.balance.reported and {"queue": self.balance.reported.queue,
                                                   "in_flight": self.balance.reported.in_flight,
                                                   "service_ms": self.balance.reported.service_ms},
            "service_ms_peak_ewma": round(self.balance.service.value, 3),
            "slow_start": self.balance.slow_start,
            "served": self.served,
            "failures": self.failures,
            "batches_sent": self.channel.batches_sent,
        }


class WorkerPool:
    def __init__(self, config: ProxyConfig):
        self.config = config
        self.policy = POLICIES[config.policy]()
        self.budget = RetryBudget(config.retry_budget, config.min_retries_per_second)
        self.token = config.edge.auth_token or ""
        self.workers: dict[str, WorkerHandle] = {}
        self.ejections = 0
        self.ejections_capped = 0  # ejections the cap refused
        self._times_ejected: dict[str, tuple[int, float]] = {}  # worker id -> (ejections, when last)
        self._synced = False  # the first update: workers known from then on join in slow start
        self._context = zmq.asyncio.Context()
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task] = set()

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _handle(self, instance: Instance, meta: WorkerMeta, slow_start: bool) -> WorkerHandle:
        handle = WorkerHandle(instance, meta, balance=WorkerBalance(slow_start=slow_start))
        handle.channel = WorkerChannel(self._context, handle.zmq_endpoint, self.config.max_batch_size,
                                       self.config.max_batch_delay_ms, self.token,
                                       on_disconnect=lambda reason: self.eject(handle, reason),
                                       on_load=lambda load: handle.balance.report(load, time.monotonic()))
        return handle

    def update(self, instances: dict[str, Instance]) -> None:
        """The watcher's callback: Consul's passing set changed."""
        for worker_id in list(self.workers):
            if worker_id not in instances:
                handle = self.workers.pop(worker_id)
                self._times_ejected.pop(worker_id, None)
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
            self.workers[worker_id] = self._handle(instance, meta, slow_start=self._synced and current is None)
            log.info("worker %s joined at %s", worker_id, instance.http_address)
        self._synced = True

    def live(self) -> list[WorkerHandle]:
        return [h for h in self.workers.values() if h.ejected is None]

    def models(self) -> set[str]:
        """Every model some live worker serves."""
        return {name for h in self.live() for name in h.meta.models}

    def versions(self, model: str) -> set[str]:
        return {h.version(model) for h in self.live() if model in h.meta.models}

    def choose(self, model: str, exclude: set[WorkerHandle] = frozenset(),
               version: str | None = None) -> WorkerHandle | None:
        """A live worker serving `model` (at `version`, when given), by the policy; a worker
        in slow start is considered for a share of picks that grows over --slow-start."""
        candidates = [h for h in self.live() if h not in exclude and model in h.meta.models
                      and version in (None, h.version(model))]
        now = time.monotonic()
        ramped = [h for h in candidates if random.random() < h.balance.weight(now, self.config.slow_start)]
        candidates = ramped or candidates
        return self.policy.choose(candidates) if candidates else None

    def lookup(self, handle: WorkerHandle) -> None:
        """`handle` was handed out by a lookup: its client's request will add to its load."""
        handle.balance.lookups += 1

    def answered(self, handle: WorkerHandle, ok: bool, refused: bool = False) -> None:
        """The outcome of a request at `handle`: success, a failure, or a refusal (busy);
        a failure in a row past --consecutive-failures ejects it."""
        if ok:
            handle.balance.succeeded()
            return
        handle.balance.failed(time.monotonic(), refused=refused)
        if not refused and handle.balance.consecutive_failures >= self.config.consecutive_failures:
            self.eject(handle, f"{handle.balance.consecutive_failures} failures in a row")

    def eject(self, handle: WorkerHandle, reason: str) -> None:
        """Stop routing to a worker (within the cap); probe it after its ejection time."""
        handle.failures += 1
        if handle.ejected is not None or self.workers.get(handle.id) is not handle:
            return
        if handle.channel.failed is None and not self._may_eject():
            self.ejections_capped += 1
            log.warning("not ejecting worker %s (%s): %d of %d workers are ejected already "
                        "(--max-ejection-percent %g)", handle.id, reason, self._ejected(), len(self.workers),
                        self.config.max_ejection_percent)
            return
        handle.ejected = reason
        self.ejections += 1
        handle.channel.fail(reason)
        wait_s = self._ejection_time(handle.id)
        log.warning("ejected worker %s for %.1f s at least: %s", handle.id, wait_s, reason)
        self._spawn(self._probe(handle, wait_s))

    def _ejected(self) -> int:
        return sum(1 for h in self.workers.values() if h.ejected is not None)

    def _may_eject(self) -> bool:
        """Whether one more ejection stays within --max-ejection-percent (one always may)
        and leaves a worker to route to: a lone worker that is slow or starved of CPU (its
        replies late while others load their models, say) is better than none."""
        cap = max(1, int(len(self.workers) * self.config.max_ejection_percent / 100))
        return self._ejected() < min(cap, len(self.workers) - 1)

    def _ejection_time(self, worker_id: str) -> float:
        """--ejection-time times the ejections of this worker that came within a minute of
        each other: a worker that keeps failing stays out longer each time."""
        now = time.monotonic()
        count, last = self._times_ejected.get(worker_id, (0, 0.0))
        count = count + 1 if now - last < 60 else 1
        self._times_ejected[worker_id] = (count, now)
        return min(self.config.ejection_time * count, 30.0)

    async def _probe(self, handle: WorkerHandle, wait_s: float) -> None:
        url = f"http://{handle.instance.http_address}/readyz"
        await asyncio.sleep(max(0.0, wait_s - self.config.probe_interval))
        while self.workers.get(handle.id) is handle:
            await asyncio.sleep(self.config.probe_interval)
            try:
                async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status != 200:
                        continue
            except (aiohttp.ClientError, TimeoutError):
                continue
            if self.workers.get(handle.id) is handle:
                await handle.channel.close()
                self.workers[handle.id] = self._handle(handle.instance, handle.meta, slow_start=True)
                log.info("worker %s is back (probe), in slow start", handle.id)
            return

    async def _watch_outliers(self) -> None:
        """Every quarter second: eject a worker that answered nothing for --stall-timeout
        with requests outstanding; every second: one whose answers mostly failed."""
        tick = 0
        while True:
            await asyncio.sleep(0.25)
            now, tick = time.monotonic(), tick + 1
            for handle in list(self.live()):
                b, silent = handle.balance, handle.channel.silent_for(now)
                if silent > self.config.stall_timeout:
                    self.eject(handle, f"no answer for {silent:.1f} s with {handle.channel.awaiting_reply} "
                                       "images waiting on it")
                elif tick % 4 == 0:
                    total = b.window_ok + b.window_failed
                    if total >= 10 and b.window_failed / total >= self.config.failure_rate:
                        self.eject(handle, f"{b.window_failed} of {total} answers failed in a second")
                if tick % 4 == 0:
                    b.window_ok = b.window_failed = 0

    async def _poll_loads(self) -> None:
        """Each worker's /stats every --load-poll-interval: the load p2p clients put on it,
        which no reply to this proxy carries."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        timeout = aiohttp.ClientTimeout(total=max(1.0, self.config.load_poll_interval))

        async def one(handle: WorkerHandle) -> None:
            try:
                async with self._session.get(f"http://{handle.instance.http_address}/stats", headers=headers,
                                             timeout=timeout) as r:
                    load = WorkerLoad.from_dict((await r.json(content_type=None)).get("load"))
            except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError):
                return
            if load is not None:
                handle.balance.report(load, time.monotonic())

        while True:
            await asyncio.sleep(self.config.load_poll_interval)
            await asyncio.gather(*(one(h) for h in self.live()))

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
        deadline = asyncio.get_running_loop().time() + self.config.retire_timeout
        while handle.outstanding and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        await handle.channel.close()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._spawn(self._watch_outliers())
        if self.config.load_poll_interval > 0:
            self._spawn(self._poll_loads())

    async def close(self) -> None:
        await cancel(*self._tasks)
        for handle in self.workers.values():
            await handle.channel.close()
        self.workers.clear()
        if self._session:
            await self._session.close()
        self._context.term()
