"""The proxy's lifecycle: start-up, serve, a seamless handover, drain, shutdown.

The proxy listens on a socket it opens itself, or on one it inherits (`--listen-fd`) from
the proxy it replaces. SIGHUP (`scripts/cluster restart-proxy`, or a process manager's
reload) hands over: start a successor with the same flags and the listening socket,
wait for its ready message, then stop accepting. The kernel socket and its accept queue
live on in the successor, so no connection is ever refused or reset; this process then
drains. A successor takes connections only once Consul has told it the workers; if
Consul is silent, it exits and this proxy serves on. SIGTERM/SIGINT stop: leave Consul
(maintenance), stop accepting, drain, deregister. Signal handlers only set a flag.

Drain: requests in flight finish; a request arriving on an existing keep-alive connection
is answered with `Connection: close` (the client's next one opens a connection to the
successor); connections still idle after --drain-idle seconds are closed. The gRPC server
stops when the drain begins: grpcio sends its channels GOAWAY, so their next calls go to
the successor, and lets the calls in flight finish; then it stops at once (what grpcio
holds without handing it to a handler would otherwise wait out the whole grace).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import AsyncExitStack

from aiohttp import web

from discovery.registration import Registration, ServiceInstance, advertised_address
from edge.app import app_runner
from edge.memory import freeze_startup_objects
from edge.tasks import cancel
from proxy.app import DRAINING, ConsulSilent, create_app
from proxy.config import ProxyConfig
from proxy.state import STATE

log = logging.getLogger(__name__)
REGISTER_RETRY_S = 2.0


def listening_socket(config: ProxyConfig) -> socket.socket:
    """The inherited socket (--listen-fd), or a new one on host:port."""
    if config.listen_fd >= 0:
        sock = socket.socket(fileno=config.listen_fd)
    else:
        sock = socket.create_server((config.host, config.port), backlog=1024)
    sock.set_inheritable(False)  # passed on explicitly (pass_fds), never by accident
    sock.setblocking(False)
    return sock


def successor_argv(listen_fd: int, ready_fd: int) -> list[str]:
    """This process's command line, listening on the handed-over socket."""
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg in ("--listen-fd", "--ready-fd"):
            skip = True
        elif not arg.startswith(("--listen-fd=", "--ready-fd=")):
            args.append(arg)
    return [sys.executable, "-m", "proxy", *args, "--listen-fd", str(listen_fd), "--ready-fd", str(ready_fd)]


class ProxyServer:
    def __init__(self, config: ProxyConfig):
        self.config = config
        self.signalled = asyncio.Event()
        self.handover = False  # SIGHUP (hand over) rather than SIGTERM (stop)
        self.registration: Registration | None = None
        self.registering: asyncio.Task | None = None  # while this host's address cannot be learnt

    def _on_signal(self, sig: int) -> None:
        self.handover = sig == signal.SIGHUP
        self.signalled.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self._on_signal, sig)
        async with AsyncExitStack() as resources:
            app = create_app(self.config)
            runner = app_runner(app, shutdown_timeout=self.config.request_timeout)
            resources.push_async_callback(runner.cleanup)  # after a failed setup too: what it opened
            try:
                await runner.setup()
            except ConsulSilent as exc:
                log.error("%s: not taking over; the proxy before this one keeps serving", exc)
                return 1
            sock = listening_socket(self.config)
            site = web.SockSite(runner, sock)
            await site.start()
            await self._register(resources, sock.getsockname()[1])
            freeze_startup_objects()
            self._announce_ready(sock)
            while True:
                await self.signalled.wait()
                self.signalled.clear()
                if not self.handover or await self._hand_over(sock):
                    break
            await self._drain(app, runner, site)
        log.info("stopped")
        return 0

    async def _register(self, resources: AsyncExitStack, port: int) -> None:
        """Register in Consul as a proxy. Bound to every interface with no --advertise, our
        address comes from the local agent: if it is down, keep asking in the background
        and serve meanwhile (clients given our URL reach us), so that Consul DNS lists us
        once it is back (before, such a proxy never registered)."""
        if not self.config.register:
            return
        resources.push_async_callback(self._leave_consul)
        if not await self._try_register(port, quiet=False):
            self.registering = asyncio.create_task(self._register_when_reachable(port))

    async def _try_register(self, port: int, quiet: bool) -> bool:
        c = self.config
        try:
            address = await advertised_address(c.consul, c.host, c.advertise)
        except Exception as exc:
            if not quiet:
                log.error("not registered in Consul yet: cannot learn this host's address (%s); trying every "
                          "%g s (or pass --advertise)", exc, REGISTER_RETRY_S)
            return False
        instance = ServiceInstance(c.proxy_service_name, f"{c.proxy_service_name}-{address}-{port}", address, port,
                                   {"grpc_port": str(c.grpc_port)})
        self.registration = Registration(c.consul, instance, http_check=f"http://{address}:{port}/readyz")
        await self.registration.start()
        return True

    async def _register_when_reachable(self, port: int) -> None:
        while not await self._try_register(port, quiet=True):
            await asyncio.sleep(REGISTER_RETRY_S)

    async def _leave_consul(self) -> None:
        await cancel(self.registering)
        if self.registration:  # a handed-over proxy leaves it to its successor (the same id)
            await self.registration.close(deregister=not self.handover)

    def _announce_ready(self, sock: socket.socket) -> None:
        host, port = sock.getsockname()[:2]
        event = json.dumps({"event": "ready", "url": f"http://{host}:{port}", "pid": os.getpid()})
        if self.config.ready_fd >= 0:  # our predecessor waits for this
            with os.fdopen(self.config.ready_fd, "w") as ready:
                ready.write(event + "\n")
        if self.config.pid_file:
            tmp = f"{self.config.pid_file}.{os.getpid()}"
            with open(tmp, "w") as f:
                f.write(f"{os.getpid()}\n")
            os.replace(tmp, self.config.pid_file)
        print(event, flush=True)

    async def _hand_over(self, sock: socket.socket) -> bool:
        """Start a successor on our socket; True once it is ready (then we drain)."""
        read_fd, write_fd = os.pipe()
        argv = successor_argv(sock.fileno(), write_fd)
        log.info("handing over %s to a new proxy", sock.getsockname())
        proc = subprocess.Popen(argv, pass_fds=(sock.fileno(), write_fd))
        os.close(write_fd)
        loop = asyncio.get_running_loop()
        with os.fdopen(read_fd) as ready:
            line = await loop.run_in_executor(None, ready.readline)  # '' if it exits first
        if '"ready"' not in line:
            log.error("the new proxy (pid %d) did not become ready (exit %s): still serving", proc.pid, proc.poll())
            return False
        log.info("handed over to pid %d: draining", proc.pid)
        return True

    async def _drain(self, app: web.Application, runner: web.AppRunner, site: web.BaseSite) -> None:
        if self.registration and not self.handover:
            await self.registration.drain()  # out of every passing query first
        app[DRAINING].set()  # every answer from now on says Connection: close
        await site.stop()  # stop accepting; a successor keeps the kernel socket
        state = app[STATE]
        # gRPC at once: its GOAWAY sends a channel's next calls to the successor, listening on
        # the same port (SO_REUSEPORT); calls in flight get what an HTTP request gets.
        grpc_stopped = asyncio.ensure_future(state.grpc.stop(self.config.request_timeout))
        deadline = time.monotonic() + self.config.drain_idle
        while time.monotonic() < deadline and (state.in_flight or runner.server.connections):
            await asyncio.sleep(0.02)
        log.info("drained: %d request(s) in flight, %d connection(s) left to close", state.in_flight,
                 len(runner.server.connections))
        await grpc_stopped
