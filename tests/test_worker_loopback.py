"""The worker's HTTP app in process (aiohttp TestServer) over the real default model:
the batcher, the shared edge and the app's own metrics, without Consul or ZeroMQ."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from edge.app import DECODE_POOL
from edge.metrics import METRICS
from tests.conftest import ESPRESSO
from worker import http_api
from worker.batcher import BatchConfig, Batcher
from worker.config import WorkerConfig
from worker.http_api import create_app
from worker.metrics import BatchMetrics
from worker.model import load_model
from worker.service import WorkerState

pytestmark = pytest.mark.loopback


@pytest.fixture
async def worker_app(built_model):
    state = WorkerState(WorkerConfig(model_repository=built_model.parent), worker_id="w-loop")
    app = create_app(state)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    batcher = Batcher(load_model(built_model), state.config.batch,
                      BatchMetrics(app[METRICS].registry).for_model(built_model.name))
    batcher.start()
    state.batchers[batcher.model.name] = batcher
    async with aiohttp.ClientSession() as session:
        yield session, server, state, app
    await batcher.close()
    await server.close()


async def test_classify_and_own_metrics(worker_app, coffee_jpeg):
    session, server, state, app = worker_app
    assert app[DECODE_POOL]._max_workers == state.config.edge.decode_threads
    async with session.post(server.make_url("/?k=3"), data={"data": coffee_jpeg}) as r:
        body = await r.json()
        assert r.status == 200 and r.headers["X-Request-ID"]
    assert body["predictions"][0]["index"] == ESPRESSO and len(body["predictions"]) == 3
    async with session.get(server.make_url("/metrics")) as r:
        families = {f.name: f for f in text_string_to_metric_families(await r.text())}
    assert families["imagecluster_batch_size"].samples and families["imagecluster_queue_wait_seconds"].samples
    (count,) = [s.value for s in families["imagecluster_inference_duration_seconds"].samples
                if s.name.endswith("_count")]
    assert count == 1
    assert "imagecluster_live_workers" not in families  # a proxy metric


async def test_draining_worker_refuses_with_retry_after(worker_app, coffee_jpeg):
    session, server, state, _ = worker_app
    state.draining = True
    async with session.post(server.make_url("/"), data={"data": coffee_jpeg}) as r:
        assert r.status == 503 and r.headers["Retry-After"] == "1"
        assert (await r.json())["error"]["code"] == "not_ready"
    async with session.get(server.make_url("/readyz")) as r:
        assert r.status == 503


async def test_a_full_worker_refuses_before_decoding(worker_app, coffee_jpeg, monkeypatch):
    """Room is reserved when a request is admitted: with a queue of 2 and two requests
    being decoded, a third is refused at once and never decoded."""
    session, server, state, _ = worker_app
    (batcher,) = state.batchers.values()
    batcher.config = BatchConfig(max_queue=2)
    gate, decoding = asyncio.Event(), []
    real_decode = http_api.decode_image

    async def held_decode(app, data, prep):
        decoding.append(len(data))
        await gate.wait()
        return await real_decode(app, data, prep)

    monkeypatch.setattr(http_api, "decode_image", held_decode)

    async def post() -> tuple[int, dict]:
        async with session.post(server.make_url("/"), data={"data": coffee_jpeg}) as r:
            return r.status, await r.json()

    first = [asyncio.ensure_future(post()) for _ in range(2)]
    for _ in range(500):
        if len(decoding) == 2:
            break
        await asyncio.sleep(0.01)
    status, body = await asyncio.wait_for(post(), timeout=10)  # not held at the gate with the others
    assert status == 503 and body["error"]["code"] == "overloaded"
    assert len(decoding) == 2
    gate.set()
    assert [(s, b["predictions"][0]["index"]) for s, b in await asyncio.gather(*first)] == [(200, ESPRESSO)] * 2
    assert batcher.depth == 0


async def test_more_images_than_the_queue_holds_is_refused_for_good(worker_app):
    """A request the queue could never take is a 413, not a 503 to retry for ever."""
    session, server, state, _ = worker_app
    (name,) = state.batchers
    n = state.config.batch.max_queue + 1
    async with session.post(server.make_url(f"/v1/models/{name}:predict"),
                            json={"instances": [{"b64": "AA=="}] * n}) as r:
        assert r.status == 413
        assert f"at most {n - 1}" in (await r.json())["error"]
