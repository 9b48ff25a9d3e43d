"""scripts/cluster as a user runs it: up, add-worker, remove-worker, status, down.

It runs on its own ports and run directory, so it never meets a cluster a developer
has running on the defaults.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from client.api import WorkerDns
from tests.consul_dev import PROJECT_ROOT, free_port
from tests.processes import wait_for

pytestmark = pytest.mark.system

SCRIPT = PROJECT_ROOT / "scripts" / "cluster"


def pids(run: Path) -> list[int]:
    return [int(p.read_text()) for p in run.glob("*.pid")]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes.
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_up_add_remove_autoscale_status_down(tmp_path, coffee_jpeg):
    run = tmp_path / "run"
    proxy_port = free_port()
    dns_port = free_port()
    env = dict(os.environ, CLUSTER_RUN_DIR=str(run), PROXY_PORT=str(proxy_port), PROXY_GRPC_PORT=str(free_port()),
               CONSUL_HTTP_ADDR=f"127.0.0.1:{free_port()}", CONSUL_DNS_PORT=str(dns_port))

    def cluster(*args: str) -> str:
        out = subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    def live_workers() -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{proxy_port}/workers", timeout=5) as r:
            return json.loads(r.read())["live"]

    started: list[int] = []
    try:
        up = cluster("up", "--workers", "1")
        started = pids(run)
        assert "espresso" in up and f"curl -XPOST localhost:{proxy_port}" in up
        assert live_workers() == 1
        proxy_pid = int((run / "proxy.pid").read_text())

        cluster("add-worker")
        assert live_workers() == 2  # ready means registered; the proxy sees it within ms
        assert int((run / "proxy.pid").read_text()) == proxy_pid and alive(proxy_pid)  # no restart
        started = pids(run)
        status = cluster("status")
        assert status.count("live=True") == 2
        # Consul's DNS answers the same live set the proxy routes to (SRV: host and port).
        with urllib.request.urlopen(f"http://127.0.0.1:{proxy_port}/workers", timeout=5) as r:
            in_proxy = {w["address"] for w in json.loads(r.read())["workers"]}
        resolver = WorkerDns(f"127.0.0.1:{dns_port}", "classifier")
        assert {asyncio.run(resolver.lookup()) for _ in range(4)} == in_proxy

        old_proxy = int((run / "proxy.pid").read_text())
        restarted = cluster("restart-proxy")
        new_proxy = int((run / "proxy.pid").read_text())
        assert "handed its socket" in restarted and new_proxy != old_proxy and not alive(old_proxy)
        assert live_workers() == 2  # the new proxy serves on the same port

        # With Consul hung, the successor gives up (after 10 s) and the script says so at once.
        consul = int((run / "consul.pid").read_text())
        os.kill(consul, signal.SIGSTOP)
        try:
            refused = subprocess.run([str(SCRIPT), "restart-proxy"], env=env, capture_output=True, text=True,
                                     timeout=50)
        finally:
            os.kill(consul, signal.SIGCONT)
        assert refused.returncode == 1 and "serves on" in refused.stderr, refused.stdout + refused.stderr
        assert int((run / "proxy.pid").read_text()) == new_proxy
        # Consul's TTL checks may lapse while it was stopped: the next heartbeats pass them again.
        wait_for(lambda: live_workers() == 2, timeout=15, what="both workers passing again")

        removed = cluster("remove-worker")
        assert "draining worker 2" in removed
        assert live_workers() == 1

        scaled = cluster("autoscale", "--min", "2", "--max", "2", "--port", "0", "--interval", "0.2")
        assert "/decisions" in scaled
        wait_for(lambda: live_workers() == 2, timeout=30, what="the autoscaler's minimum of 2")
        started = pids(run) + [int(pid) for pid in re.findall(r"started worker process (\d+)",
                                                              (run / "autoscaler.log").read_text())]
    finally:
        started = sorted(set(started) | set(pids(run)))
        down = cluster("down")
    assert "cluster stopped" in down
    assert started and not [pid for pid in started if alive(pid)]
    assert not list(run.glob("*.pid"))
