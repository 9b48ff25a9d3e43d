"""The Consul watcher against a real dev agent: registrations, maintenance and
deregistrations reach the callback, and only passing instances are listed."""

from __future__ import annotations

import uuid

import pytest

from discovery.registration import ConsulAddress
from discovery.watcher import ServiceWatcher
from tests.conftest import until

pytestmark = pytest.mark.system


async def test_watcher_follows_register_maintenance_deregister(consul_agent):
    host, port = consul_agent.address.split(":")
    address = ConsulAddress(host, int(port))
    service = f"watched-{uuid.uuid4().hex[:6]}"
    seen: list[dict] = []
    watcher = ServiceWatcher(address, service, seen.append, wait_s=5)
    watcher.start()
    client = address.client()
    try:
        await until(lambda: watcher.connected and seen)  # the first (empty) answer
        assert seen[-1] == {}
        await client.agent.service.register(service, service_id="a", address="127.0.0.9", port=7,
                                            meta={"k": "v"}, check={"ttl": "30s", "Status": "passing"})
        await until(lambda: "a" in seen[-1])
        instance = seen[-1]["a"]
        assert (instance.http_address, instance.meta) == ("127.0.0.9:7", {"k": "v"})
        await client.agent.service.maintenance("a", True, reason="test")
        await until(lambda: seen[-1] == {})
        await client.agent.service.maintenance("a", False)
        await until(lambda: "a" in seen[-1])
        await client.agent.service.deregister("a")
        await until(lambda: seen[-1] == {})
    finally:
        await watcher.close()
        await client.close()
