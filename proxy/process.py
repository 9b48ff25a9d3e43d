"""Run the proxy as a subprocess on 127.0.0.1 (tests, benchmarks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from discovery.consul_agent import PROJECT_ROOT, free_port
from worker.process import stop_process, wait_for


class ProxyProcess:
    """`python -m proxy` as a real subprocess, by default on a free loopback port.

    `consul` is the agent's host:port; `host` the interface to bind and `reach_at` the
    address this process polls it at (default: `host`); `wrapper` a command prefix
    (e.g. `ip netns exec NS`).
    """

    def __init__(self, consul: str, *extra: str, log_path: Path | None = None, host: str = "127.0.0.1",
                 port: int | None = None, reach_at: str | None = None, wrapper: tuple[str, ...] = (),
                 token: str | None = None):
        self.port = port or free_port()
        self.token = token
        self.url = f"http://{reach_at or host}:{self.port}"
        args = [*wrapper, sys.executable, "-m", "proxy", "--host", host, "--port", str(self.port),
                "--consul", consul, *extra, *(["--auth-token", token] if token else [])]
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
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        with urllib.request.urlopen(urllib.request.Request(self.url + "/workers", headers=headers), timeout=5) as r:
            return json.loads(r.read())

    def wait_live(self, n: int, timeout: float = 10) -> "ProxyProcess":
        """Wait until the proxy routes to `n` live workers."""
        wait_for(lambda: self.workers()["live"] == n, timeout=timeout, what=f"{n} live workers in the proxy")
        return self

    def stop(self) -> None:
        stop_process(self.proc, self.stderr)
