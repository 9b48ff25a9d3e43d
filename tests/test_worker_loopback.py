"""The worker's HTTP app in process (aiohttp TestServer, or the worker's own runner) over
the real default model: the batcher, the shared edge and the app's own metrics, without
Consul; and its ZeroMQ endpoint, spoken to by a DEALER socket in the test."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import aiohttp
import grpc
import numpy as np
import pytest
import tritonclient.grpc as tritongrpc
import tritonclient.http as tritonhttp
import zmq
import zmq.asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from edge.app import DECODE_POOL, app_runner
from edge.imaging import preprocess
from edge.metrics import METRICS
from edge.preprocessing import Preprocessing
from edge.v2_grpc import GrpcFront, RpcMetrics, V2Servicer, start_grpc
from tests.conftest import ESPRESSO, scrape, stalled_upload, until, value
from worker import http_api
from worker.batcher import BatchConfig, Batcher
from worker.config import WorkerConfig
from worker.http_api import create_app
from worker.metrics import BatchMetrics
from worker.model import load_model
from worker.protocol import BatchReply, BatchRequest, Cancel
from worker.service import WorkerState
from worker.zmq_endpoint import ZmqEndpoint

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
    await until(lambda: len(decoding) == 2)
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


@pytest.fixture
async def held_worker(built_model, monkeypatch):
    """(state, batcher, gate): the default model served by one batcher (no lanes), every
    batch waiting at `gate` before it runs, so that images queue behind the first."""
    state = WorkerState(WorkerConfig(model_repository=built_model.parent), worker_id="w-loop")
    batcher = Batcher(load_model(built_model), state.config.batch)
    batcher.start()
    state.batchers[batcher.model.name] = batcher
    gate, predict = threading.Event(), Batcher._predict
    held = staticmethod(lambda model, images: gate.wait(10) and predict(model, images))
    monkeypatch.setattr(Batcher, "_predict", held)
    yield state, batcher, gate
    gate.set()
    await batcher.close()


@contextlib.asynccontextmanager
async def served(app: web.Application, gate: threading.Event):
    """`app` on the worker's own runner (edge.app.app_runner; aiohttp's TestServer would
    turn handler cancellation on by itself) on a free port: its URL. `gate` is opened
    before the runner stops, so no handler is left waiting on a held batch."""
    runner = app_runner(app, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        gate.set()
        await runner.cleanup()


async def test_a_client_that_gives_up_leaves_its_image_uncomputed(held_worker, coffee_jpeg):
    """Served by the worker's own runner: a client that disconnects while its image waits
    behind a running batch cancels its handler, the batcher drops the image, and the
    request is counted 499."""
    state, batcher, gate = held_worker
    async with served(create_app(state), gate) as url, aiohttp.ClientSession() as session:
        async def post(timeout: float | None = None) -> int:
            form = aiohttp.FormData()
            form.add_field("data", coffee_jpeg, filename="coffee.jpg")
            async with session.post(url + "/", data=form, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                return r.status

        first = asyncio.ensure_future(post())
        await until(lambda: state.depth == 1 and state.in_flight == 1)  # in the model, held there
        with pytest.raises(asyncio.TimeoutError):
            await post(timeout=1.0)  # queued behind it, then given up on
        await until(lambda: state.in_flight == 1)  # its handler was cancelled
        gate.set()
        assert await first == 200
        samples = await asyncio.get_running_loop().run_in_executor(None, scrape, url)
    assert batcher.stats.images == 1 and batcher.stats.batches == 1  # the abandoned image never ran
    assert state.in_flight == 0 and state.depth == 0
    assert value(samples, "imagecluster_http_requests_total", protocol="native", route="/", method="POST",
                 status="499") == 1


async def test_a_v2_timeout_that_passes_leaves_its_image_uncomputed(held_worker, coffee_jpeg):
    """tritonclient's `timeout` (the v2 request parameter, microseconds), over HTTP and
    gRPC, and its `client_timeout` over gRPC (a gRPC deadline: gRPC cancels the call on
    the server too): while the model is held, each request waits 0.3 s, then is answered
    504 / DEADLINE_EXCEEDED, and its image, queued behind the running batch, never runs."""
    state, batcher, gate = held_worker
    app = create_app(state)
    pixels = preprocess(coffee_jpeg, Preprocessing(), 10**8)[None]

    def infer(module, address: str, **limit) -> tuple[str, float]:
        image = module.InferInput("image", list(pixels.shape), "UINT8")
        image.set_data_from_numpy(pixels)
        client = module.InferenceServerClient(url=address)
        started = time.monotonic()
        try:
            client.infer("efficientnet_lite0", [image], **limit)
        except InferenceServerException as exc:
            return str(exc.status()), time.monotonic() - started
        finally:
            client.close()
        return "answered", time.monotonic() - started

    async with served(app, gate) as url, aiohttp.ClientSession() as session:
        front = await start_grpc(app[http_api.SERVICE], state.config.edge, "127.0.0.1", 0, CollectorRegistry())
        try:
            form = aiohttp.FormData()
            form.add_field("data", coffee_jpeg, filename="coffee.jpg")
            first = asyncio.ensure_future(session.post(url + "/", data=form))
            await until(lambda: state.depth == 1 and state.in_flight == 1)  # in the model, held there
            grpc_address = f"127.0.0.1:{front.port}"
            answers = await asyncio.gather(
                asyncio.to_thread(infer, tritonhttp, url.removeprefix("http://"), timeout=300_000),
                asyncio.to_thread(infer, tritongrpc, grpc_address, timeout=300_000),
                asyncio.to_thread(infer, tritongrpc, grpc_address, client_timeout=0.3))
            assert [status for status, _ in answers] == ["504"] + ["StatusCode.DEADLINE_EXCEEDED"] * 2, answers
            assert all(0.3 <= took < 5 for _, took in answers), answers
            await until(lambda: state.in_flight == 1)  # their handlers were cancelled
            gate.set()
            assert (await first).status == 200
            await until(lambda: state.depth == 0)  # every batch that was going to run has run
        finally:
            gate.set()
            await front.stop(0)
    assert batcher.stats.images == 1 and batcher.stats.batches == 1  # the timed-out images never ran


async def test_a_full_queue_refuses_the_standard_protocols_before_their_bodies(held_worker, coffee_jpeg):
    """As the native route does: with no room for the model, a v2 or TF Serving request is
    refused (503; 429 in TF Serving's terms) while its body is still arriving."""
    state, batcher, gate = held_worker
    batcher.config = BatchConfig(max_queue=1)
    async with served(create_app(state), gate) as url, aiohttp.ClientSession() as session:
        def post():
            return asyncio.ensure_future(session.post(url + "/", data=coffee_jpeg,
                                                      headers={"Content-Type": "image/jpeg"}))

        first = post()
        await until(lambda: state.depth == 1 and not batcher.full)  # in the model, held there
        second = post()
        await until(lambda: batcher.full)  # the one place in the queue taken
        body = b"{" + b" " * 100_000 + b"}"  # only half of it is ever sent
        v2 = await stalled_upload(url, body, "/v2/models/efficientnet_lite0/infer")
        tfs = await stalled_upload(url, body, "/v1/models/efficientnet_lite0:predict")
        assert v2.startswith(b"HTTP/1.1 503") and b"Retry-After" in v2, v2[:200]
        assert tfs.startswith(b"HTTP/1.1 429"), tfs[:200]
        gate.set()
        assert [(await r).status for r in (first, second)] == [200, 200]


async def test_a_cancel_from_a_proxy_drops_its_waiting_image(held_worker, coffee_jpeg):
    """The ZeroMQ endpoint in process: a proxy whose caller gave up names the item in a
    Cancel; the image, queued behind a running batch, is never computed, and its result in
    the batch's reply is a 499 `cancelled` while the rest of that batch is answered."""
    state, batcher, gate = held_worker
    endpoint = ZmqEndpoint(state, "127.0.0.1", 0, 10**8)
    endpoint.start()
    context = zmq.asyncio.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{endpoint.port}")
    image = preprocess(coffee_jpeg, Preprocessing(), 10**8)

    async def reply() -> dict:
        assert await sock.poll(10_000), "no reply"
        return {r.id: r for r in BatchReply.decode(await sock.recv_multipart()).results} or {"refused": None}

    try:
        await sock.send_multipart(BatchRequest("b1", ["held"], image[None]).encode())
        await until(lambda: state.depth == 1)  # in the model, held there
        await sock.send_multipart(BatchRequest("b2", ["kept", "dropped"], np.stack([image, image])).encode())
        await sock.send_multipart(Cancel(["dropped"]).encode())
        await sock.send_multipart(BatchRequest("b3", ["x"], image[None], model="no-such-model").encode())
        assert await reply() == {"refused": None}  # b3, refused at once: the cancel before it was handled
        gate.set()
        results = {**await reply(), **await reply()}
        assert results["held"].predictions[0]["index"] == ESPRESSO
        assert results["kept"].predictions[0]["index"] == ESPRESSO
        assert (results["dropped"].error.status, results["dropped"].error.code) == (499, "cancelled")
        assert batcher.stats.images == 2 and state.in_flight == 0 and state.depth == 0
    finally:
        gate.set()
        sock.close()
        context.term()
        await endpoint.close()


async def test_an_unexpected_grpc_error_is_internal_and_its_text_stays_in_the_log(held_worker, monkeypatch, caplog):
    """grpcio answers an exception a handler lets out UNKNOWN with the exception's text as
    its details; ours answers INTERNAL with a fixed message, logs the exception with the
    request id, and counts the call INTERNAL."""
    state, batcher, gate = held_worker
    app = create_app(state)

    def broken(self, name, version=None):
        raise RuntimeError("secret detail /etc/shadow")

    monkeypatch.setattr(type(app[http_api.SERVICE]), "model", broken)
    registry = CollectorRegistry()
    front = await start_grpc(app[http_api.SERVICE], state.config.edge, "127.0.0.1", 0, registry)

    def metadata() -> tuple[str, str]:
        client = tritongrpc.InferenceServerClient(url=f"127.0.0.1:{front.port}")
        try:
            client.get_model_metadata("efficientnet_lite0", headers={"x-request-id": "rid-broken"})
        except InferenceServerException as exc:
            return str(exc.status()), exc.message()
        finally:
            client.close()
        return "answered", ""

    try:
        status, message = await asyncio.to_thread(metadata)
    finally:
        await front.stop(0)
    assert status == "StatusCode.INTERNAL" and "secret" not in message and "RuntimeError" not in message
    assert "the server failed" in message
    assert any("rid-broken" in r.getMessage() and r.exc_info for r in caplog.records)
    assert registry.get_sample_value("imagecluster_grpc_requests_total",
                                     {"method": "ModelMetadata", "code": "INTERNAL"}) == 1


async def test_a_grpc_stop_waits_for_our_calls_and_holds_no_other(held_worker, coffee_jpeg):
    """GrpcFront.stop lets the calls in our handlers finish, then stops at once. grpcio, in
    the instant a server stops, can accept a call and never hand it to a handler (1 stop
    in 80 of a scratch probe): it held that call, and its client, for the whole grace (a
    proxy's restart once kept a client waiting out its 30 s deadline). The stand-in here
    is a call to a handler outside ours that never answers; it is now failed at once."""
    state, batcher, gate = held_worker
    servicer = V2Servicer(create_app(state)[http_api.SERVICE], state.config.edge, RpcMetrics(CollectorRegistry()))
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    never = asyncio.Event()

    async def hold(request, context):
        await never.wait()
    held = grpc.unary_unary_rpc_method_handler(hold)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Held", {"Call": held}),))
    front = GrpcFront(server, server.add_insecure_port("127.0.0.1:0"), servicer)
    await server.start()
    pixels = preprocess(coffee_jpeg, Preprocessing(), 10**8)[None]

    def ours() -> str:
        image = tritongrpc.InferInput("image", list(pixels.shape), "UINT8")
        image.set_data_from_numpy(pixels)
        with tritongrpc.InferenceServerClient(url=f"127.0.0.1:{front.port}") as client:
            return client.infer("efficientnet_lite0", [image]).as_numpy("probabilities").argmax()

    def other() -> tuple[str, float]:
        started = time.monotonic()
        with grpc.insecure_channel(f"127.0.0.1:{front.port}") as channel:
            try:
                channel.unary_unary("/test.Held/Call")(b"", timeout=60)
            except grpc.RpcError as exc:
                return exc.code().name, time.monotonic() - started
        return "OK", time.monotonic() - started

    try:
        answer = asyncio.ensure_future(asyncio.to_thread(ours))
        await until(lambda: servicer.unfinished == 1 and state.depth == 1)  # in the model, held there
        stand_in = asyncio.ensure_future(asyncio.to_thread(other))
        await asyncio.sleep(0.2)  # at its handler
        started = time.monotonic()
        stopping = asyncio.ensure_future(front.stop(30))
        await asyncio.sleep(0.5)
        assert not stopping.done()  # our call holds the stop
        gate.set()
        assert await answer == ESPRESSO
        await stopping
        code, waited = await stand_in
        assert time.monotonic() - started < 10 and code != "OK" and waited < 10, (code, waited)
    finally:
        gate.set()
        never.set()
        await server.stop(None)
