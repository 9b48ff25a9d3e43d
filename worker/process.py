"""Run a worker as a subprocess on 127.0.0.1 (tests, benchmarks): start, wait for its
`ready` line, signal, stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from discovery.consul_agent import PROJECT_ROOT


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


class WorkerProcess:
    """`python -m worker` as a real subprocess, on a free port, registered in Consul.

    `consul` is the agent's host:port; `host` the interface to bind; `wrapper` a command
    prefix (e.g. `ip netns exec NS` to run it on a simulated host).
    """

    def __init__(self, consul: str, *extra: str, log_path: Path | None = None, host: str = "127.0.0.1",
                 wrapper: tuple[str, ...] = ()):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
        args = [*wrapper, sys.executable, "-m", "worker", "--host", host, "--port", "0",
                "--consul", consul, *extra]
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
        stop_process(self.proc, self.stderr)
