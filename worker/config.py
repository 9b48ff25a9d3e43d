"""The worker's settings: one dataclass, its fields named like the flags that fill them
(worker/__main__.py); what both tiers share is in `edge` (edge/config.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from discovery.registration import ConsulAddress
from edge.config import EdgeConfig
from edge.preprocessing import DEFAULT_PATH
from worker.batcher import BatchConfig


@dataclass(frozen=True)
class WorkerConfig:
    model_repository: Path = Path("models")  # NAME/VERSION/ for every served model (worker/repository.py)
    models: tuple[str, ...] = ()  # the models to serve; empty: every model in the repository
    backend: str = "auto"  # by the model file present; or tflite, onnx, savedmodel, noop (worker/model.py)
    host: str = "0.0.0.0"
    port: int = 0  # 0: any free port
    zmq_port: int = 0  # the ZeroMQ endpoint for proxies; 0: any free port
    grpc_port: int = 0  # the Open Inference Protocol over gRPC; 0: any free port
    max_zmq_message_bytes: int = 64 * 1024 * 1024
    advertise: str | None = None  # address other hosts reach us at; default: Consul agent's
    consul: ConsulAddress = field(default_factory=ConsulAddress)
    edge: EdgeConfig = field(default_factory=EdgeConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    intra_op_threads: int = 0  # the runtime's threads (TFLite, ONNX Runtime, TF intra-op); 0: every core
    inter_op_threads: int = 0
    # TFLite: this many one-thread interpreters run batches side by side (0: one per core;
    # 1: none, every batch runs on the intra-op interpreter, as a lone image on an idle
    # model always does)
    batch_interpreters: int = 0
    fp32: bool = False  # run every model in fp32, even one whose serving.json allows fp16 (the default model's does)
    drain_timeout: float = 30.0  # seconds to finish accepted work after a signal
    heartbeat_ttl: float = 5.0  # seconds: Consul TTL check
    default_top_k: int = 5
    preprocessing: str = DEFAULT_PATH  # how images become the model's input (edge.imaging.PATHS)
    version_poll: float = 2.0  # seconds between looks for a newer model version directory
