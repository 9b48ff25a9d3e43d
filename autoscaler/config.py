"""The autoscaler's settings: one dataclass, its fields named like the flags that fill
them (autoscaler/__main__.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from autoscaler.policy import ScalePolicy
from discovery.registration import ConsulAddress


@dataclass(frozen=True)
class AutoscalerConfig:
    consul: ConsulAddress = field(default_factory=ConsulAddress)
    service_name: str = "classifier"
    model: str = "efficientnet_lite0"  # the model this autoscaler scales (one autoscaler per model)
    policy: ScalePolicy = field(default_factory=ScalePolicy)
    interval: float = 1.0  # seconds between looks
    actuator: str = "local"  # local, compose or command
    worker_command: str = "python -m worker --host 127.0.0.1 --port 0"  # local: how to start one
    compose: str = "docker compose"  # compose: the command that runs docker-compose.yml
    scale_command: str = ""  # command: e.g. "kubectl scale deploy/worker --replicas={desired}"
    host: str = "127.0.0.1"
    port: int = 12490  # its own /metrics and /decisions; 0: any free port
    auth_token: str | None = None  # to read workers' /metrics when they want a token
    log_dir: str = ""  # local: where started workers' logs go
    log_level: str = "INFO"
    log_format: str = "text"
