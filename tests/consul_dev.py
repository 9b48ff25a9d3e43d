"""Test harness: find the Consul binary and run a throw-away dev agent (tests, benchmarks).

The binary is `consul` on PATH, else the one scripts/install-consul unpacked into
.cache/consul/. A dev agent keeps everything in memory: a restart forgets all
registrations (workers re-register on their next heartbeat).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LOCAL_BINARY = PROJECT_ROOT / ".cache/consul/usr/bin/consul"


def consul_binary() -> str:
    found = shutil.which("consul")
    if found:
        return found
    if LOCAL_BINARY.exists():
        return str(LOCAL_BINARY)
    raise FileNotFoundError("no consul binary: run scripts/install-consul")


_HANDED_OUT: set[tuple[str, int]] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now that this process has not handed out before: the kernel
    may offer a just-closed port twice, and two servers given the same one collide (a
    proxy once got its Consul agent's port)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if (host, port) not in _HANDED_OUT:
            _HANDED_OUT.add((host, port))
            return port
    raise RuntimeError(f"no port on {host} that was not handed out already")


class DevAgent:
    """`consul agent -dev` on free ports (HTTP on `http_port`), one server, in memory."""

    def __init__(self, bind: str = "127.0.0.1", http_port: int | None = None, log_path: Path | None = None,
                 acl_master_token: str | None = None, dns: bool = False):
        self.bind = bind
        self.dns_port = free_port(bind) if dns else -1  # -1: no DNS interface
        self.acl_master_token = acl_master_token  # ACLs on, default deny, this token may do anything
        self.http_port = http_port or free_port(bind)
        self._ports = {
            "-serf-lan-port": free_port(bind),
            "-serf-wan-port": free_port(bind),
            "-server-port": free_port(bind),
        }
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"{self.bind}:{self.http_port}"

    def start(self, timeout: float = 30.0) -> "DevAgent":
        args = [consul_binary(), "agent", "-dev", "-bind", self.bind, "-client", self.bind,
                "-http-port", str(self.http_port), "-dns-port", str(self.dns_port), "-grpc-port", "-1",
                "-node", f"dev-{self.http_port}"]
        for flag, port in self._ports.items():
            args += [flag, str(port)]
        if self.acl_master_token:
            args += ["-hcl", 'acl { enabled = true, default_policy = "deny", '
                             f'tokens {{ master = "{self.acl_master_token}" }} }}']
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://{self.address}/v1/status/leader"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"consul exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.read().strip() not in (b"", b'""'):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"consul at {self.address} not ready within {timeout} s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
