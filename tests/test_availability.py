"""Several proxies: each registers in Consul as classifier-proxy (health-checked on its
/readyz, deregistered when it stops), and the client library finds them there and moves
to another when one dies. A gRPC client's channel rides through a proxy's handover; a
handover while Consul is silent is refused, and a proxy started before its Consul agent
registers once the agent is up."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import tritonclient.grpc as tritongrpc
from tritonclient.utils import InferenceServerException

from client import Client
from edge.imaging import preprocess
from edge.preprocessing import Preprocessing
from proxy.app import SUCCESSOR_SYNC_S
from tests.conftest import ESPRESSO, consul_get
from tests.consul_dev import DevAgent
from tests.processes import RIDE_THROUGH_RESTARTS, wait_for

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


async def test_a_grpc_channel_rides_through_proxy_handovers(start_worker, start_proxy, coffee_jpeg):
    """tritonclient keeps one gRPC channel to the proxy's port, configured as docs/operations/faults.md
    says (RIDE_THROUGH_RESTARTS: wait for ready, retry CANCELLED and UNAVAILABLE), while
    the proxy is handed over three times (SIGHUP), four threads calling back to back: no
    call fails, the channel answers after every handover (grpcio reconnects to the
    successor, which listens on the same port), and the busy channel does not keep the
    old proxy draining for --drain-idle (30 s here). What the drain does with gRPC is
    checked in test_proxy_loopback; scripts/bench/handover.py counts what a channel
    without the recipe sees."""
    service = f"classifier-{uuid.uuid4().hex[:6]}"
    start_worker("--service-name", service)
    proxy = start_proxy("--service-name", service, "--drain-idle", "30").wait_live(1)
    pixels = preprocess(coffee_jpeg, Preprocessing(), 10**8)[None]
    client = tritongrpc.InferenceServerClient(url=proxy.grpc, channel_args=RIDE_THROUGH_RESTARTS)
    answered, failed, stop = [], [], threading.Event()

    def infer() -> int:
        image = tritongrpc.InferInput("image", list(pixels.shape), "UINT8")
        image.set_data_from_numpy(pixels)
        top1 = tritongrpc.InferRequestedOutput("probabilities", class_count=1)
        result = client.infer("efficientnet_lite0", [image], outputs=[top1], client_timeout=30)
        return int(result.as_numpy("probabilities")[0][0].decode().split(":")[1])

    def back_to_back():  # bounded: stops when told, or after 2 minutes
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                answered.append(infer())
            except InferenceServerException as exc:
                failed.append(f"{exc.status()}: {exc.message()}")

    busy = [threading.Thread(target=back_to_back) for _ in range(4)]
    for thread in busy:
        thread.start()
    try:
        for _ in range(3):
            wait_for(lambda: len(answered) >= 5, what="answers on the channel")
            started = time.monotonic()
            await asyncio.to_thread(proxy.handover)
            assert time.monotonic() - started < 20  # the old one drained without waiting out --drain-idle
            del answered[:]
        wait_for(lambda: len(answered) >= 5, what="answers after the last handover")
        assert set(answered) == {ESPRESSO}
        assert not failed, failed[:5]
    finally:
        stop.set()
        for thread in busy:
            thread.join()
        client.close()


def test_a_handover_while_consul_is_silent_leaves_the_old_proxy_serving(start_worker, start_proxy, coffee_jpeg,
                                                                        artifacts_dir):
    """A successor takes connections only once Consul has told it the workers. With Consul
    down it knew none, took over anyway, and once the old proxy had drained answered
    every request 503 until Consul came back. Now it gives up after SUCCESSOR_SYNC_S,
    and the proxy before it serves on from the workers it last knew."""
    agent = DevAgent(log_path=artifacts_dir / "consul-silent.log").start()
    try:
        start_worker(consul=agent)
        proxy = start_proxy(consul=agent).wait_live(1)
        agent.stop()
        old = proxy.pid
        os.kill(old, signal.SIGHUP)
        try:
            statuses = []
            deadline = time.monotonic() + SUCCESSOR_SYNC_S + 5  # bounded: the successor gave up by then
            while time.monotonic() < deadline:
                request = urllib.request.Request(proxy.url + "/", data=coffee_jpeg,
                                                 headers={"Content-Type": "image/jpeg"})
                with urllib.request.urlopen(request, timeout=30) as r:
                    statuses.append(r.status)
                time.sleep(0.5)
            log = Path(proxy.stderr.name)
            wait_for(lambda: "did not become ready" in log.read_text(), timeout=30, what="the successor to give up")
            assert "not taking over" in log.read_text()
            assert statuses and set(statuses) == {200}, statuses
            assert int(proxy.pid_file.read_text()) == old and os.path.exists(f"/proc/{old}")  # no successor took over
        finally:  # a successor that took over (the old code's did) is the process the fixture must stop
            proxy.pid = int(proxy.pid_file.read_text())
    finally:
        agent.stop()


def test_a_proxy_started_before_its_consul_agent_registers_once_the_agent_is_up(start_worker, start_proxy,
                                                                                  artifacts_dir):
    """Bound to every interface with no --advertise, a proxy learns its address from its
    local Consul agent. Started while the agent was down, it served but never registered,
    so Consul DNS never listed it; now it keeps asking and registers once the agent is up."""
    agent = DevAgent(log_path=artifacts_dir / "consul-late.log")  # its port chosen, not started yet
    try:
        proxy = start_proxy("--host", "0.0.0.0", consul=agent)  # serves on 127.0.0.1 too
        agent.start()
        start_worker(consul=agent)  # the proxy's /readyz check passes once it routes to a worker
        wait_for(lambda: passing_proxies(agent, "classifier-proxy") == {proxy.port}, timeout=20,
                 what="the proxy registered and passing")
    finally:
        agent.stop()
