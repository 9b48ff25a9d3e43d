"""The optional shared-secret bearer token, end to end: worker, proxy, ZeroMQ, client."""

from __future__ import annotations

import json
import uuid

import aiohttp
import pytest

from client import ClassifyError, Client
from edge.imaging import preprocess
from edge.preprocessing import Preprocessing
from tests.conftest import ESPRESSO, consul_get, roundtrip
from worker.protocol import BatchRequest

pytestmark = pytest.mark.system

TOKEN = "s3cret-" + uuid.uuid4().hex


@pytest.fixture
def cluster(start_worker, start_proxy):
    service = f"classifier-{uuid.uuid4().hex[:6]}"
    worker = start_worker("--service-name", service, "--auth-token", TOKEN)
    proxy = start_proxy("--service-name", service, token=TOKEN).wait_live(1)
    return worker, proxy, service


async def call(method: str, url: str, token: str | None = None, photo: bytes | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s:
        data = None
        if photo is not None:
            data = aiohttp.FormData()
            data.add_field("data", photo, filename="p.jpg", content_type="image/jpeg")
        async with s.request(method, url, headers=headers, data=data) as r:
            return r.status, await r.text(), r.headers


async def test_worker_requires_the_token(cluster, coffee_jpeg):
    worker, _, _ = cluster
    for token in (None, "wrong", TOKEN[:-1]):
        status, body, headers = await call("POST", worker.url, token, coffee_jpeg)
        assert status == 401 and json.loads(body)["error"]["code"] == "unauthorized"
        assert headers["WWW-Authenticate"].startswith("Bearer")
    assert (await call("GET", worker.url + "/info"))[0] == 401
    for probe in ("/healthz", "/readyz"):  # health stays open for probes
        assert (await call("GET", worker.url + probe))[0] == 200
    status, body, _ = await call("POST", worker.url, TOKEN, coffee_jpeg)
    assert status == 200 and json.loads(body)["predictions"][0]["index"] == ESPRESSO


async def test_proxy_requires_it_passes_it_on_and_lookup_never_leaks_it(cluster, coffee_jpeg):
    worker, proxy, _ = cluster
    for method, path in (("POST", "/"), ("GET", "/"), ("GET", "/lookup"), ("GET", "/workers")):
        status, _, _ = await call(method, proxy.url + path, None, coffee_jpeg if method == "POST" else None)
        assert status == 401, (method, path)
    status, body, _ = await call("POST", proxy.url, TOKEN, coffee_jpeg)  # forwarded over ZeroMQ with it
    assert status == 200 and json.loads(body)["predictions"][0]["index"] == ESPRESSO
    for path in ("/", "/lookup", "/workers"):
        status, body, _ = await call("GET", proxy.url + path, TOKEN)
        assert status == 200 and TOKEN not in body
    assert (await call("GET", proxy.url + "/", TOKEN))[1].strip() == worker.url.removeprefix("http://")


async def test_client_library_with_and_without_token(cluster, coffee_jpeg):
    _, proxy, _ = cluster
    async with Client(proxy.url, token=TOKEN) as client:
        for mode in ("p2p", "proxy"):
            assert (await client.classify(coffee_jpeg, mode=mode))["predictions"][0]["index"] == ESPRESSO
    async with Client(proxy.url, retries=0) as client:
        with pytest.raises(ClassifyError) as err:
            await client.classify(coffee_jpeg)
        assert err.value.status == 401


async def test_zeromq_requires_the_token(cluster, consul_agent, coffee_jpeg):
    worker, _, service = cluster
    (entry,) = consul_get(consul_agent, f"/v1/catalog/service/{service}")
    endpoint = f"tcp://{entry['ServiceAddress']}:{entry['ServiceMeta']['zmq_port']}"
    image = preprocess(coffee_jpeg, Preprocessing(), 10**8)[None]
    reply = await roundtrip(endpoint, BatchRequest("a", ["1"], image).encode())
    assert reply["error"]["code"] == "unauthorized" and reply["error"]["status"] == 401
    reply = await roundtrip(endpoint, BatchRequest("b", ["1"], image, token=TOKEN).encode())
    assert reply["results"][0]["predictions"][0]["index"] == ESPRESSO

