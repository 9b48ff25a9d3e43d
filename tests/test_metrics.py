"""GET /metrics on a real worker and a real proxy, parsed with prometheus-client's own
parser, and checked against the traffic the test sent."""

from __future__ import annotations

import uuid

import aiohttp
import pytest

from tests.conftest import ESPRESSO, scrape, value

pytestmark = pytest.mark.system


async def post(url: str, data: bytes, path: str = "/"):
    form = aiohttp.FormData()
    form.add_field("data", data, filename="p.jpg", content_type="image/jpeg")
    async with aiohttp.ClientSession() as s, s.post(url + path, data=form) as r:
        return r.status, await r.json()


async def test_worker_and_proxy_metrics(start_worker, start_proxy, coffee_jpeg):
    service = f"classifier-{uuid.uuid4().hex[:6]}"
    worker = start_worker("--service-name", service)
    proxy = start_proxy("--service-name", service).wait_live(1)
    for _ in range(5):
        status, body = await post(worker.url, coffee_jpeg)
        assert status == 200 and body["predictions"][0]["index"] == ESPRESSO
    for _ in range(3):
        assert (await post(proxy.url, coffee_jpeg))[0] == 200
    assert (await post(worker.url, b"not an image"))[0] == 400
    assert (await post(proxy.url, coffee_jpeg, "/?k=0"))[0] == 422

    w = scrape(worker.url)
    assert value(w, "imagecluster_http_requests_total", protocol="native", route="/", method="POST", status="200") == 5
    assert value(w, "imagecluster_http_requests_total", protocol="native", route="/", method="POST", status="400") == 1
    assert value(w, "imagecluster_http_request_duration_seconds_count", route="/") == 6
    # 5 direct + 3 forwarded images, each through the batcher once.
    model = {"model": "efficientnet_lite0"}  # the batcher's metrics carry the model they are about
    assert value(w, "imagecluster_queue_wait_seconds_count", **model) == 8
    batches = value(w, "imagecluster_batch_size_count", **model)
    assert 1 <= batches <= 8 and value(w, "imagecluster_batch_size_sum", **model) == 8
    assert value(w, "imagecluster_inference_duration_seconds_count", **model) == batches
    assert value(w, "imagecluster_queue_depth") == 0 and value(w, "imagecluster_in_flight") == 0
    assert value(w, "imagecluster_ready") == 1

    p = scrape(proxy.url)
    assert value(p, "imagecluster_http_requests_total", protocol="native", route="/", method="POST", status="200") == 3
    assert value(p, "imagecluster_http_requests_total", protocol="native", route="/", method="POST", status="422") == 1
    assert value(p, "imagecluster_live_workers") == 1
    assert value(p, "imagecluster_worker_outstanding", worker=worker.worker_id) == 0
    assert value(p, "imagecluster_worker_served_total", worker=worker.worker_id) == 3
    for counter in ("imagecluster_retries_total", "imagecluster_ejections_total", "imagecluster_worker_timeouts_total"):
        assert (counter, ()) in p and value(p, counter) == 0
    assert value(p, "imagecluster_consul_connected") == 1
