"""The client library against a scripted HTTP server on 127.0.0.1 (aiohttp TestServer):
classify_many's order, bound and failures, without a cluster."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from client.api import ClassifyError, Client

pytestmark = pytest.mark.loopback


class ScriptedServer:
    """Answers a posted image `b"N"` after (10 - N) * 10 ms, so earlier images finish
    later; `b"bad"` gets a 400. Counts the requests in flight at once, and those answered
    (a request whose client went away is cancelled by aiohttp, never answered)."""

    def __init__(self):
        self.in_flight = self.most_in_flight = self.answered = 0
        app = web.Application()
        app.router.add_post("/", self.classify)
        self.server = TestServer(app, host="127.0.0.1")

    async def classify(self, request: web.Request) -> web.Response:
        image = (await request.post())["data"].file.read()
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if image == b"bad":
                return web.json_response({"error": {"code": "bad_image", "message": "not an image"}}, status=400)
            await asyncio.sleep((10 - int(image)) * 0.01)
            self.answered += 1
            return web.json_response({"predictions": [{"label": image.decode()}]})
        finally:
            self.in_flight -= 1


@pytest.fixture
async def server():
    scripted = ScriptedServer()
    await scripted.server.start_server()
    yield scripted
    await scripted.server.close()


async def test_classify_many_answers_in_order_a_bounded_number_at_once(server, tmp_path):
    images = [str(n).encode() for n in range(8)]
    async with Client(str(server.server.make_url("/")).rstrip("/")) as client:
        answers = [(image, result) async for image, result in client.classify_many(images, concurrency=3,
                                                                                    mode="proxy")]
    assert [image for image, _ in answers] == images
    assert [result["predictions"][0]["label"] for _, result in answers] == [str(n) for n in range(8)]
    assert server.most_in_flight == 3


async def test_classify_many_yields_each_failure_and_goes_on(server, tmp_path):
    missing = tmp_path / "missing.jpg"
    async with Client(str(server.server.make_url("/")).rstrip("/"), retries=0) as client:
        answers = [result async for _, result in client.classify_many([b"1", b"bad", missing, b"2"], mode="proxy")]
    assert answers[0]["predictions"][0]["label"] == "1" and answers[3]["predictions"][0]["label"] == "2"
    assert isinstance(answers[1], ClassifyError) and answers[1].status == 400 and answers[1].code == "bad_image"
    assert isinstance(answers[2], FileNotFoundError)


async def test_classify_many_stopped_early_cancels_what_it_started(server):
    async with Client(str(server.server.make_url("/")).rstrip("/")) as client:
        answers = client.classify_many([b"9", b"1", b"1", b"1"], concurrency=4, mode="proxy")
        image, _ = await anext(answers)
        assert image == b"9"
        await answers.aclose()
        await asyncio.sleep(0.3)  # well past the 90 ms the other three take
        assert server.answered == 1  # they were cancelled, not left running behind the caller
    with pytest.raises(ValueError):
        await anext(client.classify_many([b"1"], concurrency=0))
