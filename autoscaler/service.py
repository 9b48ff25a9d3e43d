"""The autoscaler's loop and lifecycle: look (Consul + workers' /metrics), decide
(autoscaler/policy.py), act (autoscaler/actuators.py), and say why.

Every look that changes something is logged with its inputs and reason, and all looks are
exported: `imagecluster_autoscaler_desired_workers`, `..._live_workers`, `..._load`, and
`imagecluster_autoscaler_decisions_total{direction}` at GET /metrics; the last decisions
as JSON at GET /decisions. When Consul cannot be read the autoscaler holds: it never acts
on a load it could not see, and a worker whose /metrics did not answer counts as fully
busy, never as idle.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections import deque
from contextlib import AsyncExitStack
from dataclasses import asdict

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from autoscaler.actuators import Actuator
from autoscaler.config import AutoscalerConfig
from autoscaler.load import observe
from autoscaler.policy import Decision, Scaler
from discovery.watcher import ServiceWatcher

log = logging.getLogger(__name__)


class Autoscaler:
    def __init__(self, config: AutoscalerConfig, actuator: Actuator):
        self.config = config
        self.actuator = actuator
        self.scaler = Scaler(config.policy)
        self.decisions: deque[Decision] = deque(maxlen=200)
        self.stop = asyncio.Event()
        self.registry = CollectorRegistry()
        labels = ["model"]
        self.desired = Gauge("imagecluster_autoscaler_desired_workers", "Workers the last look wanted", labels,
                             registry=self.registry)
        self.live = Gauge("imagecluster_autoscaler_live_workers", "Workers live (and starting) at the last look",
                          labels, registry=self.registry)
        self.load = Gauge("imagecluster_autoscaler_load", "Images in flight on the model's workers", labels,
                          registry=self.registry)
        self.counts = Counter("imagecluster_autoscaler_decisions_total", "Looks by what they decided",
                              ["model", "direction"], registry=self.registry)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        async with AsyncExitStack() as resources:
            resources.push_async_callback(self.actuator.close)  # drains the workers it started
            port = await self._serve_http(resources)
            watcher = ServiceWatcher(self.config.consul, self.config.service_name, lambda _instances: None)
            watcher.start()
            resources.push_async_callback(watcher.close)
            session = await resources.enter_async_context(aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=max(0.5, self.config.interval))))
            print(json.dumps({"event": "ready", "url": f"http://{self.config.host}:{port}"}), flush=True)
            while not self.stop.is_set():
                await self.tick(watcher, session)
                try:
                    await asyncio.wait_for(self.stop.wait(), self.config.interval)
                except TimeoutError:
                    pass
            log.info("stopping: draining the workers this autoscaler started")
        return 0

    async def tick(self, watcher: ServiceWatcher, session: aiohttp.ClientSession) -> Decision | None:
        if not (watcher.synced and watcher.connected):  # Consul unreachable: hold, never act blind
            log.debug("Consul not answering: holding")
            return None
        workers = await observe(watcher.instances, session, self.config.auth_token)
        live = [w for w in workers if self.config.model in w.models]
        target = self.config.policy.target_in_flight
        load = sum(target if w.in_flight is None else w.in_flight for w in live)
        current = len(live) + self.actuator.pending(live)
        decision = self.scaler.decide(asyncio.get_running_loop().time(), current, load)
        self._record(decision, current)
        if decision.direction != "hold":
            log.info("scale %s: %d -> %d workers (load %g in flight on %d live, target %g each): %s",
                     decision.direction, current, decision.desired, load, len(live), target, decision.reason,
                     extra={"decision": asdict(decision), "model": self.config.model})
            await self.actuator.scale(decision.desired, live)
        return decision

    def _record(self, decision: Decision, current: int) -> None:
        model = self.config.model
        self.decisions.append(decision)
        self.desired.labels(model).set(decision.desired)
        self.live.labels(model).set(current)
        self.load.labels(model).set(decision.load)
        self.counts.labels(model, decision.direction).inc()

    async def _serve_http(self, resources: AsyncExitStack) -> int:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/decisions", self._decisions)
        app.router.add_get("/healthz", lambda request: web.json_response({"status": "alive"}))
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        resources.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, self.config.host, self.config.port).start()
        return runner.addresses[0][1]

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _decisions(self, request: web.Request) -> web.Response:
        changes = [asdict(d) for d in self.decisions if d.direction != "hold"]
        return web.json_response({"model": self.config.model, "changes": changes,
                                  "last": asdict(self.decisions[-1]) if self.decisions else None})
