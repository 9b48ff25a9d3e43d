"""docker-compose.yml and the Dockerfile, checked statically (no Docker engine here):
the compose file against the Compose spec, and every command's flags against the real
argument parsers, so a renamed flag breaks this test rather than a deployment."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import tomllib

import pytest
from ruamel.yaml import YAML

from proxy.__main__ import parse_args as proxy_args
from proxy.app import create_app as proxy_app
from proxy.config import ProxyConfig
from tests.consul_dev import PROJECT_ROOT
from worker.__main__ import parse_args as worker_args
from worker.config import WorkerConfig
from worker.http_api import create_app as worker_app
from worker.service import WorkerState

pytestmark = pytest.mark.unit

COMPOSE = PROJECT_ROOT / "docker-compose.yml"
DOCKERFILE = PROJECT_ROOT / "Dockerfile"


@pytest.fixture(scope="module")
def compose() -> dict:
    return YAML(typ="safe").load(COMPOSE.read_text())


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    return [tuple(line.strip().split(None, 1)) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def dockerfile_env() -> dict[str, str]:
    """The runtime stage's ENV (after the last FROM): what every container starts with."""
    last = max(i for i, (op, _) in enumerate(dockerfile_instructions()) if op == "FROM")
    env = {}
    for op, args in dockerfile_instructions()[last:]:
        if op == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(args))
    return env


def pyproject() -> dict:
    return tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())


def test_compose_file_matches_the_compose_spec():
    exe = shutil.which("check-jsonschema", path=str(PROJECT_ROOT / ".venv" / "bin")) or shutil.which("check-jsonschema")
    assert exe, "check-jsonschema is a test dependency"
    out = subprocess.run([exe, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_topology(compose):
    services = compose["services"]
    assert set(services) == {"consul", "proxy", "proxy-b", "worker"}
    assert services["consul"]["image"].startswith("hashicorp/consul:")
    assert "-dev" in services["consul"]["command"]
    assert services["proxy"]["ports"][0] == "12480:12480"
    worker = services["worker"]
    # Scalable: no fixed name, no host port to collide between replicas.
    assert "container_name" not in worker and "ports" not in worker
    assert worker["depends_on"]["consul"]["condition"] == "service_healthy"


def service_args(compose, name: str, address: str, monkeypatch) -> list[str]:
    """A service's `sh -c 'exec image-cluster ROLE ...'` as argv after the role, its
    environment set as the container would have it (the image's ENV, then the service's)."""
    for key, value in [*dockerfile_env().items(), *compose["services"][name].get("environment", {}).items()]:
        monkeypatch.setenv(key, str(value))
    command = compose["services"][name]["command"]
    assert command[:2] == ["sh", "-c"]
    argv = shlex.split(command[2].replace('"$$(hostname -i | cut -d\' \' -f1)"', address))
    assert argv[:2] == ["exec", "image-cluster"]
    return argv[3:]


def test_commands_use_real_flags(compose, monkeypatch):
    config = worker_args(service_args(compose, "worker", "172.18.0.5", monkeypatch))
    assert config.advertise == "172.18.0.5"  # each replica advertises its own address
    assert (config.host, config.port, config.zmq_port, config.grpc_port) == ("0.0.0.0", 8601, 8602, 8603)
    assert (config.consul.host, config.consul.port) == ("consul", 8500)
    assert config.model_repository.as_posix() == "/app/models"  # the image's ENV

    for name, published in (("proxy", ["12480:12480", "12481:12481"]), ("proxy-b", ["12482:12480", "12483:12481"])):
        p = proxy_args(service_args(compose, name, "172.18.0.7", monkeypatch))
        assert (p.port, p.grpc_port, p.consul.host, p.advertise) == (12480, 12481, "consul", "172.18.0.7")
        assert compose["services"][name]["ports"] == published

    argv = json.loads(dict(dockerfile_instructions())["CMD"])
    assert argv[:2] == ["image-cluster", "worker"]
    assert worker_args(argv[2:]).model_repository.as_posix() == "/app/models"
    assert worker_args(argv[2:]).grpc_port == 8603


def test_dockerfile_runs_as_non_root_and_copies_what_exists():
    instructions = dockerfile_instructions()
    users = [args for op, args in instructions if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    runs = " ".join(args for op, args in instructions if op == "RUN")
    assert "image-cluster models build --models-dir /models" in runs  # the model is built in
    for op, args in instructions:
        if op == "COPY" and not args.startswith("--from="):
            *sources, _dest = args.split()
            for src in sources:
                assert (PROJECT_ROOT / src).exists(), src
    copied = {args.split()[0] for op, args in instructions if op == "COPY"}
    packages = set(pyproject()["tool"]["setuptools"]["packages"]["find"]["include"])
    assert {p.rstrip("*") for p in packages} <= copied, packages - copied
    ignored = (PROJECT_ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".cache", "models", "**/*.so"} <= set(ignored)


def test_the_runtime_stage_installs_the_server_extra_and_no_tensorflow():
    """Two stages: TensorFlow only where the model is built; the image that runs
    installs image-cluster[server] from the wheel the first stage built."""
    text = (PROJECT_ROOT / "Dockerfile").read_text()
    build, runtime = text.split("\nFROM ")[1:]  # the stages, in order
    assert build.startswith("python:3.11-slim-bookworm AS build") and "[tensorflow]" in build
    assert runtime.startswith("python:3.11-slim-bookworm\n")
    assert '[server]"' in runtime and "tensorflow" not in runtime.lower() and "gcc" not in runtime
    assert "COPY --from=build /serving /app/models" in runtime


def test_compose_healthchecks_hit_real_routes(compose):
    proxy_routes = {r.resource.canonical for r in proxy_app(ProxyConfig()).router.routes()}
    worker_state = WorkerState(config=WorkerConfig(), worker_id="w")
    worker_routes = {r.resource.canonical for r in worker_app(worker_state).router.routes()}
    proxy_check = compose["services"]["proxy"]["healthcheck"]["test"]
    worker_check = compose["services"]["worker"]["healthcheck"]["test"]
    assert proxy_check == "curl -fsS http://127.0.0.1:12480/healthz" and "/healthz" in proxy_routes
    assert worker_check == "curl -fsS http://127.0.0.1:8601/readyz" and "/readyz" in worker_routes
