"""Workers in Consul: registration with Meta, a health check that means something,
re-registration after a Consul restart, and drain on SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid

import pytest

from tests.conftest import ESPRESSO, consul_get
from tests.consul_dev import PROJECT_ROOT, DevAgent, free_port
from tests.processes import wait_for

pytestmark = pytest.mark.system


def passing(agent: DevAgent, service: str = "classifier") -> dict[str, dict]:
    """Passing instances of `service`, by service id."""
    entries = consul_get(agent, f"/v1/health/service/{service}?passing")
    return {e["Service"]["ID"]: e for e in entries}


def catalog_ids(agent: DevAgent, service: str = "classifier") -> set[str]:
    return {s["ServiceID"] for s in consul_get(agent, f"/v1/catalog/service/{service}")}


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_registered_with_address_port_meta_and_passing_check(worker, consul_agent):
    entry = wait_for(lambda: passing(consul_agent).get(worker.worker_id), what="worker in Consul")
    service = entry["Service"]
    assert service["Service"] == "classifier"
    assert service["Address"] == "127.0.0.1" and service["Port"] == worker.port
    meta = service["Meta"]
    assert int(meta.pop("zmq_port")) > 0 and int(meta.pop("grpc_port")) > 0
    assert json.loads(meta.pop("model-efficientnet_lite0")) == {
        "version": "1", "backend": "tflite", "input_shape": [224, 224, 3], "num_labels": 1000,
        "crop_fraction": 0.875, "resample": "bicubic"}
    assert meta == {
        "worker_id": worker.worker_id,
        "models": "efficientnet_lite0",
        "preprocessing_path": "exact",
        "http_port": str(worker.port),
    }
    checks = {c["CheckID"]: c["Status"] for c in entry["Checks"]}
    assert checks[f"service:{worker.worker_id}"] == "passing"
    # The registered address really serves.
    assert http_status(f"http://{service['Address']}:{service['Port']}/readyz") == 200


def test_kill_9_fails_the_health_check(start_worker, consul_agent):
    w = start_worker("--heartbeat-ttl", "2")
    wait_for(lambda: w.worker_id in passing(consul_agent), what="worker passing")
    w.signal(signal.SIGKILL)
    w.wait()
    # No heartbeat: the TTL check goes critical and the instance leaves the passing set.
    wait_for(lambda: w.worker_id not in passing(consul_agent), timeout=10, what="check critical")
    assert w.worker_id in catalog_ids(consul_agent)  # still registered, just not healthy


def test_reregisters_after_consul_restart(start_worker, artifacts_dir):
    agent = DevAgent(log_path=artifacts_dir / "consul-restart.log").start()
    try:
        w = start_worker("--heartbeat-ttl", "2", consul=agent)
        wait_for(lambda: w.worker_id in passing(agent), what="worker passing")
        agent.stop()
        # A dev agent keeps nothing: the new one starts empty on the same port.
        agent = DevAgent(http_port=agent.http_port, log_path=agent.log_path).start()
        assert w.worker_id not in catalog_ids(agent)
        wait_for(lambda: w.worker_id in passing(agent), timeout=15, what="re-registration")
    finally:
        agent.stop()


def test_drain_on_sigterm_finishes_in_flight_request(start_worker, consul_agent, coffee_jpeg):
    w = start_worker()
    wait_for(lambda: w.worker_id in passing(consul_agent), what="worker passing")
    # A request in flight: headers and half the body sent, the rest held back.
    sock = socket.create_connection(("127.0.0.1", w.port), timeout=30)
    half = len(coffee_jpeg) // 2
    sock.sendall(
        f"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {len(coffee_jpeg)}\r\nConnection: close\r\n\r\n".encode() + coffee_jpeg[:half]
    )
    wait_for(lambda: json.load(urllib.request.urlopen(w.url + "/stats"))["in_flight"] == 1,
             what="request in flight")

    w.signal(signal.SIGTERM)
    # Out of rotation first, while the request is still in flight...
    wait_for(lambda: w.worker_id not in passing(consul_agent), timeout=5, what="leaving rotation")
    assert http_status(w.url + "/readyz") == 503
    assert w.proc.poll() is None
    # ...then the accepted request completes.
    sock.sendall(coffee_jpeg[half:])
    response = b""
    while chunk := sock.recv(65536):
        response += chunk
    sock.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert json.loads(body)["predictions"][0]["index"] == ESPRESSO

    assert w.wait(timeout=30) == 0
    wait_for(lambda: w.worker_id not in catalog_ids(consul_agent), timeout=5, what="deregistration")


def test_new_requests_refused_while_draining(start_worker, consul_agent, coffee_jpeg):
    w = start_worker("--drain-timeout", "5")
    sock = socket.create_connection(("127.0.0.1", w.port), timeout=30)
    sock.sendall(
        f"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {len(coffee_jpeg)}\r\n\r\n".encode() + coffee_jpeg[:100]
    )
    wait_for(lambda: json.load(urllib.request.urlopen(w.url + "/stats"))["in_flight"] == 1,
             what="request in flight")
    w.signal(signal.SIGTERM)
    wait_for(lambda: http_status(w.url + "/readyz") == 503, timeout=5, what="draining")
    request = urllib.request.Request(w.url, data=coffee_jpeg, headers={"Content-Type": "image/jpeg"})
    try:
        urllib.request.urlopen(request, timeout=5)
        raise AssertionError("a draining worker accepted new work")
    except urllib.error.HTTPError as e:
        assert e.code == 503 and e.headers["Retry-After"]
        assert json.loads(e.read())["error"]["code"] == "not_ready"
    # The stalled request never finishes: the drain timeout (5 s) bounds the exit.
    assert w.wait(timeout=30) == 0
    sock.close()


def test_unreachable_consul_without_advertise_is_a_clear_error(artifacts_dir):
    """Bound to every interface, a worker asks its Consul agent for its own address."""
    out = subprocess.run(
        [sys.executable, "-m", "worker", "--host", "0.0.0.0", "--port", "0",
         "--consul", f"127.0.0.1:{free_port()}"],  # nothing listens there
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 1
    assert "--advertise" in out.stderr and "cannot learn this host's address" in out.stderr


def test_consul_acl_token_is_used(start_worker, start_proxy, artifacts_dir):
    """With Consul ACLs on (default deny), only a worker and a proxy given the token work."""
    token = "acl-" + uuid.uuid4().hex
    agent = DevAgent(log_path=artifacts_dir / "consul-acl.log", acl_master_token=token).start()
    try:
        anonymous = start_worker("--consul-token", "", "--service-name", "acl-test", consul=agent, wait=False)
        trusted = start_worker("--consul-token", token, "--service-name", "acl-test", consul=agent)
        proxy = start_proxy("--consul-token", token, "--service-name", "acl-test", consul=agent)
        proxy.wait_live(1)
        assert [w["id"] for w in proxy.workers()["workers"]] == [trusted.worker_id]
        request = urllib.request.Request(f"http://{agent.address}/v1/catalog/service/acl-test",
                                         headers={"X-Consul-Token": token})
        with urllib.request.urlopen(request, timeout=5) as r:
            assert [e["ServiceID"] for e in json.loads(r.read())] == [trusted.worker_id]
        assert anonymous.proc.poll() is None  # refused by Consul, still retrying, not crashed
        log = artifacts_dir / "worker-test_consul_acl_token_is_used-0.log"
        wait_for(lambda: "Permission denied" in log.read_text(), what="Consul refusing the anonymous worker")
    finally:
        agent.stop()
