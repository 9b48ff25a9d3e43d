"""Simulated hosts on one machine: network namespaces on a private bridge.

    with Lab() as lab:
        server = lab.add_host("consul")
        lab.start_consul_server(server)
        worker_host = lab.add_host("w1")
        lab.start_consul_client(worker_host)   # a local agent on 127.0.0.1:8500 in that host

Every host gets its own address in a /24 that the lab picks; the root namespace is .1 on
the bridge, so the test process can reach every host. `close()` (or leaving the `with`)
kills every process the lab started and removes the namespaces, veths and the bridge,
whatever happened. Needs root (CI runs as root).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass

from tests.consul_dev import consul_binary


def can_create_namespaces() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class Host:
    name: str
    netns: str
    ip: str
    veth: str  # the host-side end, inside the namespace
    outer: str  # the bridge-side end, in the root namespace

    @property
    def wrapper(self) -> tuple[str, ...]:
        """Prefix a command with this to run it on the host."""
        return ("ip", "netns", "exec", self.netns)


class Lab:
    def __init__(self):
        self.id = uuid.uuid4().hex[:4]
        self.prefix = f"10.213.{random.randint(10, 250)}"
        self.bridge = f"icb{self.id}"
        self.hosts: dict[str, Host] = {}
        self.processes: list[subprocess.Popen] = []
        self.tmp = tempfile.mkdtemp(prefix=f"netlab-{self.id}-")
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.prefix}.1/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add_host(self, name: str) -> Host:
        n = len(self.hosts) + 2
        outer = f"ic{self.id}b{n}"
        host = Host(name, f"ic{self.id}-{name}", f"{self.prefix}.{n}", f"ic{self.id}h{n}", outer)
        _ip("netns", "add", host.netns)
        self.hosts[name] = host
        _ip("link", "add", outer, "type", "veth", "peer", "name", host.veth)
        _ip("link", "set", host.veth, "netns", host.netns)
        _ip("link", "set", outer, "master", self.bridge, "up")
        _ip("-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", host.veth)
        _ip("-n", host.netns, "link", "set", host.veth, "up")
        _ip("-n", host.netns, "link", "set", "lo", "up")
        return host

    def standard_hosts(self) -> tuple[Host, Host, Host, list[Host]]:
        """(consul, proxy, client, [w1, w2]): a Consul server host, a proxy host and two
        worker hosts with local client agents, and a client host without one."""
        consul = self.add_host("consul")
        self.start_consul_server(consul)
        proxy_host, client = self.add_host("proxy"), self.add_host("client")
        worker_hosts = [self.add_host("w1"), self.add_host("w2")]
        for host in (proxy_host, *worker_hosts):
            self.start_consul_client(host)
        return consul, proxy_host, client, worker_hosts

    def cap(self, host: Host, rate: str) -> None:
        """Limit the host's link to `rate` (e.g. '50mbit') each way, with a token bucket."""
        tbf = ["root", "tbf", "rate", rate, "burst", "64kb", "latency", "50ms"]
        subprocess.run(["tc", "-n", host.netns, "qdisc", "replace", "dev", host.veth, *tbf], check=True)  # upload
        subprocess.run(["tc", "qdisc", "replace", "dev", host.outer, *tbf], check=True)  # download

    def run(self, host: Host, args: list[str], log_name: str | None = None, **kw) -> subprocess.Popen:
        """Start a process on `host`; the lab stops it on close."""
        if log_name:
            log = open(os.path.join(self.tmp, log_name), "ab")
            kw.setdefault("stdout", log)
            kw.setdefault("stderr", subprocess.STDOUT)
        proc = subprocess.Popen([*host.wrapper, *args], **kw)
        self.processes.append(proc)
        return proc

    def exec(self, host: Host, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([*host.wrapper, *args], capture_output=True, text=True, timeout=timeout)

    def start_consul_server(self, host: Host) -> None:
        self.consul_server_process = self.run(
            host, [consul_binary(), "agent", "-dev", "-node", host.name, "-bind", host.ip, "-client",
                   f"127.0.0.1 {host.ip}", "-dns-port", "8600", "-grpc-port", "-1"], log_name=f"consul-{host.name}.log")
        self.wait_http(f"http://{host.ip}:8500/v1/status/leader", lambda body: body.strip() not in (b"", b'""'))
        self.consul_server = host

    def start_consul_client(self, host: Host) -> None:
        """A client agent on `host`, HTTP on its 127.0.0.1:8500, joined to the server."""
        data_dir = os.path.join(self.tmp, f"consul-{host.name}")
        self.run(host, [consul_binary(), "agent", "-node", host.name, "-bind", host.ip, "-client", "127.0.0.1",
                        "-data-dir", data_dir, "-retry-join", self.consul_server.ip, "-dns-port", "8600",
                        "-grpc-port", "-1"], log_name=f"consul-{host.name}.log")
        deadline = time.monotonic() + 30
        server_members = f"http://{self.consul_server.ip}:8500/v1/agent/members"
        while host.name not in self.wait_http(server_members, lambda b: True).decode():
            if time.monotonic() > deadline:
                raise TimeoutError(f"consul client on {host.name} did not join")
            time.sleep(0.2)

    def restart_consul_server(self) -> None:
        """Stop the server agent and start it again (a dev server comes back empty: the
        client agents rejoin and sync their services to it again)."""
        self.consul_server_process.terminate()
        self.consul_server_process.wait(20)
        self.start_consul_server(self.consul_server)

    def link(self, host: Host, up: bool) -> None:
        """Cut (or restore) the host's only network link."""
        _ip("-n", host.netns, "link", "set", host.veth, "up" if up else "down")

    @staticmethod
    def wait_http(url: str, ok, timeout: float = 30) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    body = r.read()
                    if ok(body):
                        return body
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not ready")
            time.sleep(0.2)

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for host in self.hosts.values():
            # Anything still running inside (started by a test, not by the lab) is killed.
            pids = subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True, text=True).stdout
            for pid in pids.split():
                try:
                    os.kill(int(pid), 9)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
