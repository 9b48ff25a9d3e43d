"""python -m worker: serve a model over HTTP and register with Consul."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from discovery.registration import ConsulAddress
from worker.auth import ENV_VAR
from worker.batcher import BatchConfig
from worker.config import WorkerConfig
from worker.request_log import setup_logging


def parse_args(argv: list[str] | None = None) -> WorkerConfig:
    d = WorkerConfig()
    b = BatchConfig()
    p = argparse.ArgumentParser(prog="python -m worker", description="Image classification worker.")
    p.add_argument("--model-dir", type=Path, default=d.model_dir, help="MODEL/<version>/ layout (default %(default)s)")
    p.add_argument("--backend", choices=["tflite", "savedmodel", "noop"], default=d.backend,
                   help="tflite (no TensorFlow import, fastest on CPU), savedmodel, or noop (skips "
                        "inference: benchmarks only) (default %(default)s)")
    p.add_argument("--host", default=d.host, help="interface to bind (default %(default)s)")
    p.add_argument("--port", type=int, default=d.port, help="HTTP port, 0 for any free one (default %(default)s)")
    p.add_argument("--zmq-port", type=int, default=d.zmq_port, help="ZeroMQ port for proxies, 0 for any")
    p.add_argument("--advertise", default=None, help="address registered in Consul (default: the Consul agent's)")
    p.add_argument(
        "--consul",
        default=os.environ.get("CONSUL_HTTP_ADDR", "127.0.0.1:8500"),
        help="Consul agent host:port (default $CONSUL_HTTP_ADDR or 127.0.0.1:8500)",
    )
    p.add_argument("--consul-token", default=os.environ.get("CONSUL_HTTP_TOKEN"), help="ACL token ($CONSUL_HTTP_TOKEN)")
    p.add_argument("--service-name", default=d.service_name, help="Consul service name (default %(default)s)")
    p.add_argument("--max-batch-size", type=int, default=b.max_batch_size)
    p.add_argument("--max-batch-delay-ms", type=float, default=b.max_delay_ms)
    p.add_argument("--max-queue", type=int, default=b.max_queue, help="queued images before 503s")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    p.add_argument("--max-pixels", type=int, default=d.max_pixels)
    p.add_argument("--read-timeout", type=float, default=d.read_timeout_s,
                   help="seconds for the whole request body to arrive, else 408 (default %(default)s)")
    p.add_argument("--decode-threads", type=int, default=d.decode_threads)
    p.add_argument("--intra-op-threads", type=int, default=d.intra_op_threads,
                   help="TensorFlow intra-op threads, or the TFLite interpreter's; 0 = default (TFLite: all cores)")
    p.add_argument("--inter-op-threads", type=int, default=d.inter_op_threads, help="TensorFlow, 0 = default")
    p.add_argument("--drain-timeout", type=float, default=d.drain_timeout_s, help="seconds (default %(default)s)")
    p.add_argument("--heartbeat-ttl", type=float, default=d.heartbeat_ttl_s, help="Consul TTL check, seconds")
    p.add_argument("--version-poll", type=float, default=d.version_poll_s,
                   help="seconds between looks for a newer model version (default %(default)s)")
    p.add_argument("--auth-token", default=os.environ.get(ENV_VAR),
                   help=f"require this bearer token (default ${ENV_VAR}; prefer the variable, ps shows flags)")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--log-format", choices=["text", "json"], default="text", help="json: one JSON object per line")
    a = p.parse_args(argv)
    setup_logging(a.log_level, a.log_format)
    return WorkerConfig(
        model_dir=a.model_dir,
        backend=a.backend,
        host=a.host,
        port=a.port,
        zmq_port=a.zmq_port,
        advertise=a.advertise,
        consul=ConsulAddress.parse(a.consul, a.consul_token),
        service_name=a.service_name,
        batch=BatchConfig(a.max_batch_size, a.max_batch_delay_ms, a.max_queue),
        max_body_bytes=a.max_body_bytes,
        max_pixels=a.max_pixels,
        read_timeout_s=a.read_timeout,
        decode_threads=a.decode_threads,
        intra_op_threads=a.intra_op_threads,
        inter_op_threads=a.inter_op_threads,
        drain_timeout_s=a.drain_timeout,
        heartbeat_ttl_s=a.heartbeat_ttl,
        auth_token=a.auth_token or None,
        version_poll_s=a.version_poll,
    )


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    from worker.server import serve  # imports TensorFlow lazily, after --help

    return asyncio.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
