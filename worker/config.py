"""Worker settings: one dataclass, filled from the command line (see worker/__main__.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from discovery.registration import ConsulAddress
from worker.batcher import BatchConfig


@dataclass(frozen=True)
class WorkerConfig:
    model_dir: Path = Path("models/efficientnet_lite0")
    backend: str = "tflite"  # or "savedmodel" (see worker/model.py)
    host: str = "0.0.0.0"
    port: int = 0  # 0: any free port
    zmq_port: int = 0  # the ZeroMQ endpoint for proxies; 0: any free port
    max_zmq_message_bytes: int = 64 * 1024 * 1024
    advertise: str | None = None  # address other hosts reach us at; default: Consul agent's
    consul: ConsulAddress = field(default_factory=ConsulAddress)
    service_name: str = "classifier"
    batch: BatchConfig = field(default_factory=BatchConfig)
    max_body_bytes: int = 20 * 1024 * 1024
    read_timeout_s: float = 30.0  # the whole body must arrive within this (408)
    max_pixels: int = 40_000_000  # ~ a 7700x5200 photo; bigger is refused before decoding
    decode_threads: int = field(default_factory=lambda: os.cpu_count() or 2)
    intra_op_threads: int = 0  # TF intra-op / TFLite interpreter threads; 0: the default
    inter_op_threads: int = 0
    drain_timeout_s: float = 30.0
    heartbeat_ttl_s: float = 5.0
    default_top_k: int = 5
    version_poll_s: float = 2.0  # how often to look for a newer model version directory
    auth_token: str | None = None  # shared secret required on every route but health (worker/auth.py)
