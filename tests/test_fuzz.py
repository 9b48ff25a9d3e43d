"""Bounded fuzzing (hypothesis) of what parses untrusted bytes: image decoding, the
ZeroMQ wire format, the standard protocols' JSON requests, and the HTTP upload reader
(with its multipart refusals spelled out). Each may refuse its input, but only in its own
documented way (ImageError, ProtocolError, ApiError, a 4xx JSON answer), never crash otherwise.
Example counts are fixed, so the run is bounded in CI."""

from __future__ import annotations

import asyncio
import io
import json

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from edge import tfserving, v2_rest
from edge.errors import ApiError, json_errors
from edge.imaging import ImageError, preprocess
from edge.inference import ModelInfo
from edge.preprocessing import Preprocessing
from edge.upload import UPLOADS, UploadBudget, read_image
from tests.conftest import until
from worker.protocol import BatchRequest, ProtocolError

PREP = Preprocessing()
# Fixed example counts and derandomized: bounded and reproducible in CI.
FUZZ = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def seed_images() -> list[bytes]:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    out = []
    for fmt in ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF"):
        buf = io.BytesIO()
        img.save(buf, fmt)
        out.append(buf.getvalue())
    return out


SEEDS = seed_images()


@st.composite
def mutated_image(draw) -> bytes:
    """A valid small image with a few bytes flipped, cut short, or spliced."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@pytest.mark.unit
@FUZZ
@given(st.one_of(mutated_image(), st.binary(max_size=512)))
def test_decoding_fails_only_with_image_error(data):
    try:
        out = preprocess(data, PREP, 10_000_000)
    except ImageError as exc:
        assert exc.status in (400, 413) and exc.code
        return
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8


headers = st.dictionaries(
    st.sampled_from(["batch", "ids", "dtype", "shape", "model", "version", "k", "junk"]),
    st.one_of(st.none(), st.integers(-5, 10**6), st.text(max_size=8), st.lists(st.integers(-2, 300), max_size=5),
              st.lists(st.text(max_size=3), max_size=4)),
)


@FUZZ
@given(st.one_of(
    st.lists(st.binary(max_size=64), max_size=4),
    st.tuples(headers.map(lambda h: json.dumps(h).encode()), st.binary(max_size=2048)).map(list),
))
@pytest.mark.unit
def test_protocol_decoding_fails_only_with_protocol_error(frames):
    try:
        req = BatchRequest.decode(frames)
    except ProtocolError:
        return
    assert req.images.dtype == np.uint8 and req.images.ndim == 4 and len(req.ids) == req.images.shape[0]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-300, 2**65) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=40)
v2_inputs = st.fixed_dictionaries({  # mostly the model's one input, so the data itself gets read
    "name": st.sampled_from(["image", "image", "x"]), "datatype": st.sampled_from(["UINT8", "UINT8", "BYTES", 3]),
    "shape": st.one_of(st.sampled_from([[1, 2, 2, 3], [1, 12], [0, 2, 2, 3]]), json_values),
    "data": st.one_of(json_values, st.lists(st.integers(-2, 300), min_size=12, max_size=12),
                      st.lists(st.lists(st.integers(0, 255), min_size=1, max_size=6), min_size=2, max_size=4))})
v2_headers = st.fixed_dictionaries({"inputs": st.one_of(st.lists(v2_inputs, min_size=1, max_size=1), json_values)},
                                   optional={"parameters": json_values, "outputs": json_values})
TINY = ModelInfo("m", ("1",), "tflite", (2, 2, 3), 10)  # 12 numbers an image


@pytest.mark.unit
@FUZZ
@given(st.one_of(v2_headers, json_values))
@example({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 2, 2, 3], "data": list(range(12))}]})
@example({"instances": [[[[0, 1, 2], [3, 4, 5]], [[6, 7, 8], [9, 10, 11]]]]})
@example({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 12], "data": [[1, 2], [3]]}]})  # ragged
def test_standard_protocol_json_fails_only_with_a_4xx(value):
    """Any JSON as a v2 request or a TF Serving body: a request, or an ApiError 4xx."""
    parsers = [lambda: tfserving.parse_body(json.dumps(value).encode(), TINY)]
    if isinstance(value, dict):  # v2's split_body refuses anything else before parse_request
        parsers.append(lambda: v2_rest.parse_request(value, memoryview(b""), TINY, 10**6))
    for parse in parsers:
        try:
            request, _ = parse()
        except ApiError as exc:
            assert 400 <= exc.status < 500 and exc.message
        else:
            assert len(request) > 0


async def serve_uploads(limit: int, budget: int):
    """A real aiohttp server whose only route reads an upload with read_image (a body of at
    most `limit` bytes, `budget` bytes of them at once); and a client session."""

    async def handler(request: web.Request) -> web.Response:
        data = await read_image(request, limit=limit, timeout_s=5)
        return web.json_response({"bytes": len(data)})

    app = web.Application(middlewares=[json_errors])
    app[UPLOADS] = UploadBudget(budget)
    app.router.add_post("/", handler)
    server = TestServer(app)
    await server.start_server()
    async with aiohttp.ClientSession(skip_auto_headers=["Content-Type"]) as session:
        yield server, session
    await server.close()


@pytest.fixture
async def upload_server():
    async for served in serve_uploads(4096, 1 << 20):
        yield served


@pytest.fixture
async def budget_server():
    async for served in serve_uploads(1 << 20, (1 << 20) - 100_000):
        yield served


@pytest.mark.loopback
async def test_uploads_being_read_at_once_are_bounded_in_bytes(budget_server):
    """A body that is still arriving holds its declared length of the budget (here 1 MiB
    less 100 kB); one that does not fit beside it is refused 503 at once; a chunked body is
    counted as it grows; everything is given back once read."""
    server, session = budget_server
    budget = server.app[UPLOADS]
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(f"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: {1 << 19}\r\n"
                 f"\r\n".encode() + b"x" * 1000)  # half the budget, declared; a trickle sent
    await writer.drain()
    await until(lambda: budget.used == 1 << 19)
    async with session.post(server.make_url("/"), data=b"y" * (1 << 19), headers={"Content-Type": "image/jpeg"}) as r:
        assert r.status == 503 and r.headers["Retry-After"] and (await r.json())["error"]["code"] == "overloaded"

    async def chunks(size: int):
        for _ in range(size // 1000):
            yield b"z" * 1000

    async with session.post(server.make_url("/"), data=chunks(100_000), headers={"Content-Type": "image/jpeg"}) as r:
        assert r.status == 200 and (await r.json())["bytes"] == 100_000  # chunked, and it fits
    async with session.post(server.make_url("/"), data=chunks(600_000), headers={"Content-Type": "image/jpeg"}) as r:
        assert r.status == 503  # chunked: refused once it outgrew the room left
    writer.write(b"x" * ((1 << 19) - 1000))
    await writer.drain()
    assert b" 200 " in await reader.readline()
    writer.close()
    await until(lambda: budget.used == 0)


@st.composite
def multipart_bodies(draw) -> tuple[bytes, str]:
    boundary = draw(st.sampled_from(["b0undary", "x", "--", "long" * 10]))
    parts = []
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(["data", "image", "file", "other", "", 'da"ta']))
        content = draw(st.binary(max_size=64))
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
                     + content + b"\r\n")
    body = b"".join(parts) + (f"--{boundary}--\r\n".encode() if draw(st.booleans()) else b"")
    if draw(st.booleans()):  # corrupt it
        body = body[: draw(st.integers(0, len(body)))] + draw(st.binary(max_size=16))
    declared = draw(st.sampled_from([f"multipart/form-data; boundary={boundary}", "multipart/form-data",
                                     "image/jpeg", "text/plain", "application/octet-stream"]))
    return body, declared


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=multipart_bodies())
# Found by this test: a part header cut short raised aiohttp's InvalidHeader, a 500.
@pytest.mark.loopback
@example(case=(b"--b0undary\r\nC", "multipart/form-data; boundary=b0undary"))
async def test_upload_reader_answers_200_or_4xx(upload_server, case):
    server, session = upload_server
    body, content_type = case
    async with session.post(server.make_url("/"), data=body, headers={"Content-Type": content_type}) as r:
        answer = await r.json(content_type=None)
    assert r.status == 200 or 400 <= r.status < 500, (r.status, answer)
    if r.status == 200:
        assert answer["bytes"] <= 4096
    else:
        assert answer["error"]["code"]


def form(*parts: tuple[str, bytes], close: bool = True, boundary: str = "b0undary") -> bytes:
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + data + b"\r\n"
                    for name, data in parts)
    return body + (f"--{boundary}--\r\n".encode() if close else b"")


MULTIPART = "multipart/form-data; boundary=b0undary"


@pytest.mark.loopback
@pytest.mark.parametrize("body, content_type, status, expected", [
    (form(("note", b"hi"), ("image", b"x" * 10), ("data", b"y")), MULTIPART, 200, 10),  # the first image field
    (form(("data", b"")), 'multipart/form-data; boundary="b0undary"', 200, 0),  # empty: the decoder's to refuse
    (form(("data", b"x" * 10)), "multipart/form-data", 400, "bad_multipart"),  # no boundary
    (form(("data", b"x" * 10))[:-20], MULTIPART, 400, "bad_multipart"),  # cut inside the image part
    (form(("note", b"hi")), MULTIPART, 400, "missing_image_field"),
    (form(("note", b"n" * 4000), ("data", b"x" * 200)), MULTIPART, 413, "payload_too_large"),
])
async def test_upload_reader_answers_each_multipart_case_in_its_own_way(upload_server, body, content_type, status,
                                                                        expected):
    server, session = upload_server
    async with session.post(server.make_url("/"), data=body, headers={"Content-Type": content_type}) as r:
        answer = await r.json(content_type=None)
    assert r.status == status, answer
    assert answer["bytes"] == expected if status == 200 else answer["error"]["code"] == expected
