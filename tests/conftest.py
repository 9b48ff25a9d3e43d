"""Fixtures: a real Consul dev agent, real worker processes, real photos."""

from __future__ import annotations

import asyncio
import io
import json
import urllib.request
from pathlib import Path

import aiohttp
import pytest
import skimage
import zmq
import zmq.asyncio
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.consul_dev import PROJECT_ROOT, DevAgent
from tests.processes import ProxyProcess, WorkerProcess, serve_model
from worker.protocol import BatchReply

MODEL_DIR = PROJECT_ROOT / "models" / "efficientnet_lite0"
SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
# ImageNet class indices the tests check against.
ESPRESSO = 967
DOMESTIC_CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


LAYERS = ("unit", "loopback", "system")


def pytest_collection_modifyitems(config, items):
    """Every test belongs to exactly one layer (pyproject.toml describes them), so
    `scripts/test -m unit` runs exactly the in-process tests."""
    for item in items:
        layers = [m.name for m in item.iter_markers() if m.name in LAYERS]
        if len(layers) != 1:
            raise pytest.UsageError(f"{item.nodeid}: mark it with exactly one of {LAYERS}, has {layers}")


@pytest.fixture(scope="session")
def built_model() -> Path:
    """The default model's directory; fails (not skips) the tests that need it when it is missing."""
    if not (MODEL_DIR / "1" / "model.tflite").exists():
        pytest.fail(f"{MODEL_DIR}/1 is missing: run scripts/setup first", pytrace=False)
    return MODEL_DIR


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    path = PROJECT_ROOT / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def consul_agent(artifacts_dir, built_model):
    agent = DevAgent(log_path=artifacts_dir / "consul-session.log").start()
    yield agent
    agent.stop()


def jpeg_bytes(path: Path, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="session")
def coffee_jpeg() -> bytes:
    """scikit-image's `coffee` photo (CC0) as a 400x600 JPEG: top-1 espresso."""
    return jpeg_bytes(SKIMAGE_DATA / "coffee.png")


@pytest.fixture(scope="session")
def chelsea_png() -> bytes:
    """scikit-image's `chelsea` the cat (CC0), PNG as shipped."""
    return (SKIMAGE_DATA / "chelsea.png").read_bytes()


@pytest.fixture
def start_proxy(consul_agent, artifacts_dir, request):
    """Factory: start_proxy(*extra_args, consul=agent) -> ProxyProcess; stopped after the test."""
    started: list[ProxyProcess] = []

    def start(*extra: str, consul: DevAgent | None = None, token: str | None = None) -> ProxyProcess:
        log = artifacts_dir / f"proxy-{request.node.name}-{len(started)}.log"
        p = ProxyProcess((consul or consul_agent).address, *extra, log_path=log, token=token)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


@pytest.fixture
def start_worker(consul_agent, artifacts_dir, request):
    """Factory: start_worker(*extra_args, consul=agent) -> ready WorkerProcess; stopped after the test."""
    started: list[WorkerProcess] = []

    def start(*extra: str, consul: DevAgent | None = None, wait: bool = True) -> WorkerProcess:
        log = artifacts_dir / f"worker-{request.node.name}-{len(started)}.log"
        w = WorkerProcess((consul or consul_agent).address, *serve_model(MODEL_DIR), *extra, log_path=log)
        started.append(w)
        return w.wait_ready() if wait else w

    yield start
    for w in started:
        w.stop()


@pytest.fixture(scope="session")
def worker(consul_agent, artifacts_dir):
    """One shared worker for the API tests, with small limits so the 413 cases are cheap."""
    w = WorkerProcess(consul_agent.address, *serve_model(MODEL_DIR), "--max-body-bytes", str(4 * 1024 * 1024),
                      "--max-pixels", "30000000",
                      log_path=artifacts_dir / "worker-shared.log").wait_ready()
    yield w
    w.stop()


def scrape(url: str) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} for every sample of a server's GET /metrics,
    parsed by prometheus-client's own parser."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def until(predicate, timeout: float = 5.0):
    """Wait, polling, until predicate() is true; TimeoutError after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def worker_stats(url: str, until=lambda stats: True, timeout: float = 5.0) -> dict:
    """A worker's GET /stats, polled until `until(stats)` holds; the last one read after `timeout`."""
    async with aiohttp.ClientSession() as session:
        for _ in range(max(1, int(timeout / 0.05))):
            async with session.get(url + "/stats") as r:
                stats = await r.json()
            if until(stats):
                break
            await asyncio.sleep(0.05)
    return stats


def consul_get(agent: DevAgent, path: str):
    with urllib.request.urlopen(f"http://{agent.address}{path}", timeout=5) as r:
        return json.loads(r.read())


async def stalled_upload(url: str, body: bytes, path: str = "/") -> bytes:
    """Send the headers and half the body, then stop; return what the server answers."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body[: len(body) // 2])
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(65536), timeout=20)
    finally:
        writer.close()


async def roundtrip(endpoint: str, frames: list, timeout_ms: int = 20000) -> dict:
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        await sock.send_multipart(frames)
        assert await sock.poll(timeout_ms), "no reply"
        frames = await sock.recv_multipart()
        BatchReply.decode(frames)  # a well-formed reply, or ProtocolError
        return json.loads(frames[0])  # as sent, so tests see exactly the wire fields
    finally:
        sock.close()
        ctx.term()


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="session")
def tiny_keras():
    """A 3-class Keras image model on 16x16 RGB input, seeded."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
