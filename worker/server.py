"""Worker lifecycle: listen, load the model, register, serve, drain on SIGTERM/SIGINT.

Order matters. HTTP listens first so /healthz answers while the model loads (/readyz
says 503 until it is loaded). Only a ready worker registers with Consul. On a signal
the worker leaves rotation (maintenance mode) before anything else, refuses new work
with 503, lets accepted requests finish within the drain timeout, deregisters, exits 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from discovery.registration import Registration, ServiceInstance, agent_address
from worker.batcher import Batcher
from worker.config import WorkerConfig
from worker.http_api import create_app
from worker.model import load_model
from worker.service import WorkerState
from worker.versions import VersionWatcher
from worker.zmq_endpoint import ZmqEndpoint

log = logging.getLogger(__name__)

ANY_ADDRESS = ("", "0.0.0.0", "::")


async def advertised_address(config: WorkerConfig) -> str:
    if config.advertise:
        return config.advertise
    if config.host not in ANY_ADDRESS:
        return config.host
    # Bound to every interface: the local Consul agent's address is this host's.
    return await agent_address(config.consul)


def service_meta(state: WorkerState, http_port: int, zmq_port: int) -> dict[str, str]:
    """Consul Meta: what a proxy needs to preprocess for this worker and reach it."""
    m = state.model
    return {
        "worker_id": state.worker_id,
        "model": m.name,
        "version": m.version,
        "backend": m.backend,
        "input_shape": "x".join(map(str, m.input_shape)),
        "num_labels": str(len(m.labels)),
        "crop_fraction": str(m.preprocessing.crop_fraction),
        "resample": m.preprocessing.resample,
        "http_port": str(http_port),
        "zmq_port": str(zmq_port),
    }


async def drain(state: WorkerState, registration: Registration | None) -> None:
    state.draining = True
    if registration:
        await registration.drain()
    deadline = time.monotonic() + state.config.drain_timeout_s
    while state.in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if state.in_flight:
        log.warning("drain timeout: %d requests still in flight", state.in_flight)
    else:
        log.info("drained: no request in flight")


async def serve(config: WorkerConfig) -> int:
    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    worker_id = f"{config.service_name}-{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    state = WorkerState(
        config=config,
        worker_id=worker_id,
        decode_pool=ThreadPoolExecutor(config.decode_threads, thread_name_prefix="decode"),
    )
    # Our drain already waited for in-flight work; aiohttp need not wait again.
    runner = web.AppRunner(create_app(state), access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    port = runner.addresses[0][1]
    log.info("listening on %s:%d, loading %s", config.host, port, config.model_dir)

    registration = None
    endpoint = None
    versions = None
    try:
        load = loop.run_in_executor(
            None,
            lambda: load_model(
                config.model_dir,
                backend=config.backend,
                intra_op_threads=config.intra_op_threads,
                inter_op_threads=config.inter_op_threads,
            ),
        )
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait([load, stopped], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if stop.is_set():
            return 0
        state.model = load.result()
        state.batcher = Batcher(state.model, config.batch)
        state.batcher.start()
        endpoint = ZmqEndpoint(state, config.host, config.zmq_port, config.max_zmq_message_bytes)
        endpoint.start()

        try:
            address = await advertised_address(config)
        except Exception as exc:
            log.error("cannot learn this host's address from Consul at %s:%d (%s): start Consul or pass "
                      "--advertise ADDRESS", config.consul.host, config.consul.port, exc)
            return 1
        registration = Registration(
            config.consul,
            ServiceInstance(config.service_name, worker_id, address, port, service_meta(state, port, endpoint.port)),
            ttl_s=config.heartbeat_ttl_s,
        )
        await registration.start()
        versions = VersionWatcher(
            state, lambda model: registration.update_meta(service_meta(state, port, endpoint.port)),
            poll_s=config.version_poll_s,
        )
        versions.start()
        ready = {
            "event": "ready",
            "worker_id": worker_id,
            "url": f"http://{address}:{port}",
            "zmq": f"tcp://{address}:{endpoint.port}",
            "model": state.model.name,
            "version": state.model.version,
            "startup_seconds": round(time.perf_counter() - started, 3),
        }
        print(json.dumps(ready), flush=True)
        log.info("ready in %.2f s (model load %.2f s)", ready["startup_seconds"], state.model.load_seconds)

        await stop.wait()
        log.info("signal received: draining")
        await drain(state, registration)
        return 0
    finally:
        if versions:
            await versions.close()
        if registration:
            await registration.close()
        await runner.cleanup()
        if endpoint:
            await endpoint.close()
        if state.batcher:
            await state.batcher.stop()
        state.decode_pool.shutdown(wait=False, cancel_futures=True)
        log.info("stopped")
