"""python -m proxy: the cluster's edge on port 12480 (forward and lookup modes)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from discovery.registration import ConsulAddress
from edge.config import add_edge_flags, finish_parser, flag_type, parse_config
from edge.request_log import setup_logging
from proxy.config import ProxyConfig
from proxy.policy import POLICIES, parse_split

# What most deployments set; the rest is tuning (--help shows the two apart).
ESSENTIAL = ["--host", "--port", "--grpc-port", "--consul", "--consul-token", "--service-name", "--advertise",
             "--policy", "--split", "--auth-token", "--default-model", "--log-level", "--log-format"]


def build_parser(prog: str = "python -m proxy") -> argparse.ArgumentParser:
    d = ProxyConfig()
    p = argparse.ArgumentParser(prog=prog, description="Forwarding and lookup proxy.")
    p.add_argument("--host", default=d.host, help="interface to bind")
    p.add_argument("--port", type=int, default=d.port, help="HTTP port: forwarding, lookups, the standard protocols")
    p.add_argument("--grpc-port", type=int, default=d.grpc_port,
                   help="Open Inference Protocol over gRPC (default %(default)s; 0: any free port)")
    ConsulAddress.add_flags(p)
    add_edge_flags(p)
    p.add_argument("--policy", choices=sorted(POLICIES), default=d.policy,
                   help="how a worker is picked for each request and lookup")
    p.add_argument("--split", type=flag_type(parse_split), default={},
                   help="share traffic between model versions by weight, e.g. 1=90,2=10 (A/B); ?version=N overrides")
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size, help="per-worker micro-batch")
    p.add_argument("--max-batch-delay-ms", type=float, default=d.max_batch_delay_ms,
                   help="how long a micro-batch to one worker may wait for more images")
    p.add_argument("--worker-timeout", type=float, default=d.worker_timeout, help="seconds per attempt")
    p.add_argument("--request-timeout", type=float, default=d.request_timeout, help="seconds in all (504)")
    p.add_argument("--max-in-flight", type=int, default=d.max_in_flight, help="beyond: fast 503")
    p.add_argument("--probe-interval", type=float, default=d.probe_interval,
                   help="seconds between readiness probes of an ejected worker")
    p.add_argument("--retire-timeout", type=float, default=d.retire_timeout,
                   help="seconds a departed worker keeps its channel for requests already sent")
    p.add_argument("--consecutive-failures", type=int, default=d.consecutive_failures,
                   help="failures or timeouts in a row that eject a worker")
    p.add_argument("--failure-rate", type=float, default=d.failure_rate,
                   help="share of a worker's answers in a second (10 at least) that, failed, eject it")
    p.add_argument("--stall-timeout", type=float, default=d.stall_timeout,
                   help="seconds a worker may answer nothing while requests wait on it before it is ejected")
    p.add_argument("--max-ejection-percent", type=float, default=d.max_ejection_percent,
                   help="most of the workers ejected at once, in percent (one always may be)")
    p.add_argument("--ejection-time", type=float, default=d.ejection_time,
                   help="seconds an ejected worker waits before its first probe, times its ejections in a minute")
    p.add_argument("--retry-budget", type=float, default=d.retry_budget,
                   help="retries at most this share of the last 10 s's requests (plus --min-retries-per-second)")
    p.add_argument("--min-retries-per-second", type=float, default=d.min_retries_per_second,
                   help="retries allowed a second beyond the budget's share")
    p.add_argument("--slow-start", type=float, default=d.slow_start,
                   help="seconds over which a new or returning worker's share of requests ramps up (0: none)")
    p.add_argument("--load-poll-interval", type=float, default=d.load_poll_interval,
                   help="seconds between reads of each worker's reported load (0: none; replies carry it too)")
    p.add_argument("--watch-wait", type=float, default=d.watch_wait, help="Consul blocking-query wait, seconds")
    p.add_argument("--resync-grace", type=float, default=d.resync_grace,
                   help="seconds to keep known workers after Consul comes back, while they re-register")
    p.add_argument("--drain-idle", type=float, default=d.drain_idle,
                   help="seconds keep-alive connections get to learn of a drain (default %(default)s)")
    p.add_argument("--register", action=argparse.BooleanOptionalAction, default=d.register,
                   help="register in Consul, health-checked on /readyz (default: yes)")
    p.add_argument("--proxy-service-name", default=d.proxy_service_name, help="(default %(default)s)")
    p.add_argument("--advertise", default=None, help="address registered in Consul (default: the bind address)")
    p.add_argument("--listen-fd", type=int, default=d.listen_fd, help=argparse.SUPPRESS)  # handover internals
    p.add_argument("--ready-fd", type=int, default=d.ready_fd, help=argparse.SUPPRESS)
    p.add_argument("--pid-file", default=d.pid_file, help="write the pid here once ready (a handover updates it)")
    return finish_parser(p, ESSENTIAL)


def parse_args(argv: list[str] | None = None, prog: str = "python -m proxy") -> ProxyConfig:
    return parse_config(ProxyConfig, build_parser(prog), argv, consul=ConsulAddress.from_flags)


def main(argv: list[str] | None = None, prog: str = "python -m proxy") -> int:
    config = parse_args(argv, prog)
    setup_logging(config.edge.log_level, config.edge.log_format)
    logging.getLogger(__name__).info("proxy on %s:%d, Consul %s:%d, policy %s", config.host, config.port,
                                     config.consul.host, config.consul.port, config.policy)
    from proxy.server import ProxyServer

    return asyncio.run(ProxyServer(config).run())


if __name__ == "__main__":
    sys.exit(main())
