"""Fixtures: a real Consul dev agent, real worker processes, real photos."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import skimage
from PIL import Image

from discovery.consul_agent import PROJECT_ROOT, DevAgent

MODEL_DIR = PROJECT_ROOT / "models" / "efficientnet_lite0"
SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
# ImageNet class indices the tests check against.
ESPRESSO = 967
DOMESTIC_CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def pytest_sessionstart(session):
    if not (MODEL_DIR / "1" / "saved_model.pb").exists():
        pytest.exit(f"{MODEL_DIR}/1 is missing: run scripts/setup first", returncode=2)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    path = PROJECT_ROOT / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def consul_agent(artifacts_dir):
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


class WorkerProcess:
    """`python -m worker` as a real subprocess, on a free port, registered in Consul."""

    def __init__(self, consul: DevAgent, *extra: str, log_path: Path | None = None):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
        args = [sys.executable, "-m", "worker", "--host", "127.0.0.1", "--port", "0",
                "--consul", consul.address, "--model-dir", str(MODEL_DIR), *extra]
        self.stderr = open(log_path, "ab") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(args, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=self.stderr)
        self.ready: dict | None = None
        self._ready_event = threading.Event()
        threading.Thread(target=self._read_stdout, daemon=True).start()

    def _read_stdout(self):
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "ready":
                self.ready = event
                self._ready_event.set()

    def wait_ready(self, timeout: float = 90) -> "WorkerProcess":
        deadline = time.monotonic() + timeout
        while not self._ready_event.wait(0.2):
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode} before it was ready")
            if time.monotonic() > deadline:
                raise TimeoutError("worker not ready in time")
        return self

    @property
    def url(self) -> str:
        return self.ready["url"]

    @property
    def worker_id(self) -> str:
        return self.ready["worker_id"]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.stderr is not subprocess.DEVNULL:
            self.stderr.close()


class ProxyProcess:
    """`python -m proxy` as a real subprocess on a free port."""

    def __init__(self, consul: DevAgent, *extra: str, log_path: Path | None = None):
        from discovery.consul_agent import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "proxy", "--host", "127.0.0.1", "--port", str(self.port),
                "--consul", consul.address, *extra]
        self.stderr = open(log_path, "ab") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(args, cwd=PROJECT_ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                                     stdout=self.stderr, stderr=self.stderr)
        wait_for(self._alive, timeout=30, what="proxy listening")

    def _alive(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"proxy exited with {self.proc.returncode}")
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=1):
                return True
        except OSError:
            return False

    def workers(self) -> dict:
        with urllib.request.urlopen(self.url + "/workers", timeout=5) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.stderr is not subprocess.DEVNULL:
            self.stderr.close()


@pytest.fixture
def start_proxy(consul_agent, artifacts_dir, request):
    """Factory: start_proxy(*extra_args, consul=agent) -> ProxyProcess; stopped after the test."""
    started: list[ProxyProcess] = []

    def start(*extra: str, consul: DevAgent | None = None) -> ProxyProcess:
        log = artifacts_dir / f"proxy-{request.node.name}-{len(started)}.log"
        p = ProxyProcess(consul or consul_agent, *extra, log_path=log)
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
        w = WorkerProcess(consul or consul_agent, *extra, log_path=log)
        started.append(w)
        return w.wait_ready() if wait else w

    yield start
    for w in started:
        w.stop()


@pytest.fixture(scope="session")
def worker(consul_agent, artifacts_dir):
    """One shared worker for the API tests, with small limits so the 413 cases are cheap."""
    w = WorkerProcess(consul_agent, "--max-body-bytes", str(4 * 1024 * 1024), "--max-pixels", "30000000",
                      log_path=artifacts_dir / "worker-shared.log").wait_ready()
    yield w
    w.stop()


def consul_get(agent: DevAgent, path: str):
    with urllib.request.urlopen(f"http://{agent.address}{path}", timeout=5) as r:
        return json.loads(r.read())


def wait_for(predicate, timeout: float = 15, interval: float = 0.1, what: str = "condition"):
    """Poll until predicate() is truthy; return its value or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
