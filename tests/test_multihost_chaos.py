"""Faults across hosts (network namespaces the test creates and removes): a worker host's
link cut, and the Consul server restarted, under a bounded load from a client host through
the client library (p2p and forward at once). Neither loses a request."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.conftest import MODEL_DIR
from tests.netlab import Lab, can_create_namespaces
from tests.processes import ProxyProcess, WorkerProcess, serve_model

pytestmark = [pytest.mark.system,
              pytest.mark.skipif(not can_create_namespaces(), reason="needs root and iproute2 (CI runs as root)")]

REQUESTS = 60


@pytest.fixture
def cluster(artifacts_dir):
    """(lab, client host, proxy URL, worker hosts): Consul server, a proxy host and two
    worker hosts with local agents, and a client host."""
    with Lab() as lab:
        _, proxy_host, client, worker_hosts = lab.standard_hosts()
        workers = [WorkerProcess("127.0.0.1:8500", *serve_model(MODEL_DIR), "--host", "0.0.0.0",
                                 wrapper=h.wrapper, log_path=artifacts_dir / f"labchaos-{h.name}.log")
                   for h in worker_hosts]
        proxy = ProxyProcess("127.0.0.1:8500", "--worker-timeout", "2", host="0.0.0.0", port=12480,
                             reach_at=proxy_host.ip, wrapper=proxy_host.wrapper,
                             log_path=artifacts_dir / "labchaos-proxy.log")
        try:
            for w in workers:
                w.wait_ready()
            proxy.wait_live(2, timeout=30)
            yield lab, client, proxy.url, worker_hosts
        finally:
            proxy.stop()
            for w in workers:
                w.stop()


def loads(lab: Lab, client, proxy_url: str, photo) -> list[subprocess.Popen]:
    """p2p and forward through the client library, from the client host, at once."""
    return [lab.run(client, [sys.executable, "-m", "tests.lab_load", "--photo", str(photo), "--proxy", proxy_url,
                             "--mode", mode, "--requests", str(REQUESTS), "--concurrency", "3", "--timeout", "4"],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE) for mode in ("p2p", "proxy")]


def results(procs: list[subprocess.Popen]) -> list[dict]:
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=180)
        out.append(json.loads(stdout.decode().strip().splitlines()[-1]) if stdout.strip() else {"error": stderr})
    return out


def test_link_cut_and_consul_server_restart_lose_nothing(cluster, coffee_jpeg, tmp_path, capsys):
    lab, client, proxy_url, worker_hosts = cluster
    photo = tmp_path / "coffee.jpg"
    photo.write_bytes(coffee_jpeg)
    rows = []
    for scenario in ("worker host link cut", "Consul server restart"):
        procs = loads(lab, client, proxy_url, photo)
        time.sleep(2.0)
        started = time.monotonic()
        if scenario == "worker host link cut":
            lab.link(worker_hosts[0], up=False)
        else:
            lab.restart_consul_server()
        counts = results(procs)
        rows += [(scenario, mode, c, round(time.monotonic() - started, 1)) for mode, c in zip(("p2p", "forward"), counts)]
        if scenario == "worker host link cut":
            lab.link(worker_hosts[0], up=True)
    with capsys.disabled():
        print()
        for scenario, mode, c, seconds in rows:
            print(f"| {scenario} | {mode} | {c.get('sent')} | {c.get('answered')} | {c.get('retried')} | "
                  f"{c.get('failed')} | {'; '.join(c.get('errors') or [])} |")
    for scenario, mode, c, _ in rows:
        assert c.get("sent") == REQUESTS and c.get("failed") == 0, (scenario, mode, c)
