"""python -m proxy: the cluster's edge on port 12480 (forward and lookup modes)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from aiohttp import web

from discovery.registration import ConsulAddress
from proxy.app import ProxyConfig, create_app
from proxy.policy import POLICIES, VersionSplit
from worker.auth import ENV_VAR
from worker.request_log import setup_logging


def parse_args(argv: list[str] | None = None) -> ProxyConfig:
    d = ProxyConfig()
    p = argparse.ArgumentParser(prog="python -m proxy", description="Forwarding and lookup proxy.")
    p.add_argument("--host", default=d.host)
    p.add_argument("--port", type=int, default=d.port, help="(default %(default)s)")
    p.add_argument("--consul", default=os.environ.get("CONSUL_HTTP_ADDR", "127.0.0.1:8500"),
                   help="Consul agent host:port (default $CONSUL_HTTP_ADDR or 127.0.0.1:8500)")
    p.add_argument("--consul-token", default=os.environ.get("CONSUL_HTTP_TOKEN"))
    p.add_argument("--service-name", default=d.service_name)
    p.add_argument("--policy", choices=sorted(POLICIES), default=d.policy)
    p.add_argument("--split", default=d.split,
                   help="share traffic between model versions by weight, e.g. 1=90,2=10 (A/B); ?version=N overrides")
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size, help="per-worker micro-batch")
    p.add_argument("--max-batch-delay-ms", type=float, default=d.max_delay_ms)
    p.add_argument("--worker-timeout", type=float, default=d.worker_timeout_s, help="seconds per attempt")
    p.add_argument("--request-timeout", type=float, default=d.request_timeout_s, help="seconds in all (504)")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    p.add_argument("--max-pixels", type=int, default=d.max_pixels)
    p.add_argument("--read-timeout", type=float, default=d.read_timeout_s,
                   help="seconds for the whole request body to arrive, else 408 (default %(default)s)")
    p.add_argument("--max-in-flight", type=int, default=d.max_in_flight, help="beyond: fast 503")
    p.add_argument("--decode-threads", type=int, default=d.decode_threads)
    p.add_argument("--auth-token", default=os.environ.get(ENV_VAR),
                   help=f"require this bearer token and pass it to workers (default ${ENV_VAR})")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--log-format", choices=["text", "json"], default="text", help="json: one JSON object per line")
    a = p.parse_args(argv)
    if a.split:
        try:
            VersionSplit.parse(a.split)
        except ValueError as exc:
            p.error(str(exc))
    setup_logging(a.log_level, a.log_format)
    return ProxyConfig(
        host=a.host, port=a.port, consul=ConsulAddress.parse(a.consul, a.consul_token),
        service_name=a.service_name, policy=a.policy, split=a.split, max_batch_size=a.max_batch_size,
        max_delay_ms=a.max_batch_delay_ms, worker_timeout_s=a.worker_timeout,
        request_timeout_s=a.request_timeout, max_body_bytes=a.max_body_bytes, max_pixels=a.max_pixels,
        read_timeout_s=a.read_timeout,
        max_in_flight=a.max_in_flight, decode_threads=a.decode_threads, auth_token=a.auth_token or None,
    )


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    logging.getLogger(__name__).info("proxy on %s:%d, Consul %s:%d, policy %s", config.host, config.port,
                                     config.consul.host, config.consul.port, config.policy)
    # run_app stops accepting on SIGTERM/SIGINT and waits for in-flight requests.
    web.run_app(create_app(config), host=config.host, port=config.port, print=None,
                access_log=None, shutdown_timeout=config.request_timeout_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
