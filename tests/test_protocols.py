"""The standard protocols with their real clients, unmodified: tritonclient.http and
tritonclient.grpc (the Open Inference Protocol), and TF Serving's REST format with a plain
HTTP client, against a worker and against the proxy. Every answer must match our native
route's probabilities for the same photo; hostile inputs get the protocol's 4xx and the
server keeps serving."""

from __future__ import annotations

import base64
import json
import uuid

import aiohttp
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from edge.imaging import preprocess
from edge.preprocessing import Preprocessing
from tests.conftest import ESPRESSO, MODEL_DIR
from tests.processes import ProxyProcess, WorkerProcess, serve_model

pytestmark = pytest.mark.system

MODEL = "efficientnet_lite0"


@pytest.fixture(scope="module")
def servers(consul_agent, artifacts_dir):
    """{"worker": (http host:port, grpc host:port), "proxy": (...)}: one of each, one service."""
    flags = ("--service-name", f"protocols-{uuid.uuid4().hex[:6]}", "--version-labels", "stable=1")
    worker = WorkerProcess(consul_agent.address, *serve_model(MODEL_DIR), *flags,
                           log_path=artifacts_dir / "worker-protocols.log").wait_ready()
    proxy = ProxyProcess(consul_agent.address, *flags, log_path=artifacts_dir / "proxy-protocols.log")
    try:
        proxy.wait_live(1)
        yield {"worker": (worker.url.removeprefix("http://"), worker.grpc),
               "proxy": (proxy.url.removeprefix("http://"), proxy.grpc)}
    finally:
        proxy.stop()
        worker.stop()


async def native_scores(address: str, photo: bytes) -> np.ndarray:
    form = aiohttp.FormData()
    form.add_field("data", photo, filename="p.jpg")
    async with aiohttp.ClientSession() as s, s.post(f"http://{address}/?k=1000", data=form) as r:
        body = await r.json()
    scores = np.zeros(1000, dtype=np.float32)
    for p in body["predictions"]:
        scores[p["index"]] = p["score"]
    return scores


def triton_inputs(module, photo: bytes, as_tensor: bool, binary: bool = True):
    """The photo as a file (BYTES) or as pixels (UINT8); over HTTP, `binary=False` sends
    them as JSON numbers, as a v2 client without the binary extension does."""
    if as_tensor:
        tensor = preprocess(photo, Preprocessing(), 10**8)[None]
        image = module.InferInput("image", list(tensor.shape), "UINT8")
        image.set_data_from_numpy(tensor, **({} if binary else {"binary_data": False}))
    else:
        image = module.InferInput("image", [1], "BYTES")
        image.set_data_from_numpy(np.array([photo], dtype=object))
    return [image]


@pytest.mark.parametrize("target", ["worker", "proxy"])
@pytest.mark.parametrize("kind", ["http", "grpc"])
async def test_tritonclient_against_native_route(servers, target, kind, coffee_jpeg):
    http_address, grpc_address = servers[target]
    module = httpclient if kind == "http" else grpcclient
    client = module.InferenceServerClient(url=http_address if kind == "http" else grpc_address)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    meta = client.get_model_metadata(MODEL)
    meta = meta if isinstance(meta, dict) else {"inputs": [{"name": i.name} for i in meta.inputs],
                                               "outputs": [{"name": o.name, "shape": list(o.shape)} for o in meta.outputs]}
    assert meta["inputs"][0]["name"] == "image" and meta["outputs"][0]["shape"] == [-1, 1000]
    expected = await native_scores(http_address, coffee_jpeg)
    forms = [(False, True), (True, True)] + ([(True, False)] if kind == "http" else [])
    for as_tensor, binary in forms:
        outputs = [module.InferRequestedOutput("probabilities", **({} if binary else {"binary_data": False}))]
        result = client.infer(MODEL, triton_inputs(module, coffee_jpeg, as_tensor, binary), outputs=outputs)
        probs = result.as_numpy("probabilities")
        assert probs.shape == (1, 1000) and probs.dtype == np.float32 and probs[0].argmax() == ESPRESSO
        top = np.argsort(-probs[0])[:5]
        np.testing.assert_allclose(probs[0][top], expected[top], atol=1e-5)
    result = client.infer(MODEL, triton_inputs(module, coffee_jpeg, False),
                          outputs=[module.InferRequestedOutput("probabilities", class_count=5)])
    best = [entry.decode().split(":") for entry in result.as_numpy("probabilities")[0]]
    assert len(best) == 5 and int(best[0][1]) == ESPRESSO and best[0][2] == "espresso"
    assert float(best[0][0]) == pytest.approx(float(expected[ESPRESSO]), abs=1e-5)
    client.close()


@pytest.mark.parametrize("target", ["worker", "proxy"])
async def test_the_v2_timeout_parameter(servers, target, coffee_jpeg):
    """tritonclient's `timeout` (microseconds) over HTTP and gRPC: a generous one changes
    nothing, one that passes before the answer is a 504 / DEADLINE_EXCEEDED; a timeout
    that is not a whole number of microseconds is a 400."""
    http_address, grpc_address = servers[target]
    for module, address in ((httpclient, http_address), (grpcclient, grpc_address)):
        client = module.InferenceServerClient(url=address)
        inputs = triton_inputs(module, coffee_jpeg, False)
        outputs = [module.InferRequestedOutput("probabilities", class_count=1)]
        best = client.infer(MODEL, inputs, outputs=outputs, timeout=10_000_000).as_numpy("probabilities")[0][0]
        assert int(best.decode().split(":")[1]) == ESPRESSO
        with pytest.raises(InferenceServerException) as caught:
            client.infer(MODEL, inputs, outputs=outputs, timeout=1)
        assert str(caught.value.status()) in ("504", "StatusCode.DEADLINE_EXCEEDED"), caught.value
        client.close()
    header = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["AA=="]}],
              "parameters": {"timeout": "soon"}}
    status, answer = await post_json(http_address, f"/v2/models/{MODEL}/infer", v2_body(header)[0])
    assert status == 400 and "timeout" in answer["error"], answer


async def post_json(address: str, path: str, body: object, headers: dict | None = None) -> tuple[int, object]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with aiohttp.ClientSession() as s, s.post(f"http://{address}{path}", data=data, headers=headers) as r:
        return r.status, await r.json(content_type=None)


@pytest.mark.parametrize("target", ["worker", "proxy"])
async def test_tf_serving_rest(servers, target, coffee_jpeg):
    address = servers[target][0]
    expected = await native_scores(address, coffee_jpeg)
    b64 = base64.b64encode(coffee_jpeg).decode()
    for path in (f"/v1/models/{MODEL}:predict", f"/v1/models/{MODEL}/versions/1:predict",
                 f"/v1/models/{MODEL}/labels/stable:predict"):
        status, body = await post_json(address, path, {"instances": [{"b64": b64}, {"image": {"b64": b64}}]})
        assert status == 200, body
        for row in body["predictions"]:
            probs = np.array(row, dtype=np.float32)
            top = np.argsort(-probs)[:5]
            assert top[0] == ESPRESSO
            np.testing.assert_allclose(probs[top], expected[top], atol=1e-5)
    status, body = await post_json(address, f"/v1/models/{MODEL}:predict", {"inputs": [{"b64": b64}]})
    assert status == 200 and np.argmax(body["outputs"][0]) == ESPRESSO
    pixels = preprocess(coffee_jpeg, Preprocessing(), 10**8).tolist()  # an image as TF Serving's examples send it
    status, body = await post_json(address, f"/v1/models/{MODEL}:predict", {"instances": [pixels]})
    probs = np.array(body["predictions"][0], dtype=np.float32)
    assert status == 200 and np.argmax(probs) == ESPRESSO
    np.testing.assert_allclose(probs[np.argsort(-probs)[:5]], expected[np.argsort(-probs)[:5]], atol=1e-5)
    status, body = await post_json(address, f"/v1/models/{MODEL}:classify", {"examples": [{"image": {"b64": b64}}]})
    assert status == 200 and body["results"][0][0][0] == "espresso"
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://{address}/v1/models/{MODEL}") as r:
            assert (await r.json())["model_version_status"][0]["state"] == "AVAILABLE"
        async with s.get(f"http://{address}/v1/models/{MODEL}/metadata") as r:
            assert "serving_default" in (await r.json())["metadata"]["signature_def"]["signature_def"]


def v2_body(header: dict, binary: bytes = b"") -> tuple[bytes, dict]:
    encoded = json.dumps(header).encode()
    return encoded + binary, {"Inference-Header-Content-Length": str(len(encoded))}


HOSTILE_V2 = {
    "bad base64": ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["@@not base64@@"]}]}, b""),
    "shape does not match data": ({"inputs": [{"name": "image", "shape": [1, 224, 224, 3], "datatype": "UINT8",
                                               "parameters": {"binary_data_size": 10}}]}, b"\x00" * 10),
    "wrong datatype": ({"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, b""),
    "binary size past the body": ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                               "parameters": {"binary_data_size": 10**6}}]}, b"\x00" * 8),
    "huge declared shape": ({"inputs": [{"name": "image", "shape": [10**12, 224, 224, 3], "datatype": "UINT8",
                                         "data": [1]}]}, b""),
    "element length past its tensor": ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                                    "parameters": {"binary_data_size": 8}}]}, b"\xff\xff\x00\x00abcd"),
    "unknown output": ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["AA=="]}],
                        "outputs": [{"name": "logits"}]}, b""),
    "not json": (None, b"\x00garbage"),
}


@pytest.mark.parametrize("target", ["worker", "proxy"])
async def test_hostile_inputs_get_the_protocols_4xx(servers, target, coffee_jpeg):
    address, grpc_address = servers[target]
    for name, (header, binary) in HOSTILE_V2.items():
        body, headers = v2_body(header, binary) if header is not None else (binary, {})
        status, answer = await post_json(address, f"/v2/models/{MODEL}/infer", body, headers)
        assert status == 400 and isinstance(answer["error"], str), (name, status, answer)
    for path in ("/v2/models/resnet/infer", f"/v2/models/{MODEL}/versions/9/infer"):
        status, answer = await post_json(address, path, v2_body(HOSTILE_V2["bad base64"][0])[0])
        assert status == 404 and isinstance(answer["error"], str)
    for path, body in ((f"/v1/models/{MODEL}:predict", {"instances": [{"b64": "@@"}]}),
                       (f"/v1/models/{MODEL}:predict", {"instances": []}),
                       (f"/v1/models/{MODEL}:predict", {"instances": [[[1, 2], [3, 4]]]})):
        status, answer = await post_json(address, path, body)
        assert status == 400 and isinstance(answer["error"], str), (path, body, answer)
    for path in ("/v1/models/resnet:predict", f"/v1/models/{MODEL}/versions/9:predict",
                 f"/v1/models/{MODEL}/labels/canary:predict"):
        status, answer = await post_json(address, path, {"instances": [{"b64": "AA=="}]})
        assert status == 404 and isinstance(answer["error"], str), path
    client = grpcclient.InferenceServerClient(url=grpc_address)
    bad = grpcclient.InferInput("image", [1, 10, 10, 3], "UINT8")  # not the model's input size
    bad.set_data_from_numpy(np.zeros((1, 10, 10, 3), dtype=np.uint8))
    for model, inputs, code in ((MODEL, [bad], "INVALID_ARGUMENT"),
                                ("resnet", triton_inputs(grpcclient, coffee_jpeg, False), "NOT_FOUND")):
        with pytest.raises(InferenceServerException) as err:
            client.infer(model, inputs)
        assert code in str(err.value.status())
    # Still serving, on every protocol.
    assert client.infer(MODEL, triton_inputs(grpcclient, coffee_jpeg, False)).as_numpy("probabilities")[0].argmax() \
        == ESPRESSO
    client.close()
    assert np.argmax(await native_scores(address, coffee_jpeg)) == ESPRESSO


async def test_protocols_need_the_token_and_are_counted(start_worker, coffee_jpeg):
    worker = start_worker("--auth-token", "s3cret")
    address = worker.url.removeprefix("http://")
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://{address}/v2/health/ready") as r:
            assert r.status == 200  # probes stay open
    status, answer = await post_json(address, f"/v2/models/{MODEL}/infer", b"{}")
    assert status == 401 and isinstance(answer["error"], str)
    status, _ = await post_json(address, f"/v1/models/{MODEL}:predict", {"instances": []})
    assert status == 401
    client = httpclient.InferenceServerClient(url=address)
    result = client.infer(MODEL, triton_inputs(httpclient, coffee_jpeg, False), headers={"Authorization": "Bearer s3cret"})
    assert result.as_numpy("probabilities")[0].argmax() == ESPRESSO
    rpc = grpcclient.InferenceServerClient(url=worker.grpc)
    with pytest.raises(InferenceServerException) as err:
        rpc.infer(MODEL, triton_inputs(grpcclient, coffee_jpeg, False))
    assert "UNAUTHENTICATED" in str(err.value.status())
    assert rpc.infer(MODEL, triton_inputs(grpcclient, coffee_jpeg, False),
                     headers={"authorization": "Bearer s3cret"}).as_numpy("probabilities")[0].argmax() == ESPRESSO
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer s3cret"}) as s:
        async with s.get(worker.url + "/metrics") as r:
            text = await r.text()
    assert 'protocol="v2"' in text and 'status="401"' in text and 'protocol="tfserving"' in text
    assert 'imagecluster_grpc_requests_total{code="OK",method="ModelInfer"} 1.0' in text
    assert 'imagecluster_grpc_requests_total{code="UNAUTHENTICATED",method="ModelInfer"} 1.0' in text
