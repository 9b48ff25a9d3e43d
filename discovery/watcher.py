"""Keep a live set of a service's passing instances, from Consul blocking queries.

A blocked query returns within milliseconds of a register, deregister, maintenance
toggle or check change, so subscribers see changes well within a second. When Consul
is unreachable the watcher keeps the last known set, says so once in the log, and
resumes watching when Consul answers again.

An agent that comes back may have lost its registrations (a dev agent keeps nothing),
and its instances reappear only as they re-register on their next heartbeat. So for
`resync_grace_s` after a reconnect, instances missing from Consul's answer are kept
(and Consul is asked again every second); after that, Consul's answer is the set.
Instances that really died meanwhile are the proxy's to eject (ZeroMQ disconnect).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from discovery.registration import ConsulAddress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Instance:
    """One passing service instance, as Consul describes it."""

    id: str
    address: str
    port: int
    meta: dict[str, str] = field(default_factory=dict, hash=False, compare=True)

    @property
    def http_address(self) -> str:
        return f"{self.address}:{self.port}"


def parse_entries(entries: list[dict]) -> dict[str, Instance]:
    instances = {}
    for entry in entries:
        s = entry["Service"]
        address = s.get("Address") or entry["Node"]["Address"]
        instances[s["ID"]] = Instance(s["ID"], address, int(s["Port"]), dict(s.get("Meta") or {}))
    return instances


class ServiceWatcher:
    def __init__(
        self,
        consul: ConsulAddress,
        service: str,
        on_change: Callable[[dict[str, Instance]], None],
        wait_s: float = 30.0,
        resync_grace_s: float = 5.0,
    ):
        self.consul = consul
        self.service = service
        self.on_change = on_change
        self.wait = f"{wait_s:g}s"  # Consul's blocking-query wait
        self.resync_grace_s = resync_grace_s
        self.instances: dict[str, Instance] = {}
        self.connected = False
        self._answered = asyncio.Event()  # set by the first successful answer
        self._task: asyncio.Task | None = None

    @property
    def synced(self) -> bool:
        """True after the first successful answer."""
        return self._answered.is_set()

    async def wait_synced(self, timeout_s: float) -> bool:
        """Whether Consul has answered within `timeout_s`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._answered.wait(), timeout_s)
        return self.synced

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name=f"watch-{self.service}")

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _watch(self) -> None:
        client = self.consul.client()
        loop = asyncio.get_running_loop()
        index = None
        backoff = 0.1
        grace_until = 0.0
        in_grace = False
        try:
            while True:
                was_in_grace, in_grace = in_grace, loop.time() < grace_until
                if was_in_grace and not in_grace:
                    index = None  # answer now, so instances that never came back leave at once
                try:
                    index, entries = await client.health.service(
                        self.service, passing=True, index=index, wait="1s" if in_grace else self.wait
                    )
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if self.connected or not self.synced:
                        log.warning(
                            "Consul at %s:%d unreachable (%s); keeping the last known %d instance(s)",
                            self.consul.host, self.consul.port, exc, len(self.instances),
                        )
                    self.connected = False
                    index = None  # a restarted agent starts its indexes again
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                if not self.connected and self.synced:
                    log.info("Consul is back; watching %s again", self.service)
                    grace_until = loop.time() + self.resync_grace_s
                    in_grace = True
                self.connected = True
                backoff = 0.1
                instances = parse_entries(entries)
                if in_grace:  # keep what has not re-registered yet
                    instances = {**{k: v for k, v in self.instances.items() if k not in instances}, **instances}
                if instances != self.instances or not self.synced:
                    self.instances = instances
                    self.on_change(instances)
                self._answered.set()
        finally:
            await client.close()
