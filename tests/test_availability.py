"""Several proxies: each registers in Consul as classifier-proxy (health-checked on its
/readyz, deregistered when it stops), and the client library finds them there and moves
to another when one dies."""

from __future__ import annotations

import uuid

import pytest

from client import Client
from tests.conftest import ESPRESSO, consul_get
from tests.processes import wait_for

pytestmark = pytest.mark.system


def passing_proxies(agent, name: str) -> set[int]:
    return {e["Service"]["Port"] for e in consul_get(agent, f"/v1/health/service/{name}?passing")}


async def test_proxies_in_consul_and_client_failover(consul_agent, start_worker, start_proxy, coffee_jpeg):
    service, proxies_name = f"classifier-{uuid.uuid4().hex[:6]}", f"proxies-{uuid.uuid4().hex[:6]}"
    start_worker("--service-name", service)
    a, b = (start_proxy("--service-name", service, "--proxy-service-name", proxies_name).wait_live(1)
            for _ in range(2))
    wait_for(lambda: passing_proxies(consul_agent, proxies_name) == {a.port, b.port}, what="both proxies in Consul")
    async with Client(consul=consul_agent.address, proxy_service=proxies_name) as client:
        for mode in ("proxy", "p2p"):
            assert (await client.classify(coffee_jpeg, mode=mode))["predictions"][0]["index"] == ESPRESSO
        assert client.proxy_url in {a.url, b.url}
        victim = a if client.proxy_url == a.url else b
        victim.kill()  # kill -9: Consul still lists it until its check fails
        for _ in range(10):
            assert (await client.classify(coffee_jpeg, mode="proxy"))["predictions"][0]["index"] == ESPRESSO
        assert client.proxy_url != victim.url
    survivor = b if victim is a else a
    wait_for(lambda: passing_proxies(consul_agent, proxies_name) == {survivor.port}, timeout=10,
             what="the killed proxy's /readyz check to fail")
    survivor.stop()  # SIGTERM: drains and deregisters (the killed one lingers, critical, for a minute)
    catalog = {e["ServicePort"] for e in consul_get(consul_agent, f"/v1/catalog/service/{proxies_name}")}
    assert survivor.port not in catalog and victim.port in catalog
