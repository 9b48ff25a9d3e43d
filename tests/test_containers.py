"""docker-compose.yml and the Dockerfile, checked statically (no Docker engine here):
the compose file against the Compose spec, and every command's flags against the real
argument parsers, so a renamed flag breaks this test rather than a deployment."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess

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


def test_commands_use_real_flags(compose):
    worker_cmd = compose["services"]["worker"]["command"]
    assert worker_cmd[:2] == ["sh", "-c"]
    argv = shlex.split(worker_cmd[2].replace('"$$(hostname -i | cut -d\' \' -f1)"', "172.18.0.5"))
    assert argv[:4] == ["exec", "python", "-m", "worker"]
    config = worker_args(argv[4:])
    assert config.advertise == "172.18.0.5"  # each replica advertises its own address
    assert (config.host, config.port, config.zmq_port, config.grpc_port) == ("0.0.0.0", 8601, 8602, 8603)
    assert (config.consul.host, config.consul.port) == ("consul", 8500)

    for name, published in (("proxy", ["12480:12480", "12481:12481"]), ("proxy-b", ["12482:12480", "12483:12481"])):
        proxy_cmd = compose["services"][name]["command"]
        argv = shlex.split(proxy_cmd[2].replace('"$$(hostname -i | cut -d\' \' -f1)"', "172.18.0.7"))
        assert proxy_cmd[:2] == ["sh", "-c"] and argv[:4] == ["exec", "python", "-m", "proxy"]
        p = proxy_args(argv[4:])
        assert (p.port, p.grpc_port, p.consul.host, p.advertise) == (12480, 12481, "consul", "172.18.0.7")
        assert compose["services"][name]["ports"] == published

    argv = json.loads(dict(dockerfile_instructions())["CMD"])
    assert argv[:3] == ["python", "-m", "worker"]
    assert worker_args(argv[3:]).model_repository.as_posix() == "/app/models"
    assert worker_args(argv[3:]).grpc_port == 8603


def test_dockerfile_runs_as_non_root_and_copies_what_exists():
    instructions = dockerfile_instructions()
    users = [args for op, args in instructions if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    runs = " ".join(args for op, args in instructions if op == "RUN")
    assert "model_tools build --models-dir /app/models" in runs  # the model is in the image
    for op, args in instructions:
        if op == "COPY":
            *sources, _dest = args.split()
            for src in sources:
                assert (PROJECT_ROOT / src).exists(), src
    copied = {args.split()[0] for op, args in instructions if op == "COPY"}
    packages = {"edge", "worker", "discovery", "proxy", "client"}  # pyproject's [tool.setuptools.packages.find]
    assert packages <= copied, packages - copied
    ignored = (PROJECT_ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".cache", "models"} <= set(ignored)


def test_compose_healthchecks_hit_real_routes(compose):
    proxy_routes = {r.resource.canonical for r in proxy_app(ProxyConfig()).router.routes()}
    worker_state = WorkerState(config=WorkerConfig(), worker_id="w")
    worker_routes = {r.resource.canonical for r in worker_app(worker_state).router.routes()}
    proxy_check = compose["services"]["proxy"]["healthcheck"]["test"]
    worker_check = compose["services"]["worker"]["healthcheck"]["test"]
    assert proxy_check == "curl -fsS http://127.0.0.1:12480/healthz" and "/healthz" in proxy_routes
    assert worker_check == "curl -fsS http://127.0.0.1:8601/readyz" and "/readyz" in worker_routes
