"""The proxy's settings: one dataclass, its fields named like the flags that fill them
(proxy/__main__.py); what both tiers share is in `edge` (edge/config.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from discovery.registration import ConsulAddress
from edge.config import EdgeConfig


@dataclass(frozen=True)
class ProxyConfig:
    host: str = "0.0.0.0"
    port: int = 12480
    grpc_port: int = 12481  # the Open Inference Protocol over gRPC; 0: any free port
    consul: ConsulAddress = field(default_factory=ConsulAddress)
    edge: EdgeConfig = field(default_factory=EdgeConfig)
    policy: str = "peak-ewma"  # measured best with a slow worker (docs/performance/studies.md)
    split: dict[str, int] = field(default_factory=dict)  # version -> weight, e.g. {"1": 90, "2": 10}
    max_batch_size: int = 32  # per-worker micro-batch
    max_batch_delay_ms: float = 2.0
    worker_timeout: float = 10.0  # seconds per attempt; then eject and retry elsewhere
    request_timeout: float = 30.0  # seconds in all (504)
    max_in_flight: int = 1024  # accepted forward requests; beyond, a fast 503
    drain_idle: float = 2.0  # seconds keep-alive connections get to learn of a drain (Connection: close)
    register: bool = True  # register in Consul as `proxy_service_name`, health-checked on /readyz
    proxy_service_name: str = "classifier-proxy"
    advertise: str | None = None  # address registered in Consul (default: the bind address, else the agent's)
    listen_fd: int = -1  # serve on this inherited listening socket (a handover); -1: open host:port
    ready_fd: int = -1  # write the ready line here too (the proxy being replaced waits on it)
    pid_file: str = ""  # write our pid here once ready (scripts/cluster; a handover updates it)
    probe_interval: float = 0.5  # seconds between /readyz probes of an ejected worker
    retire_timeout: float = 30.0  # seconds a departed worker's channel waits for its outstanding requests
    watch_wait: float = 30.0  # seconds a Consul blocking query waits for a change
    resync_grace: float = 5.0  # seconds to keep instances after Consul comes back (edge: dev agents forget)
    # Balancing and outlier detection (proxy/pool.py, proxy/balance.py)
    consecutive_failures: int = 1  # failures or timeouts in a row that eject a worker
    failure_rate: float = 0.5  # share of a second's answers (10 at least) failed that ejects a worker
    stall_timeout: float = 1.0  # seconds without any answer, requests outstanding, that eject a worker
    max_ejection_percent: float = 50.0  # of the workers ejected at once (at least one may be)
    ejection_time: float = 0.5  # seconds before the first probe, times the ejections within a minute
    retry_budget: float = 0.2  # retries at most this share of the last 10 s's requests...
    min_retries_per_second: float = 10.0  # ...plus this many a second
    slow_start: float = 10.0  # seconds over which a new or returning worker's share ramps up; 0: none
    load_poll_interval: float = 0.25  # seconds between polls of each worker's reported load; 0: none
