"""The cluster data path end to end: real Consul, real workers, a real proxy, the real model.

Each test registers its workers under its own service name, so tests never see each
other's workers. Load is bounded in count and sent to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import uuid

import aiohttp
import pytest

from client import Client
from client.load import run_load
from tests.conftest import (
    DOMESTIC_CATS,
    ESPRESSO,
    SKIMAGE_DATA,
    stalled_upload,
    worker_stats,
)
from tests.consul_dev import DevAgent
from tests.processes import child_pids, wait_for
from worker.batcher import LANE_BATCH
from worker.model_host import native_fp16

pytestmark = pytest.mark.system


@pytest.fixture
def service():
    return f"classifier-{uuid.uuid4().hex[:6]}"


def start_workers(start_worker, service, n, *extra, consul=None):
    workers = [start_worker("--service-name", service, *extra, consul=consul, wait=False) for _ in range(n)]
    return [w.wait_ready() for w in workers]


def live_ids(proxy) -> set[str]:
    return {w["id"] for w in proxy.workers()["workers"] if w["live"]}


def served(proxy) -> dict[str, int]:
    return {w["id"]: w["served"] for w in proxy.workers()["workers"]}


async def post(session, url, data: bytes, field="data"):
    form = aiohttp.FormData()
    form.add_field(field, data, filename="photo.jpg", content_type="image/jpeg")
    async with session.post(url, data=form) as r:
        return r.status, await r.json()


async def test_both_modes_agree_with_direct_worker(start_worker, start_proxy, service, coffee_jpeg, chelsea_png):
    workers = start_workers(start_worker, service, 2)
    proxy = start_proxy("--service-name", service)
    wait_for(lambda: len(live_ids(proxy)) == 2, what="2 live workers")
    rocket = (SKIMAGE_DATA / "rocket.jpg").read_bytes()
    async with aiohttp.ClientSession() as s, Client(proxy.url) as client:
        for photo in (coffee_jpeg, chelsea_png, rocket):
            _, direct = await post(s, workers[0].url, photo)
            via_proxy = await client.classify(photo, mode="proxy")
            via_p2p = await client.classify(photo, mode="p2p")
            top1 = direct["predictions"][0]["index"]
            assert via_proxy["predictions"][0]["index"] == top1 == via_p2p["predictions"][0]["index"]
            assert via_proxy["predictions"][0]["score"] == pytest.approx(direct["predictions"][0]["score"], abs=1e-4)
            assert via_proxy["worker"] in {w.worker_id for w in workers}
            assert via_proxy["worker_address"] in {w.url.removeprefix("http://") for w in workers}
        assert direct["predictions"][0]["index"] in range(1000)
    async with aiohttp.ClientSession() as s:
        status, body = await post(s, proxy.url, coffee_jpeg)
        assert status == 200 and body["predictions"][0]["index"] == ESPRESSO
        status, body = await post(s, proxy.url, chelsea_png)
        assert body["predictions"][0]["index"] in DOMESTIC_CATS


def test_two_step_curl_flow(start_worker, start_proxy, service, coffee_jpeg, tmp_path):
    workers = start_workers(start_worker, service, 2)
    proxy = start_proxy("--service-name", service)
    wait_for(lambda: len(live_ids(proxy)) == 2, what="2 live workers")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(coffee_jpeg)
    host_port = proxy.url.removeprefix("http://")
    lookup = subprocess.run(["curl", "-s", host_port], capture_output=True, text=True, check=True).stdout
    assert lookup.endswith("\n") and lookup.strip() in {w.url.removeprefix("http://") for w in workers}
    lookup = json.loads(subprocess.run(["curl", "-s", f"{host_port}/lookup"], capture_output=True,
                                       check=True).stdout)
    assert lookup["worker"] in {w.worker_id for w in workers}
    assert lookup["model"] == "efficientnet_lite0" and lookup["version"] == "1"
    assert lookup["address"] in {w.url.removeprefix("http://") for w in workers}
    for cmd in (f'curl -s -XPOST "$(curl -s {host_port})" -F data=@{photo}',  # p2p, plain curl
                f"curl -s -XPOST {host_port} -F data=@{photo}"):  # forward
        out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, check=True, timeout=30).stdout
        body = json.loads(out)
        assert body["predictions"][0]["label"] == "espresso" and len(body["predictions"]) == 5


async def test_round_robin_spreads_evenly(start_worker, start_proxy, service, coffee_jpeg):
    workers = start_workers(start_worker, service, 2)
    proxy = start_proxy("--service-name", service, "--policy", "round-robin")
    wait_for(lambda: len(live_ids(proxy)) == 2, what="2 live workers")
    async with aiohttp.ClientSession() as s:
        for _ in range(20):
            status, _ = await post(s, proxy.url, coffee_jpeg)
            assert status == 200
    assert sorted(served(proxy).values()) == [10, 10]
    assert set(served(proxy)) == {w.worker_id for w in workers}


async def test_new_worker_gets_traffic_without_proxy_restart(start_worker, start_proxy, service, coffee_jpeg):
    (first,) = start_workers(start_worker, service, 1)
    # Without slow start (tests/test_balancing.py has it), round-robin shares exactly.
    proxy = start_proxy("--service-name", service, "--slow-start", "0", "--policy", "round-robin")
    wait_for(lambda: live_ids(proxy) == {first.worker_id}, what="first worker live")
    second = start_worker("--service-name", service)
    # The watcher's blocking query sees the registration within milliseconds.
    wait_for(lambda: second.worker_id in live_ids(proxy), timeout=5, interval=0.02, what="new worker live")
    async with aiohttp.ClientSession() as s:
        for _ in range(6):
            assert (await post(s, proxy.url, coffee_jpeg))[0] == 200
    assert served(proxy)[second.worker_id] == 3
    # And a worker that leaves (drain on SIGTERM) gets no more traffic.
    second.signal(signal.SIGTERM)
    wait_for(lambda: second.worker_id not in live_ids(proxy), timeout=5, interval=0.02, what="drained worker gone")
    assert second.wait() == 0
    async with aiohttp.ClientSession() as s:
        for _ in range(4):
            status, body = await post(s, proxy.url, coffee_jpeg)
            assert status == 200 and body["worker"] == first.worker_id


async def load_with_kill(send, victim, *, total: int = 120, concurrency: int = 8, kill_after: int = 30):
    """`total` requests through `send` (which raises on a bad answer), with `victim`
    killed (-9) once `kill_after` have finished. Returns the load result and the answers."""
    answers, done = [], 0

    async def counted():
        nonlocal done
        try:
            answers.append(await send())
        finally:
            done += 1
            if done == kill_after:
                victim.signal(signal.SIGKILL)

    result = await run_load(counted, concurrency=concurrency, duration_s=240, max_requests=total)
    return result, answers


async def test_kill_9_under_load_loses_nothing(start_worker, start_proxy, service, coffee_jpeg):
    workers = start_workers(start_worker, service, 3)
    proxy = start_proxy("--service-name", service)
    wait_for(lambda: len(live_ids(proxy)) == 3, what="3 live workers")

    # Proxy mode, plain HTTP with no client-side retry: the proxy alone must answer all.
    async with aiohttp.ClientSession() as s:
        async def proxy_post():
            status, body = await post(s, proxy.url, coffee_jpeg)
            if status != 200 or body["predictions"][0]["index"] != ESPRESSO:
                raise AssertionError(f"{status}: {body}")
            return body
        result, _ = await load_with_kill(proxy_post, workers[0])
    assert result.ok == 120 and not result.errors, result.errors[:3]
    assert workers[0].proc.poll() is not None and workers[0].worker_id not in live_ids(proxy)
    assert proxy.workers()["ejections"] >= 1

    # p2p through the client library: lookups, direct posts, retries on a fresh lookup.
    async with Client(proxy.url) as client:
        result, answers = await load_with_kill(lambda: client.classify(coffee_jpeg, mode="p2p"), workers[1])
    assert result.ok == 120 and not result.errors, result.errors[:3]
    assert workers[1].proc.poll() is not None
    assert all(a["worker"] == workers[2].worker_id for a in answers[-20:])


async def test_proxy_keeps_serving_while_consul_is_down(start_worker, start_proxy, service, artifacts_dir, coffee_jpeg):
    agent = DevAgent(log_path=artifacts_dir / "consul-down.log").start()
    try:
        workers = start_workers(start_worker, service, 2, "--heartbeat-ttl", "2", consul=agent)
        proxy = start_proxy("--service-name", service, consul=agent)
        wait_for(lambda: len(live_ids(proxy)) == 2, what="2 live workers")
        agent.stop()
        wait_for(lambda: not proxy.workers()["consul_connected"], what="proxy notices Consul is gone")
        async with aiohttp.ClientSession() as s, Client(proxy.url) as client:
            for _ in range(6):
                status, body = await post(s, proxy.url, coffee_jpeg)
                assert status == 200 and body["predictions"][0]["index"] == ESPRESSO
                assert (await client.classify(coffee_jpeg, mode="p2p"))["predictions"][0]["index"] == ESPRESSO
        assert live_ids(proxy) == {w.worker_id for w in workers}
        # Consul comes back empty (dev mode); workers re-register, the proxy resumes watching.
        agent = DevAgent(http_port=agent.http_port, log_path=agent.log_path).start()
        wait_for(lambda: proxy.workers()["consul_connected"], timeout=15, what="proxy watching again")
        wait_for(lambda: live_ids(proxy) == {w.worker_id for w in workers}, timeout=15, what="workers back")
    finally:
        agent.stop()


async def test_concurrent_load_forms_batches(start_worker, start_proxy, service, coffee_jpeg):
    (worker,) = start_workers(start_worker, service, 1)
    proxy = start_proxy("--service-name", service)
    wait_for(lambda: len(live_ids(proxy)) == 1, what="live worker")
    async with aiohttp.ClientSession() as s:
        results = await asyncio.gather(*(post(s, proxy.url, coffee_jpeg) for _ in range(32)))
        assert all(status == 200 for status, _ in results)
        async with s.get(worker.url + "/stats") as r:
            stats = await r.json()
    assert stats["batching"]["efficientnet_lite0"]["max_batch_size"] > 1
    assert stats["batching"]["efficientnet_lite0"]["images"] == 32
    assert stats["batching"]["efficientnet_lite0"]["batches"] < 32
    assert max(body["batch_size"] for _, body in results) > 1


async def test_proxy_errors_are_json(start_worker, start_proxy, service, coffee_jpeg):
    proxy = start_proxy("--service-name", service)
    async with aiohttp.ClientSession() as s:
        status, body = await post(s, proxy.url, coffee_jpeg)  # no worker yet
        assert status == 503 and body["error"]["code"] == "no_worker"
        async with s.get(proxy.url + "/readyz") as r:
            assert r.status == 503
        start_workers(start_worker, service, 1)
        wait_for(lambda: len(live_ids(proxy)) == 1, what="live worker")
        async with s.get(proxy.url + "/readyz") as r:
            assert r.status == 200
        for data, code in [(b"plain text", "not_an_image"), (coffee_jpeg[:300], "corrupt_image")]:
            status, body = await post(s, proxy.url, data)
            assert status == 400 and body["error"]["code"] == code
        status, body = await post(s, proxy.url, coffee_jpeg, field="wrong")
        assert status == 400 and body["error"]["code"] == "missing_image_field"
        for k in ("0", "1001", "x"):
            status, body = await post(s, f"{proxy.url}/?k={k}", coffee_jpeg)
            assert status == 422 and body["error"]["code"] == "invalid_parameter", k
        async with s.put(proxy.url + "/") as r:
            assert r.status == 405 and (await r.json())["error"]["code"] == "method_not_allowed"
        status, body = await post(s, proxy.url, coffee_jpeg)
        assert status == 200 and body["predictions"][0]["index"] == ESPRESSO


async def test_request_that_cannot_be_served_in_time_is_504(start_worker, start_proxy, service, coffee_jpeg):
    start_workers(start_worker, service, 1)
    proxy = start_proxy("--service-name", service, "--request-timeout", "0.000001")
    wait_for(lambda: len(live_ids(proxy)) == 1, what="live worker")
    async with aiohttp.ClientSession() as s:
        status, body = await post(s, proxy.url, coffee_jpeg)
    assert status == 504 and body["error"]["code"] == "timeout"


async def test_least_outstanding_policy(start_worker, start_proxy, service, coffee_jpeg):
    start_workers(start_worker, service, 2)
    proxy = start_proxy("--service-name", service, "--policy", "least-outstanding")
    wait_for(lambda: len(live_ids(proxy)) == 2, what="2 live workers")
    assert proxy.workers()["policy"] == "least-outstanding"
    async with aiohttp.ClientSession() as s:
        results = await asyncio.gather(*(post(s, proxy.url, coffee_jpeg) for _ in range(16)))
    assert all(status == 200 for status, _ in results)
    counts = served(proxy)
    assert sum(counts.values()) == 16 and min(counts.values()) > 0


async def test_hung_worker_times_out_is_ejected_and_probed_back(start_worker, start_proxy, service, coffee_jpeg):
    hung, healthy = start_workers(start_worker, service, 2)
    proxy = start_proxy("--service-name", service, "--worker-timeout", "1", "--slow-start", "0")
    wait_for(lambda: len(live_ids(proxy)) == 2, what="2 live workers")
    hung.signal(signal.SIGSTOP)  # alive, connected, silent
    try:
        async with aiohttp.ClientSession() as s:
            results = [await post(s, proxy.url, coffee_jpeg) for _ in range(4)]
        assert all(status == 200 and body["worker"] == healthy.worker_id for status, body in results)
        state = proxy.workers()
        assert state["timeouts"] >= 1 and state["retries"] >= 1
        assert hung.worker_id not in live_ids(proxy)
    finally:
        hung.signal(signal.SIGCONT)
    # Its /readyz answers again: the probe (or Consul) puts it back in rotation.
    wait_for(lambda: hung.worker_id in live_ids(proxy), timeout=15, what="worker back in rotation")
    async with aiohttp.ClientSession() as s:
        workers_seen = {(await post(s, proxy.url, coffee_jpeg))[1]["worker"] for _ in range(4)}
    assert workers_seen == {hung.worker_id, healthy.worker_id}


async def test_proxy_times_out_a_stalled_upload(start_worker, start_proxy, service, coffee_jpeg):
    start_workers(start_worker, service, 1)
    proxy = start_proxy("--service-name", service, "--read-timeout", "1")
    wait_for(lambda: len(live_ids(proxy)) == 1, what="live worker")
    head, _, body = (await stalled_upload(proxy.url, coffee_jpeg)).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), head
    assert json.loads(body)["error"]["code"] == "request_timeout"
    async with aiohttp.ClientSession() as s:
        status, body = await post(s, proxy.url, coffee_jpeg)
    assert status == 200 and body["predictions"][0]["index"] == ESPRESSO


@pytest.mark.skipif(not native_fp16(), reason="the model runs in process (fp32) on a CPU without native fp16: "
                                              "nothing to stop (tests/test_worker_loopback.py covers the mechanism)")
async def test_images_whose_clients_gave_up_are_not_computed(start_worker, start_proxy, service, coffee_jpeg):
    """The model hosts stopped while 20 clients post straight to the worker and 20 through
    the proxy, each giving up after 1.5 s: once the hosts resume, the worker computes only
    the images already in their hands (at most one batch a slot), not the abandoned ones
    queued behind, and a fresh request is answered at once."""
    (worker,) = start_workers(start_worker, service, 1)
    proxy = start_proxy("--service-name", service)
    wait_for(lambda: len(live_ids(proxy)) == 1, what="a live worker")
    hosts = child_pids(worker.proc.pid)
    for pid in hosts:
        os.kill(pid, signal.SIGSTOP)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.5)) as session:
            answers = await asyncio.gather(*(post(session, url + "/", coffee_jpeg)
                                             for url in [worker.url] * 20 + [proxy.url] * 20), return_exceptions=True)
    finally:
        for pid in hosts:
            os.kill(pid, signal.SIGCONT)
    assert all(isinstance(a, asyncio.TimeoutError) for a in answers), answers
    async with aiohttp.ClientSession() as session:
        status, body = await post(session, worker.url + "/", coffee_jpeg)
        assert status == 200 and body["predictions"][0]["index"] == ESPRESSO
    stats = await worker_stats(worker.url, lambda stats: stats["in_flight"] == 0)
    slots = len(hosts)  # batches handed out at once: one a lane (hosts less the main one), and one ahead
    computed = stats["batching"]["efficientnet_lite0"]["images"]
    assert stats["in_flight"] == 0 and computed <= slots * LANE_BATCH + 1, stats  # + 1: the fresh request
