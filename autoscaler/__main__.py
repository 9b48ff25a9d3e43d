"""python -m autoscaler: start and drain workers as the load moves."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
from pathlib import Path

from autoscaler.actuators import Actuator, CommandHook, ComposeScale, LocalProcesses
from autoscaler.config import AutoscalerConfig
from autoscaler.policy import ScalePolicy
from discovery.registration import ConsulAddress
from edge.auth import ENV_VAR
from edge.config import finish_parser, parse_config
from edge.request_log import setup_logging

# What most deployments set; the rest is tuning (--help shows the two apart).
ESSENTIAL = ["--consul", "--consul-token", "--service-name", "--model", "--min-workers", "--max-workers",
             "--actuator", "--worker-command", "--compose", "--scale-command", "--host", "--port", "--auth-token",
             "--log-level", "--log-format"]


def build_parser(prog: str = "python -m autoscaler") -> argparse.ArgumentParser:
    d, s = AutoscalerConfig(), ScalePolicy()
    p = argparse.ArgumentParser(prog=prog, description=__doc__)
    ConsulAddress.add_flags(p)
    p.add_argument("--service-name", default=d.service_name, help="the workers' Consul service (default %(default)s)")
    p.add_argument("--model", default=d.model, help="the model to scale (default %(default)s)")
    p.add_argument("--min-workers", "--min", type=int, default=s.min_workers, help="never fewer workers")
    p.add_argument("--max-workers", "--max", type=int, default=s.max_workers, help="never more workers")
    p.add_argument("--target-in-flight", type=float, default=s.target_in_flight,
                   help="images in flight per worker to aim for (default %(default)s)")
    p.add_argument("--hysteresis", type=float, default=s.hysteresis,
                   help="headroom a scale-down must leave, a fraction of the target (default %(default)s)")
    p.add_argument("--upscale-delay", type=float, default=s.upscale_delay, help="seconds (default %(default)s)")
    p.add_argument("--downscale-delay", type=float, default=s.downscale_delay, help="seconds (default %(default)s)")
    p.add_argument("--interval", type=float, default=d.interval, help="seconds between looks (default %(default)s)")
    p.add_argument("--actuator", choices=["local", "compose", "command"], default=d.actuator,
                   help="how workers are started and drained: local processes, docker compose, or a command")
    p.add_argument("--worker-command", default=d.worker_command,
                   help="local: the command that starts one worker; --consul and --service-name are added")
    p.add_argument("--compose", default=d.compose, help="compose: the compose command (default %(default)s)")
    p.add_argument("--scale-command", default=d.scale_command,
                   help="command: run with {model} and {desired} filled in, e.g. "
                        "'kubectl scale deploy/worker --replicas={desired}'")
    p.add_argument("--host", default=d.host, help="its own /metrics and /decisions (default %(default)s)")
    p.add_argument("--port", type=int, default=d.port, help="(default %(default)s; 0: any free port)")
    p.add_argument("--auth-token", default=os.environ.get(ENV_VAR) or None,
                   help=f"to read workers' /metrics (default ${ENV_VAR})")
    p.add_argument("--log-dir", default=d.log_dir, help="local: where started workers write their logs")
    p.add_argument("--log-level", default=d.log_level, help="DEBUG, INFO, WARNING or ERROR")
    p.add_argument("--log-format", choices=["text", "json"], default=d.log_format,
                   help="json: one JSON object per line")
    return finish_parser(p, ESSENTIAL)


def parse_args(argv: list[str] | None = None, prog: str = "python -m autoscaler") -> AutoscalerConfig:
    parser = build_parser(prog)
    try:
        return parse_config(AutoscalerConfig, parser, argv, consul=ConsulAddress.from_flags)
    except ValueError as exc:  # the policy's own checks (min <= max, ...)
        parser.error(str(exc))


def actuator_for(config: AutoscalerConfig) -> Actuator:
    if config.actuator == "compose":
        return ComposeScale(config.compose)
    if config.actuator == "command":
        if not config.scale_command:
            sys.exit("--actuator command needs --scale-command")
        return CommandHook(config.scale_command, config.model)
    c = config.consul
    argv = [*shlex.split(config.worker_command), "--consul", f"{c.host}:{c.port}",
            "--service-name", config.service_name]
    if argv[0] == "python":
        argv[0] = sys.executable  # the same interpreter and virtualenv
    return LocalProcesses(argv, Path(config.log_dir) if config.log_dir else None)


def main(argv: list[str] | None = None, prog: str = "python -m autoscaler") -> int:
    config = parse_args(argv, prog)
    setup_logging(config.log_level, config.log_format)
    from autoscaler.service import Autoscaler

    return asyncio.run(Autoscaler(config, actuator_for(config)).run())


if __name__ == "__main__":
    sys.exit(main())
