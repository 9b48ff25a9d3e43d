"""Register a worker with its local Consul agent and keep the registration alive.

Health is a TTL check the worker passes on a heartbeat: if the process dies or hangs,
the check goes critical within `ttl` and the instance leaves the passing set, without
Consul needing to reach the worker. Each heartbeat that fails (Consul restarted and
lost its state, or was unreachable) re-registers, so the worker heals itself.

Draining puts the service in maintenance mode, which takes it out of every passing
query at once, then the caller finishes its in-flight work and deregisters.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from dataclasses import dataclass, field

import consul
import consul.aio

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConsulAddress:
    host: str = "127.0.0.1"
    port: int = 8500
    token: str | None = None

    @classmethod
    def parse(cls, value: str, token: str | None = None) -> "ConsulAddress":
        """'host:port', 'host' or 'http://host:port' -> ConsulAddress."""
        value = value.removeprefix("http://")
        host, _, port = value.rpartition(":") if ":" in value else (value, "", "8500")
        return cls(host or "127.0.0.1", int(port), token or None)

    @staticmethod
    def add_flags(p: argparse.ArgumentParser) -> None:
        """--consul and --consul-token; `from_flags` makes them one ConsulAddress."""
        p.add_argument("--consul", default=os.environ.get("CONSUL_HTTP_ADDR", "127.0.0.1:8500"),
                       help="Consul agent host:port (default $CONSUL_HTTP_ADDR or 127.0.0.1:8500)")
        p.add_argument("--consul-token", default=os.environ.get("CONSUL_HTTP_TOKEN"),
                       help="ACL token (default $CONSUL_HTTP_TOKEN)")

    @classmethod
    def from_flags(cls, args: argparse.Namespace) -> "ConsulAddress":
        return cls.parse(args.consul, args.consul_token)

    def client(self) -> consul.aio.Consul:
        return consul.aio.Consul(host=self.host, port=self.port, token=self.token)


@dataclass
class ServiceInstance:
    name: str
    service_id: str
    address: str
    port: int
    meta: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)  # Consul DNS answers TAG.SERVICE.service.consul by them


async def agent_address(address: ConsulAddress) -> str:
    """The address the local agent advertises: where other hosts reach this node."""
    client = address.client()
    try:
        info = await client.agent.self()
        return info["Member"]["Addr"]
    finally:
        await client.close()


ANY_ADDRESS = ("", "0.0.0.0", "::")


async def advertised_address(consul_address: ConsulAddress, host: str, advertise: str | None) -> str:
    """Where other hosts reach a service bound to `host`: `advertise` when given, else the
    bind address, else (bound to every interface) the local Consul agent's address."""
    if advertise:
        return advertise
    if host not in ANY_ADDRESS:
        return host
    return await agent_address(consul_address)


class Registration:
    """`http_check`: let the agent poll this URL (the proxy's /readyz) instead of a TTL check
    passed by heartbeats; the heartbeat then only re-registers after a Consul restart."""

    def __init__(self, consul_address: ConsulAddress, instance: ServiceInstance, ttl_s: float = 5.0,
                 http_check: str | None = None):
        self.instance = instance
        self.ttl_s = ttl_s
        self.http_check = http_check
        self.check_id = f"service:{instance.service_id}"
        self._client = consul_address.client()
        self._heartbeat: asyncio.Task | None = None
        self._registered = False
        self._maintenance = False

    async def start(self) -> None:
        """Register now if Consul answers; keep trying in the background if not."""
        await self._beat()
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name="consul-heartbeat")

    async def _register(self) -> None:
        inst = self.instance
        await self._client.agent.service.register(
            inst.name,
            service_id=inst.service_id,
            address=inst.address,
            port=inst.port,
            tags=inst.tags,
            meta=inst.meta,
            check=self._check(),
        )
        if self._maintenance:
            await self._client.agent.service.maintenance(inst.service_id, True, reason="draining")
        self._registered = True
        log.info("registered %s at %s:%d with Consul", inst.service_id, inst.address, inst.port)

    def _check(self) -> dict:
        # Registered only when ready, so the check starts passing rather than critical
        # until the first heartbeat (or poll) reaches Consul.
        if self.http_check:
            return {"http": self.http_check, "interval": "1s", "timeout": "1s",
                    "DeregisterCriticalServiceAfter": "1m", "Status": "passing"}
        return {"ttl": f"{self.ttl_s:g}s", "DeregisterCriticalServiceAfter": "1m", "Status": "passing"}

    async def _beat(self) -> None:
        try:
            if not self._registered:
                await self._register()
            if self.http_check:  # the agent polls us; just make sure it still knows us
                if self.instance.service_id not in await self._client.agent.services():
                    raise LookupError("the agent lost our registration")
            else:
                await self._client.agent.check.ttl_pass(self.check_id)
        except Exception as exc:  # unreachable, restarted without our service, ...
            if self._registered:
                log.warning("Consul heartbeat failed (%s); will re-register", exc)
            else:
                log.warning("Consul registration failed (%s); retrying", exc)
            self._registered = False

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            await self._beat()

    async def update_meta(self, meta: dict[str, str]) -> None:
        """Re-register with new Meta (e.g. a new model version); Consul replaces the entry."""
        self.instance.meta = meta
        self._registered = False
        await self._beat()

    async def drain(self) -> None:
        """Take the instance out of rotation (maintenance mode) but keep it registered."""
        self._maintenance = True
        try:
            await self._client.agent.service.maintenance(self.instance.service_id, True, reason="draining")
        except Exception as exc:
            log.warning("could not enter maintenance mode: %s", exc)

    async def close(self, deregister: bool = True) -> None:
        """Stop heartbeats and deregister (unless a successor took the registration over)."""
        if self._heartbeat:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        try:
            if deregister:
                await self._client.agent.service.deregister(self.instance.service_id)
                log.info("deregistered %s", self.instance.service_id)
        except Exception as exc:
            log.warning("could not deregister %s: %s", self.instance.service_id, exc)
        await self._client.close()
