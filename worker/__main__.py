"""python -m worker: serve a model over HTTP and ZeroMQ and register with Consul."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
import time
from pathlib import Path

from discovery.registration import ConsulAddress
from edge.config import add_edge_flags, byte_size, finish_parser, parse_config
from edge.preprocessing import PATHS
from edge.request_log import setup_logging
from worker.batcher import BatchConfig
from worker.config import WorkerConfig
from worker.model import BACKENDS


def model_list(text: str) -> tuple[str, ...]:
    return tuple(filter(None, (name.strip() for name in text.split(","))))


# What most deployments set; the rest is tuning (--help shows the two apart).
ESSENTIAL = ["--model-repository", "--models", "--host", "--port", "--zmq-port", "--grpc-port", "--advertise",
             "--consul", "--consul-token", "--service-name", "--default-model", "--auth-token", "--log-level",
             "--log-format"]


def build_parser(prog: str = "python -m worker") -> argparse.ArgumentParser:
    d, b = WorkerConfig(), BatchConfig()
    p = argparse.ArgumentParser(prog=prog, description="Image classification worker.")
    p.add_argument("--model-repository", type=Path, default=d.model_repository,
                   help="NAME/VERSION/ for each model (default %(default)s)")
    p.add_argument("--models", type=model_list, default=d.models,
                   help="serve these models, e.g. efficientnet_lite0,digits (default: every model in the repository)")
    p.add_argument("--backend", choices=BACKENDS, default=d.backend,
                   help="auto: by the model file in each version directory (model.tflite, model.onnx, "
                        "saved_model.pb); noop skips inference (benchmarks only) (default %(default)s)")
    p.add_argument("--host", default=d.host, help="interface to bind (default %(default)s)")
    p.add_argument("--port", type=int, default=d.port, help="HTTP port, 0 for any free one (default %(default)s)")
    p.add_argument("--zmq-port", type=int, default=d.zmq_port, help="ZeroMQ port for proxies, 0 for any")
    p.add_argument("--grpc-port", type=int, default=d.grpc_port,
                   help="Open Inference Protocol over gRPC, 0 for any free port (published in Consul Meta)")
    p.add_argument("--max-zmq-message-bytes", type=byte_size, default=d.max_zmq_message_bytes,
                   help="a proxy that sends a larger message is disconnected (a size: bytes or 64MiB)")
    p.add_argument("--advertise", default=None, help="address registered in Consul (default: the Consul agent's)")
    ConsulAddress.add_flags(p)
    add_edge_flags(p)
    p.add_argument("--max-batch-size", type=int, default=b.max_batch_size,
                   help="images per batch (default %(default)s; at most 4 on one-thread TFLite interpreters)")
    p.add_argument("--max-batch-delay-ms", type=float, default=b.max_batch_delay_ms,
                   help="how long a batch that is not full may wait for more images")
    p.add_argument("--max-queue", type=int, default=b.max_queue, help="images admitted (being decoded or queued) before 503s")
    p.add_argument("--max-queue-wait-ms", type=float, default=b.max_queue_wait_ms,
                   help="refuse (503) when the queue's predicted wait is past this, in ms (0: no bound; "
                        "a request's own deadline refuses it too)")
    p.add_argument("--intra-op-threads", type=int, default=d.intra_op_threads,
                   help="the runtime's threads: TFLite, ONNX Runtime, TensorFlow intra-op; 0 = every core")
    p.add_argument("--inter-op-threads", type=int, default=d.inter_op_threads, help="TensorFlow, 0 = default")
    p.add_argument("--batch-interpreters", type=int, default=d.batch_interpreters,
                   help="TFLite: one-thread interpreters running batches side by side; 0 = one per core, 1 = none")
    p.add_argument("--fp32", action="store_true",
                   help="run every model in fp32, even one whose serving.json allows fp16 on a CPU that has it "
                        "(the default model's does: docs/performance/studies.md, \"Half precision\")")
    p.add_argument("--drain-timeout", type=float, default=d.drain_timeout, help="seconds (default %(default)s)")
    p.add_argument("--heartbeat-ttl", type=float, default=d.heartbeat_ttl, help="Consul TTL check, seconds")
    p.add_argument("--preprocessing", choices=PATHS, default=d.preprocessing,
                   help="exact: the model's reference preprocessing (TensorFlow's eval path); the others are "
                        "faster approximations measured by scripts/bench/fidelity.py (default %(default)s)")
    p.add_argument("--default-top-k", type=int, default=d.default_top_k, help="predictions when ?k= is absent")
    p.add_argument("--version-poll", type=float, default=d.version_poll,
                   help="seconds between looks for a newer model version (default %(default)s)")
    return finish_parser(p, ESSENTIAL)


def parse_args(argv: list[str] | None = None, prog: str = "python -m worker") -> WorkerConfig:
    return parse_config(WorkerConfig, build_parser(prog), argv, consul=ConsulAddress.from_flags)


def exit_past_stuck_threads(status: int, grace_s: float = 2.0) -> int:
    """`status`, once the threads still running have ended; if one has not after
    `grace_s`, exit now with it. A thread stuck in an in-process runtime (an fp32
    interpreter that never returns from a batch) would otherwise hold the exit for ever:
    Python joins its thread pools' threads at exit. Its images were already answered
    (Batcher.close)."""
    deadline = time.monotonic() + grace_s
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()
             and not t.daemon]
    if stuck:
        logging.getLogger("worker").error("exiting past %d thread(s) still computing after %.0f s: %s",
                                          len(stuck), grace_s, ", ".join(stuck))
        logging.shutdown()
        sys.stdout.flush()
        os._exit(status)
    return status


def main(argv: list[str] | None = None, prog: str = "python -m worker") -> int:
    config = parse_args(argv, prog)
    setup_logging(config.edge.log_level, config.edge.log_format)
    from worker.server import WorkerServer  # imports the model backend lazily, after --help

    return exit_past_stuck_threads(asyncio.run(WorkerServer(config).run()))


if __name__ == "__main__":
    sys.exit(main())
