"""Several hosts on one machine (network namespaces the test creates and removes):
a Consul server host, a proxy host, two worker hosts each with a local Consul client
agent, and a client host. Workers bind 0.0.0.0 and learn the address to advertise from
their local agent, as they would on real machines."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import MODEL_DIR
from tests.netlab import Lab, can_create_namespaces
from tests.processes import ProxyProcess, WorkerProcess, serve_model, wait_for

pytestmark = [pytest.mark.system, pytest.mark.skipif(not can_create_namespaces(), reason="needs root and iproute2 (CI runs as root)")]


@pytest.fixture
def lab():
    with Lab() as lab:
        yield lab


def test_lookup_and_forward_across_hosts(lab, artifacts_dir, coffee_jpeg, tmp_path):
    consul, proxy_host, client, worker_hosts = lab.standard_hosts()

    workers = [WorkerProcess("127.0.0.1:8500", *serve_model(MODEL_DIR), host="0.0.0.0",
                             wrapper=h.wrapper, log_path=artifacts_dir / f"multihost-{h.name}.log")
               for h in worker_hosts]
    proxy = ProxyProcess("127.0.0.1:8500", "--policy", "round-robin", host="0.0.0.0", port=12480, reach_at=proxy_host.ip,
                         wrapper=proxy_host.wrapper, log_path=artifacts_dir / "multihost-proxy.log")
    try:
        for w in workers:
            w.wait_ready()
        # Each worker advertises its own host's address, learnt from its local agent.
        assert {w.url.removeprefix("http://").split(":")[0] for w in workers} == {h.ip for h in worker_hosts}
        proxy_url = f"http://{proxy_host.ip}:12480"
        wait_for(lambda: json.loads(lab.exec(client, ["curl", "-s", f"{proxy_url}/workers"]).stdout or "{}")
                 .get("live") == 2, timeout=30, what="the proxy sees both workers")

        photo = tmp_path / "coffee.jpg"
        photo.write_bytes(coffee_jpeg)
        seen = set()
        for _ in range(4):
            address = lab.exec(client, ["curl", "-s", f"{proxy_url}/"]).stdout.strip()
            host_ip = address.split(":")[0]
            assert host_ip in {h.ip for h in worker_hosts}, address  # never 127.0.0.1
            seen.add(host_ip)
            # p2p: the client posts straight to the worker's host.
            body = json.loads(lab.exec(client, ["curl", "-s", "-XPOST", address, "-F", f"data=@{photo}"]).stdout)
            assert body["predictions"][0]["label"] == "espresso"
        assert seen == {h.ip for h in worker_hosts}  # round-robin over both hosts

        # Forward: client -> proxy host -> worker host, over ZeroMQ.
        served_by = set()
        for _ in range(4):
            out = lab.exec(client, ["curl", "-s", "-XPOST", proxy_url, "-F", f"data=@{photo}"]).stdout
            body = json.loads(out)
            assert body["predictions"][0]["label"] == "espresso"
            served_by.add(body["worker_address"].split(":")[0])
        assert served_by == {h.ip for h in worker_hosts}

        # The same two-step flow as the original design, in plain curl, on the client host.
        two_step = lab.exec(client, ["bash", "-c", f'curl -s -XPOST "$(curl -s {proxy_url})" -F data=@{photo}'])
        assert json.loads(two_step.stdout)["predictions"][0]["label"] == "espresso"

        # No proxy at all: the client library looks workers up in Consul's DNS (SRV).
        proxy.stop()
        out = lab.exec(client, [sys.executable, "-m", "tests.lab_load", "--photo", str(photo), "--requests", "12",
                                "--dns", f"{consul.ip}:8600", "--mode", "p2p"])
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["answered"] == 12 and result["failed"] == 0, out.stdout + out.stderr
        assert {w.split(":")[0] for w in result["workers"]} == {h.ip for h in worker_hosts}
    finally:
        proxy.stop()
        for w in workers:
            w.stop()
