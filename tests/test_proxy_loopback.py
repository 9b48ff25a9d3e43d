"""The proxy app in process (aiohttp TestServer) forwarding to ZeroMQ ROUTER sockets on
127.0.0.1 that speak the worker protocol from a script: the pool, channels and forward()
decisions (retry, eject, relay, 502) without worker processes or Consul.

The proxy's watcher points at a port where no Consul listens, so it keeps its (empty)
last known set; the tests feed the pool the instances Consul would have listed."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import aiohttp
import numpy as np
import pytest
import tritonclient.grpc as tritongrpc
import tritonclient.grpc.aio as tritongrpc_aio
import zmq
import zmq.asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from tritonclient.utils import InferenceServerException

from discovery.registration import ConsulAddress
from discovery.watcher import Instance
from edge.app import app_runner
from proxy.app import STATE, create_app
from proxy.config import ProxyConfig
from proxy.server import ProxyServer
from tests.conftest import until
from tests.consul_dev import free_port
from worker.protocol import (
    BatchReply,
    BatchRequest,
    Cancel,
    ErrorInfo,
    ItemResult,
    ServedModel,
    WorkerMeta,
    decode_message,
)

pytestmark = pytest.mark.loopback

IMAGENET = {"m": ServedModel("1", "tflite", (224, 224, 3), 1000)}
DIGITS = {"digits": ServedModel("3", "onnx", (8, 8, 1), 10, crop_fraction=1.0)}

WORKER_ONLY_FAMILIES = ("imagecluster_queue_wait_seconds", "imagecluster_inference_duration_seconds",
                        "imagecluster_batch_size")


def ok(request: BatchRequest) -> BatchReply:
    results = [ItemResult(i, [{"label": "espresso", "index": 967, "score": 0.9}] * request.k, "1", 0.1, 1.0,
                          len(request.ids)) for i in request.ids]
    return BatchReply(request.batch, "", "m", results)


def black_image(client_module) -> list:
    """tritonclient's inputs for one black 224x224 UINT8 image (the scripted workers answer
    whatever they are sent), from tritonclient.grpc or tritonclient.grpc.aio."""
    image = client_module.InferInput("image", [1, 224, 224, 3], "UINT8")
    image.set_data_from_numpy(np.zeros((1, 224, 224, 3), np.uint8))
    return [image]


def item_error(status: int, code: str) -> Callable[[BatchRequest], BatchReply]:
    def answer(request: BatchRequest) -> BatchReply:
        err = ErrorInfo(status, code, f"secret detail {code}")
        return BatchReply(request.batch, "", "m", [ItemResult(i, error=err) for i in request.ids])
    return answer


def batch_error(status: int, code: str) -> Callable[[BatchRequest], BatchReply]:
    return lambda request: BatchReply(request.batch, "", error=ErrorInfo(status, code, f"secret detail {code}"))


class ScriptedWorker:
    """A ROUTER socket on 127.0.0.1 answering each batch with `answer(request)`."""

    def __init__(self, name: str, answer: Callable[[BatchRequest], BatchReply], delay_s: float = 0.0,
                 models: dict[str, ServedModel] = IMAGENET):
        self.name, self.answer, self.delay_s, self.models = name, answer, delay_s, models
        self.requests: list[BatchRequest] = []
        self.cancelled: list[str] = []  # item ids the proxy said its callers gave up on
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self.port = self._sock.bind_to_random_port("tcp://127.0.0.1")
        self._task = asyncio.create_task(self._serve())

    async def _serve(self):
        while True:
            identity, *frames = await self._sock.recv_multipart()
            request = decode_message(frames)
            if isinstance(request, Cancel):
                self.cancelled += request.ids
                continue
            self.requests.append(request)
            await asyncio.sleep(self.delay_s)  # a model that takes its time: requests queue meanwhile
            reply = self.answer(request)
            reply.worker = self.name
            await self._sock.send_multipart([identity, *reply.encode()])

    def instance(self) -> Instance:
        meta = WorkerMeta(self.name, free_port(), self.port, models=self.models)
        return Instance(self.name, "127.0.0.1", meta.http_port, meta.to_meta())

    async def close(self):
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._sock.close(linger=0)
        self._ctx.term()


@pytest.fixture
async def proxy():
    """(post, app, add_workers): the proxy app on a loopback TestServer."""
    # Round-robin: these tests script which worker answers what, so the picks must be certain.
    config = ProxyConfig(host="127.0.0.1", consul=ConsulAddress("127.0.0.1", free_port()), probe_interval=30,
                         grpc_port=0, policy="round-robin")
    app = create_app(config)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    workers: list[ScriptedWorker] = []

    def add_workers(*scripted: tuple):
        workers.extend(ScriptedWorker(*args) for args in scripted)
        app[STATE].pool.update({w.name: w.instance() for w in workers})
        return workers

    async with aiohttp.ClientSession() as session:
        async def post(body: bytes, path: str = "/"):
            async with session.post(server.make_url(path), data=body, headers={"Content-Type": "image/jpeg"}) as r:
                return r.status, await r.json(), r.headers

        async def get(path: str):
            async with session.get(server.make_url(path)) as r:
                return r.status, await r.text()

        yield post, get, add_workers, app
    await server.close()
    for w in workers:
        await w.close()


async def test_forwards_micro_batches_of_preprocessed_uint8(proxy, coffee_jpeg):
    post, _, add_workers, _ = proxy
    (w,) = add_workers(("w1", ok, 0.2))
    answers = await asyncio.gather(*(post(coffee_jpeg) for _ in range(6)))
    assert all(status == 200 and body["worker"] == "w1" for status, body, _ in answers)
    assert answers[0][1]["predictions"][0] == {"label": "espresso", "index": 967, "score": 0.9}
    assert sum(len(r.ids) for r in w.requests) == 6 and len(w.requests) < 6  # batched
    images = np.concatenate([r.images for r in w.requests])
    assert images.shape == (6, 224, 224, 3) and images.dtype == np.uint8 and images.std() > 0


async def test_a_caller_that_gives_up_is_cancelled_at_the_worker(proxy, coffee_jpeg):
    """Clients that disconnect while their images are at a slow worker: the proxy names
    their items in one Cancel, so the worker can drop what is still waiting."""
    post, _, add_workers, app = proxy
    (w,) = add_workers(("slow", ok, 0.5))  # it reads the next message once it has answered one
    gone = [asyncio.ensure_future(post(coffee_jpeg)) for _ in range(3)]
    (handle,) = app[STATE].pool.live()
    await until(lambda: handle.channel.awaiting_reply == 3)  # all sent
    for request in gone:
        request.cancel()  # the client goes away: its connection closes
    await asyncio.gather(*gone, return_exceptions=True)
    await until(lambda: len(w.cancelled) == 3)  # read once the worker has answered what came before: ~1 s
    assert sorted(w.cancelled) == sorted(i for r in w.requests for i in r.ids)


async def test_a_grpc_deadline_that_passes_is_cancelled_at_the_worker(proxy):
    """tritonclient's `client_timeout` (a gRPC deadline) through the proxy: gRPC cancels
    the call, and the proxy names its item in a Cancel to the slow worker."""
    _, _, add_workers, app = proxy
    (w,) = add_workers(("slow", ok, 1.0))
    client = tritongrpc_aio.InferenceServerClient(f"127.0.0.1:{app[STATE].grpc.port}")
    try:
        with pytest.raises(InferenceServerException) as caught:
            await client.infer("m", black_image(tritongrpc_aio), client_timeout=0.2)
    finally:
        await client.close()
    assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    await until(lambda: len(w.cancelled) == 1)  # read once the worker has answered its batch: ~1 s
    assert w.cancelled == [i for r in w.requests for i in r.ids]


async def test_full_worker_is_passed_over_not_ejected(proxy, coffee_jpeg):
    post, get, add_workers, app = proxy
    add_workers(("busy", item_error(503, "overloaded")), ("free", ok))
    for _ in range(4):
        status, body, _ = await post(coffee_jpeg)
        assert status == 200 and body["worker"] == "free"
    assert len(app[STATE].pool.live()) == 2


async def test_failing_worker_is_ejected_and_the_request_retried(proxy, coffee_jpeg):
    post, get, add_workers, app = proxy
    add_workers(("broken", item_error(500, "inference_failed")), ("good", ok))
    answers = [await post(coffee_jpeg) for _ in range(4)]
    assert all(status == 200 and body["worker"] == "good" for status, body, _ in answers)
    assert [h.id for h in app[STATE].pool.live()] == ["good"]
    assert app[STATE].pool.ejections == 1


async def test_worker_refusing_the_proxys_message_is_a_502_without_detail(proxy, coffee_jpeg):
    post, _, add_workers, _ = proxy
    add_workers(("strict", batch_error(401, "unauthorized")))
    status, body, _ = await post(coffee_jpeg)
    assert status == 502 and body["error"]["code"] == "worker_rejected"
    assert "secret" not in body["error"]["message"]


async def test_client_fault_is_relayed(proxy, coffee_jpeg):
    post, _, add_workers, _ = proxy
    add_workers(("w", item_error(422, "invalid_parameter")))
    status, body, _ = await post(coffee_jpeg)
    assert status == 422 and body["error"]["code"] == "invalid_parameter"


async def test_no_worker_is_a_503_with_retry_after(proxy, coffee_jpeg):
    post, get, _, _ = proxy
    status, body, headers = await post(coffee_jpeg)
    assert status == 503 and body["error"]["code"] == "no_worker" and headers["Retry-After"] == "1"
    assert (await get("/readyz"))[0] == 503


async def test_bad_image_is_a_400_and_no_worker_sees_it(proxy):
    post, _, add_workers, _ = proxy
    (w,) = add_workers(("w", ok))
    status, body, _ = await post(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n")
    assert status == 400 and body["error"]["code"] == "not_an_image"
    assert not w.requests


async def test_every_inference_answer_is_in_the_recent_traffic(proxy, coffee_jpeg):
    """The status page's traffic counts what clients got, on every protocol: refusals
    before the body (no worker yet), a body refused while being read, answers over REST
    and gRPC, and a gRPC error."""
    post, get, add_workers, app = proxy

    def grpc_infer(model: str) -> str:
        client = tritongrpc.InferenceServerClient(url=f"127.0.0.1:{app[STATE].grpc.port}")
        try:
            client.infer(model, black_image(tritongrpc), outputs=[tritongrpc.InferRequestedOutput("probabilities", class_count=1)])
        except InferenceServerException as exc:
            return str(exc.status())
        finally:
            client.close()
        return "answered"

    statuses = [(await post(coffee_jpeg))[0], (await post(coffee_jpeg, "/v1/models/m:predict"))[0]]
    add_workers(("w", ok))
    limit = app[STATE].config.edge.max_body_bytes
    statuses += [(await post(b"x" * (limit + 1)))[0], (await post(coffee_jpeg))[0]]
    assert statuses == [503, 503, 413, 200]
    assert await asyncio.to_thread(grpc_infer, "m") == "answered"
    assert await asyncio.to_thread(grpc_infer, "no-such-model") == "StatusCode.NOT_FOUND"
    status, text = await get("/workers")
    recent = json.loads(text)["recent"]
    assert status == 200 and recent["requests"] == 6 and recent["errors"] == 2 and recent["refused"] == 2


async def test_proxy_exports_only_its_own_metrics(proxy, coffee_jpeg):
    post, get, add_workers, _ = proxy
    add_workers(("w", ok))
    assert (await post(coffee_jpeg))[0] == 200
    status, text = await get("/metrics")
    assert status == 200
    assert 'imagecluster_http_requests_total{method="POST",protocol="native",route="/",status="200"} 1.0' in text
    assert "imagecluster_live_workers 1.0" in text
    assert not [f for f in WORKER_ONLY_FAMILIES if f in text]


async def test_each_model_goes_to_its_workers_in_batches_of_its_own(proxy, coffee_jpeg):
    post, get, add_workers, _ = proxy
    both, imagenet_only = add_workers(("both", ok, 0.2, {**IMAGENET, **DIGITS}), ("imagenet", ok, 0.2))
    answers = await asyncio.gather(*(post(coffee_jpeg, "/?model=digits&k=3") for _ in range(6)),
                                   *(post(coffee_jpeg, "/?model=m") for _ in range(6)))
    assert all(status == 200 for status, _, _ in answers)
    assert {body["worker"] for _, body, _ in answers[:6]} == {"both"}
    assert {body["model"] for _, body, _ in answers[:6]} == {"digits"}
    assert not [r for r in imagenet_only.requests if r.model != "m"]
    for request in both.requests + imagenet_only.requests:  # one model per message, at its input shape
        assert request.images.shape[1:] == {"digits": (8, 8, 1), "m": (224, 224, 3)}[request.model]
    assert sum(len(r.ids) for r in both.requests if r.model == "digits") == 6
    assert any(len(r.ids) > 1 for r in both.requests if r.model == "digits")  # batched, among themselves
    status, text = await get("/?model=digits")
    assert status == 200 and text.strip().endswith("/?model=digits")
    status, text = await get("/")  # no model named, the default (efficientnet_lite0) not served, two are
    assert status == 404 and "name a model" in text


async def test_unknown_model_is_a_404_in_forward_and_lookup(proxy, coffee_jpeg):
    post, get, add_workers, _ = proxy
    (w,) = add_workers(("w", ok))
    status, body, _ = await post(coffee_jpeg, "/?model=nope")
    assert status == 404 and body["error"]["code"] == "model_not_found" and "m" in body["error"]["message"]
    assert (await get("/?model=nope"))[0] == 404
    assert not w.requests


async def test_a_drain_stops_grpc_at_once_and_finishes_its_calls_in_flight():
    """The proxy's drain (a handover's or a stop's) stops its gRPC server as it begins:
    a call in flight is answered, and the next call on the same channel is no longer
    served here (after a handover the channel reconnects to the successor on the same
    port). Before, gRPC kept serving through the drain, and a busy channel kept the old
    proxy draining until --drain-idle ran out."""
    config = ProxyConfig(host="127.0.0.1", consul=ConsulAddress("127.0.0.1", free_port()), probe_interval=30,
                         grpc_port=0, drain_idle=30)
    app = create_app(config)
    runner = app_runner(app, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    (worker,) = workers = [ScriptedWorker("w", ok, delay_s=0.5)]
    app[STATE].pool.update({worker.name: worker.instance()})
    client = tritongrpc_aio.InferenceServerClient(f"127.0.0.1:{app[STATE].grpc.port}")

    async def infer() -> str:
        top1 = tritongrpc_aio.InferRequestedOutput("probabilities", class_count=1)
        try:
            await client.infer("m", black_image(tritongrpc_aio), outputs=[top1], client_timeout=10)
        except InferenceServerException as exc:
            return str(exc.status())
        return "answered"

    try:
        in_flight = asyncio.ensure_future(infer())
        await until(lambda: app[STATE].in_flight == 1)  # at the worker, which takes 0.5 s
        started = time.monotonic()
        drain = asyncio.ensure_future(ProxyServer(config)._drain(app, runner, site))
        await asyncio.sleep(0.1)
        assert await infer() != "answered"  # no successor here: refused, not served by a draining proxy
        assert await in_flight == "answered"
        await drain
        assert time.monotonic() - started < 10  # --drain-idle is 30: nothing held the drain open
    finally:
        await client.close()
        await runner.cleanup()
        for w in workers:
            await w.close()
