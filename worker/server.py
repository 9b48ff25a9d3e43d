"""The worker's lifecycle, in named steps: start-up, serve, drain, shutdown.

Start-up opens resources in an order that matters, each pushed on one AsyncExitStack so
shutdown closes them in reverse: the listeners first, HTTP, gRPC and ZeroMQ (so /healthz
answers while the models load and /readyz says 503; no proxy knows the ZeroMQ port before
registration), then the models and their batchers, the Consul registration (only a ready
worker registers), and the version watcher. Serving is waiting for a signal; the signal
handler only sets a flag. Drain leaves rotation (maintenance mode) before anything else,
refuses new work with 503, and lets accepted requests finish within the drain timeout;
shutdown then unwinds the stack (the registration's close deregisters). The batchers
close before any listener: each image still waiting when a drain ran out of time fails
with Stopped, and its request is answered 503 `shutting_down` on the entry point it came
by, which is still open. The process exits 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import time
import uuid
from contextlib import AsyncExitStack

from aiohttp import web

from discovery.registration import Registration, ServiceInstance, advertised_address
from edge.app import app_runner
from edge.memory import freeze_startup_objects
from edge.metrics import METRICS
from edge.priority import compute_pool
from edge.v2_grpc import start_grpc
from edge.v2_rest import SERVICE
from worker.batcher import Batcher
from worker.config import WorkerConfig
from worker.http_api import create_app
from worker.metrics import BatchMetrics
from worker.model import Model, ModelError
from worker.protocol import ServedModel, WorkerMeta
from worker.service import WorkerState
from worker.versions import VersionWatcher, load_configured_models
from worker.zmq_endpoint import ZmqEndpoint

log = logging.getLogger(__name__)


class StartupError(Exception):
    """Start-up cannot go on; the message says what to do."""


class WorkerServer:
    def __init__(self, config: WorkerConfig):
        self.config = config
        worker_id = f"{config.edge.service_name}-{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.state = WorkerState(config=config, worker_id=worker_id)
        self.stop = asyncio.Event()
        self.registration: Registration | None = None
        self.address = ""
        self.http_port = 0
        self.zmq_port = 0
        self.grpc_port = 0

    async def run(self) -> int:
        """The whole life; the process's exit status."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        # Models load on the default executor, and the threads their runtimes start
        # (XNNPACK's, ONNX Runtime's) inherit its lower priority; asyncio.run closes it.
        loop.set_default_executor(compute_pool(None, "background"))
        started = time.perf_counter()
        async with AsyncExitStack() as resources:
            try:
                if not await self.startup(resources):
                    return 0  # stopped while loading
            except StartupError as exc:
                log.error("%s", exc)
                return 1
            freeze_startup_objects()
            self.announce_ready(time.perf_counter() - started)
            await self.stop.wait()
            log.info("signal received: draining")
            await self.drain()
        log.info("stopped")
        return 0

    async def startup(self, resources: AsyncExitStack) -> bool:
        """Open everything, in order; False when a signal arrived before the model loaded."""
        app = create_app(self.state)
        runner = app_runner(app, shutdown_timeout=1.0)  # our drain already waited for in-flight work
        await runner.setup()
        resources.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, self.config.host, self.config.port).start()
        self.http_port = runner.addresses[0][1]
        grpc = await start_grpc(app[SERVICE], self.config.edge, self.config.host, self.config.grpc_port,
                                app[METRICS].registry)
        resources.push_async_callback(grpc.stop, 1.0)
        self.grpc_port = grpc.port
        endpoint = ZmqEndpoint(self.state, self.config.host, self.config.zmq_port, self.config.max_zmq_message_bytes)
        endpoint.start()
        resources.push_async_callback(endpoint.close)
        self.zmq_port = endpoint.port
        log.info("listening on %s:%d (gRPC %d, ZeroMQ %d), loading models from %s", self.config.host, self.http_port,
                 self.grpc_port, self.zmq_port, self.config.model_repository)

        models = await self._load_unless_stopped()
        if models is None:
            return False
        metrics = BatchMetrics(app[METRICS].registry)
        for model in models:
            batcher = Batcher(model, self.config.batch, metrics.for_model(model.name))
            batcher.start()
            resources.push_async_callback(batcher.close)
            self.state.batchers[model.name] = batcher

        await self._register(resources)
        versions = VersionWatcher(self.state, lambda _model: self.registration.update_meta(self.meta().to_meta()),
                                  poll_s=self.config.version_poll)
        versions.start()
        resources.push_async_callback(versions.close)
        return True

    async def _load_unless_stopped(self) -> list[Model] | None:
        load = asyncio.get_running_loop().run_in_executor(None, load_configured_models, self.config)
        stopped = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait([load, stopped], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if self.stop.is_set():
            return None
        try:
            return load.result()
        except ModelError as exc:
            raise StartupError(f"cannot serve the models: {exc}") from None

    async def _register(self, resources: AsyncExitStack) -> None:
        self.address = await self._advertised_address()
        # Tagged with its models, so Consul DNS finds a model's workers: MODEL.classifier.service.consul.
        instance = ServiceInstance(self.config.edge.service_name, self.state.worker_id, self.address,
                                   self.http_port, self.meta().to_meta(), tags=sorted(self.state.batchers))
        self.registration = Registration(self.config.consul, instance, ttl_s=self.config.heartbeat_ttl)
        await self.registration.start()
        resources.push_async_callback(self.registration.close)  # deregisters

    async def _advertised_address(self) -> str:
        config = self.config
        try:
            return await advertised_address(config.consul, config.host, config.advertise)
        except Exception as exc:
            raise StartupError(f"cannot learn this host's address from Consul at {config.consul.host}:"
                               f"{config.consul.port} ({exc}): start Consul or pass --advertise ADDRESS") from None

    def meta(self) -> WorkerMeta:
        """Consul Meta: what a proxy needs to reach this worker and preprocess for each model."""
        models = {name: ServedModel(m.version, m.backend, m.input_shape, len(m.labels), m.preprocessing.crop_fraction,
                                    m.preprocessing.resample)
                  for name, m in self.state.models.items()}
        return WorkerMeta(self.state.worker_id, self.http_port, self.zmq_port, self.grpc_port,
                          self.config.preprocessing, models)

    def announce_ready(self, seconds: float) -> None:
        """The `ready` line on stdout: what scripts and tests wait for."""
        models = {name: m.version for name, m in self.state.models.items()}
        print(json.dumps({
            "event": "ready", "worker_id": self.state.worker_id,
            "url": f"http://{self.address}:{self.http_port}", "zmq": f"tcp://{self.address}:{self.zmq_port}",
            "grpc": f"{self.address}:{self.grpc_port}", "models": models, "startup_seconds": round(seconds, 3),
        }), flush=True)
        log.info("ready in %.2f s (models: %s; loading took %.2f s)", seconds,
                 ", ".join(f"{n} v{v}" for n, v in models.items()),
                 sum(m.load_seconds for m in self.state.models.values()))

    async def drain(self) -> None:
        """Leave rotation, refuse new work, let accepted work finish (bounded)."""
        self.state.draining = True
        await self.registration.drain()
        deadline = time.monotonic() + self.config.drain_timeout
        while self.state.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.state.in_flight:  # shutdown's batcher closes answer them (module docstring)
            log.warning("drain timeout: answering the %d requests still in flight 503 shutting_down",
                        self.state.in_flight)
        else:
            log.info("drained: no request in flight")
