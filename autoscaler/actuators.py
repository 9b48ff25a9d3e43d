"""Actuators: how a decision becomes workers, behind one small interface.

- `LocalProcesses`: `python -m worker ...` processes on this host, started and drained by
  the autoscaler itself (what `scripts/cluster autoscale` uses).
- `ComposeScale`: `docker compose up -d --scale worker=N --no-recreate worker`; Compose's
  own stop sends SIGTERM and waits `stop_grace_period`, so the worker drains.
- `CommandHook`: any command, with {model} and {desired} filled in (Kubernetes, Nomad, ...).

Scale-down always drains: SIGTERM puts the worker in Consul maintenance (the proxy and
lookups drop it within milliseconds), it finishes what it accepted, deregisters and exits.
Nothing is killed with work in flight. The local actuator removes the idlest worker first
and, among equally idle ones, the newest.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from autoscaler.load import WorkerLoad

log = logging.getLogger(__name__)


class Actuator(Protocol):
    def pending(self, live: list[WorkerLoad]) -> int:
        """Workers asked for that are not live yet (starting)."""

    async def scale(self, desired: int, live: list[WorkerLoad]) -> None: ...

    async def close(self) -> None: ...


@dataclass
class Child:
    proc: asyncio.subprocess.Process
    started: float = field(default_factory=time.monotonic)
    worker_id: str | None = None  # from its `ready` line
    draining: bool = False

    @property
    def active(self) -> bool:
        return not self.draining and self.proc.returncode is None


class LocalProcesses:
    def __init__(self, argv: list[str], log_dir: Path | None = None, stop_timeout: float = 40.0):
        self.argv = argv
        self.log_dir = log_dir
        self.stop_timeout = stop_timeout
        self.children: list[Child] = []
        self._readers: set[asyncio.Task] = set()

    def pending(self, live: list[WorkerLoad]) -> int:
        live_ids = {w.worker_id for w in live}
        return sum(1 for c in self.children if c.active and c.worker_id not in live_ids)

    async def scale(self, desired: int, live: list[WorkerLoad]) -> None:
        self.children = [c for c in self.children if c.proc.returncode is None]  # reap
        delta = desired - len(live) - self.pending(live)
        for _ in range(delta):
            await self._start()
        if delta < 0:
            self._drain(-delta, {w.worker_id: w.in_flight for w in live})

    async def _start(self) -> None:
        stderr = open(self.log_dir / f"worker-{len(self.children)}-{int(time.time())}.log", "ab") \
            if self.log_dir else asyncio.subprocess.DEVNULL
        try:
            proc = await asyncio.create_subprocess_exec(*self.argv, stdout=asyncio.subprocess.PIPE, stderr=stderr)
        finally:
            if stderr is not asyncio.subprocess.DEVNULL:
                stderr.close()  # the child has its own copy
        child = Child(proc)
        self.children.append(child)
        task = asyncio.create_task(self._read_ready(child))
        self._readers.add(task)
        task.add_done_callback(self._readers.discard)
        log.info("started worker process %d", proc.pid)

    @staticmethod
    async def _read_ready(child: Child) -> None:
        async for line in child.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == "ready":
                child.worker_id = event.get("worker_id")

    def _drain(self, count: int, loads: dict[str, float | None]) -> None:
        """SIGTERM the `count` idlest of our workers (newest first among equals)."""
        ours = [c for c in self.children if c.active]
        ours.sort(key=lambda c: (loads.get(c.worker_id) or 0.0, -c.started))
        for child in ours[:count]:
            child.draining = True
            child.proc.send_signal(signal.SIGTERM)
            log.info("draining worker %s (pid %d, %s in flight)", child.worker_id, child.proc.pid,
                     loads.get(child.worker_id))

    async def close(self) -> None:
        """Drain every worker we started and wait for them (bounded)."""
        for child in self.children:
            if child.proc.returncode is None:
                child.proc.send_signal(signal.SIGTERM)
        for child in self.children:
            try:
                await asyncio.wait_for(child.proc.wait(), self.stop_timeout)
            except TimeoutError:
                child.proc.kill()
                await child.proc.wait()
        for task in list(self._readers):
            task.cancel()


class _CommandActuator:
    """Runs a command per decision; counts the asked-for workers as pending for `settle` s."""

    def __init__(self, settle: float = 30.0):
        self.settle = settle
        self._asked: tuple[int, float] | None = None  # (desired, when)

    def command(self, desired: int) -> list[str]:
        raise NotImplementedError

    def pending(self, live: list[WorkerLoad]) -> int:
        if self._asked is None or time.monotonic() - self._asked[1] > self.settle:
            return 0
        return max(0, self._asked[0] - len(live))

    async def scale(self, desired: int, live: list[WorkerLoad]) -> None:
        argv = self.command(desired)
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            log.error("%s exited with %d: %s", shlex.join(argv), proc.returncode, out.decode(errors="replace")[-500:])
            return
        self._asked = (desired, time.monotonic())

    async def close(self) -> None:
        pass  # the workers belong to Compose or to the command's system


class ComposeScale(_CommandActuator):
    def __init__(self, compose: str = "docker compose", service: str = "worker", settle: float = 30.0):
        super().__init__(settle)
        self.compose = shlex.split(compose)
        self.service = service

    def command(self, desired: int) -> list[str]:
        return [*self.compose, "up", "-d", "--scale", f"{self.service}={desired}", "--no-recreate", self.service]


class CommandHook(_CommandActuator):
    def __init__(self, template: str, model: str, settle: float = 30.0):
        super().__init__(settle)
        self.template = template
        self.model = model

    def command(self, desired: int) -> list[str]:
        return [part.format(model=self.model, desired=desired) for part in shlex.split(self.template)]
