"""Test and benchmark harness: run real worker and proxy processes (by default on
127.0.0.1), wait for them, signal and stop them. Not part of the product."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from tests.consul_dev import PROJECT_ROOT, DevAgent, free_port


def wait_for(predicate, timeout: float = 15, interval: float = 0.1, what: str = "condition"):
    """Poll until predicate() is truthy; return its value, or raise after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def stop_process(proc: subprocess.Popen, log, timeout: float = 40) -> None:
    """SIGTERM (a worker drains, the proxy finishes its requests), SIGKILL after `timeout`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if log is not subprocess.DEVNULL:
        log.close()


class ReadyLineProcess:
    """A real subprocess that prints a JSON `{"event": "ready", ...}` line on stdout once
    it is ready (the worker, the autoscaler)."""

    def __init__(self, args: list[str], log_path: Path | None = None):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
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

    def wait_ready(self, timeout: float = 90):
        deadline = time.monotonic() + timeout
        while not self._ready_event.wait(0.2):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.proc.args[:4]} exited with {self.proc.returncode} before it was ready")
            if time.monotonic() > deadline:
                raise TimeoutError("not ready in time")
        return self

    @property
    def url(self) -> str:
        return self.ready["url"]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        stop_process(self.proc, self.stderr)


class WorkerProcess(ReadyLineProcess):
    """`python -m worker` as a real subprocess, on a free port, registered in Consul.

    `consul` is the agent's host:port; `host` the interface to bind; `wrapper` a command
    prefix (e.g. `ip netns exec NS` to run it on a simulated host).
    """

    def __init__(self, consul: str, *extra: str, log_path: Path | None = None, host: str = "127.0.0.1",
                 wrapper: tuple[str, ...] = ()):
        super().__init__([*wrapper, sys.executable, "-m", "worker", "--host", host, "--port", "0",
                          "--consul", consul, *extra], log_path)

    @property
    def grpc(self) -> str:
        """host:port of its Open Inference Protocol gRPC server."""
        return self.ready["grpc"]

    @property
    def worker_id(self) -> str:
        return self.ready["worker_id"]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


class AutoscalerProcess(ReadyLineProcess):
    """`python -m autoscaler` as a real subprocess, its /metrics on a free port."""

    def __init__(self, consul: str, *extra: str, log_path: Path | None = None):
        super().__init__([sys.executable, "-m", "autoscaler", "--consul", consul, "--port", "0", *extra], log_path)


# The recipe in docs/operations/faults.md for a gRPC client that rides through a proxy's restarts: a channel
# that waits for its reconnection instead of failing fast, and retries what a restarting
# server cancels or refuses before answering (inference is idempotent). For tritonclient:
# InferenceServerClient(url, channel_args=RIDE_THROUGH_RESTARTS).
RIDE_THROUGH_RESTARTS = [("grpc.service_config", json.dumps({"methodConfig": [{
    "name": [{"service": "inference.GRPCInferenceService"}],
    "waitForReady": True,
    "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.05s", "maxBackoff": "1s", "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"]}}]}))]


class ProxyProcess:
    """`python -m proxy` as a real subprocess, by default on a free loopback port.

    `consul` is the agent's host:port; `host` the interface to bind and `reach_at` the
    address this process polls it at (default: `host`); `wrapper` a command prefix
    (e.g. `ip netns exec NS`). After `handover()` (SIGHUP) the proxy serving the port is
    the successor the first one started: `pid` follows it through the pid file.
    """

    def __init__(self, consul: str, *extra: str, log_path: Path | None = None, host: str = "127.0.0.1",
                 port: int | None = None, reach_at: str | None = None, wrapper: tuple[str, ...] = (),
                 token: str | None = None):
        self.port = port or free_port()
        self.grpc_port = free_port()
        self.token = token
        self.url = f"http://{reach_at or host}:{self.port}"
        self.grpc = f"{reach_at or host}:{self.grpc_port}"
        self.pid_file = Path(tempfile.mkdtemp(prefix="proxy-")) / "proxy.pid"
        args = [*wrapper, sys.executable, "-m", "proxy", "--host", host, "--port", str(self.port),
                "--grpc-port", str(self.grpc_port), "--pid-file", str(self.pid_file),
                "--consul", consul, *extra, *(["--auth-token", token] if token else [])]
        self.stderr = open(log_path, "ab") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(args, cwd=PROJECT_ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                                     stdout=self.stderr, stderr=self.stderr)
        wait_for(self._alive, timeout=30, what="proxy listening")
        self.pid = wait_for(self._written_pid, timeout=30, what="the proxy's pid file")

    def _written_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None

    def _alive(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"proxy exited with {self.proc.returncode}")
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=1):
                return True
        except OSError:
            return False

    def workers(self) -> dict:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        with urllib.request.urlopen(urllib.request.Request(self.url + "/workers", headers=headers), timeout=5) as r:
            return json.loads(r.read())

    def wait_live(self, n: int, timeout: float = 10) -> "ProxyProcess":
        """Wait until the proxy routes to `n` live workers."""
        wait_for(lambda: self.workers()["live"] == n, timeout=timeout, what=f"{n} live workers in the proxy")
        return self

    def handover(self, timeout: float = 60) -> int:
        """SIGHUP: a successor takes the socket over, this one drains and exits. Returns
        the old process's exit status once it is gone."""
        old = self.pid
        os.kill(old, signal.SIGHUP)
        self.pid = wait_for(lambda: (pid := self._written_pid()) != old and pid, timeout=timeout,
                            what="the successor's pid")
        if old == self.proc.pid:
            return self.proc.wait(timeout)
        wait_for(lambda: not _running(old), timeout=timeout, what=f"proxy {old} to exit")
        return 0

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        if self.pid == self.proc.pid:
            self.proc.wait()

    def stop(self) -> None:
        if self.pid == self.proc.pid:
            stop_process(self.proc, self.stderr)
            return
        if self.proc.poll() is None:
            self.proc.wait(60)
        if _running(self.pid):  # a successor: not our child, so no wait(); poll /proc
            os.kill(self.pid, signal.SIGTERM)
            try:
                wait_for(lambda: not _running(self.pid), timeout=40, what="the proxy to stop")
            except TimeoutError:
                os.kill(self.pid, signal.SIGKILL)
        if self.stderr is not subprocess.DEVNULL:
            self.stderr.close()


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def child_pids(pid: int) -> list[int]:
    """The processes `pid` started, from any of its threads (/proc/PID/task/TID/children):
    a worker's fp16 model hosts, started from its loader thread."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def client_cli(proxy_url: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m client --proxy URL ARGS...` as a user runs it."""
    return subprocess.run([sys.executable, "-m", "client", "--proxy", proxy_url, *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)


def serve_model(model_dir: Path) -> tuple[str, ...]:
    """Worker flags that serve just the model in `model_dir` (REPOSITORY/NAME)."""
    return "--model-repository", str(model_dir.parent), "--models", model_dir.name


@contextlib.contextmanager
def on_cpus(cpus: set[int] | None):
    """Processes started inside run on `cpus` (a child inherits its parent's CPU affinity,
    and a worker sizes its threads by it); None: where this process runs."""
    ours = os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, ours)


@contextlib.contextmanager
def worker_and_proxy(consul: str, out: Path, worker_args: tuple[str, ...] = (), proxy_args: tuple[str, ...] = (),
                     name: str = "bench", worker_cpus: set[int] | None = None):
    """A ready worker (the default model, started on `worker_cpus` when given) and a proxy
    routing to it; both stopped after."""
    model_dir = PROJECT_ROOT / "models" / "efficientnet_lite0"
    with on_cpus(worker_cpus):
        worker = WorkerProcess(consul, *serve_model(model_dir), *worker_args, log_path=out / f"worker-{name}.log")
    try:
        worker.wait_ready()
        proxy = ProxyProcess(consul, *proxy_args, log_path=out / f"proxy-{name}.log")
        try:
            proxy.wait_live(1)
            yield worker, proxy
        finally:
            proxy.stop()
    finally:
        worker.stop()


@contextlib.contextmanager
def local_cluster(out: Path, name: str, worker_args: tuple[str, ...] = (), proxy_args: tuple[str, ...] = (),
                  worker_cpus: set[int] | None = None):
    """A dev Consul agent (its log in `out`), then worker_and_proxy on it: what the
    benchmarks run against; everything stopped after."""
    agent = DevAgent(log_path=out / f"consul-{name}.log").start()
    try:
        with worker_and_proxy(agent.address, out, worker_args, proxy_args, name, worker_cpus) as pair:
            yield pair
    finally:
        agent.stop()
