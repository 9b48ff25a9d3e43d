"""deploy/kubernetes, checked offline (no Kubernetes here): every resource against the
Kubernetes JSON schemas kubernetes-validate bundles (strict: unknown fields fail), every
command line through the real argument parsers, probes against real routes, and the
drain budget: terminationGracePeriodSeconds above the worker's drain timeout. Validated,
not run."""

from __future__ import annotations

import kubernetes_validate
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

DEPLOY = PROJECT_ROOT / "deploy" / "kubernetes"
KUBERNETES = "1.30.0"


def documents() -> list[dict]:
    kustomization = YAML(typ="safe").load((DEPLOY / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in YAML(typ="safe").load_all((DEPLOY / name).read_text()) if d]
    return docs


def by_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in documents() if d["kind"] == kind}


def container(name: str) -> dict:
    (c,) = by_kind("Deployment")[name]["spec"]["template"]["spec"]["containers"]
    return c


@pytest.mark.parametrize("doc", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_resource_matches_the_kubernetes_schema(doc):
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_every_manifest_file_is_in_the_kustomization():
    kustomization = YAML(typ="safe").load((DEPLOY / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}


def parsed(name: str, parse, pod_ip: str, monkeypatch):
    """The container's command line, with its environment (a pod's IP for status.podIP),
    through the role's real parser, as `image-cluster ROLE` parses it."""
    c = container(name)
    assert c["command"] == ["image-cluster", name]
    for env in c.get("env", []):
        field = env.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        monkeypatch.setenv(env["name"], env["value"] if "value" in env else {"status.podIP": pod_ip}[field])
    return parse(c["args"])


def test_commands_parse_with_the_real_flags(monkeypatch):
    config = parsed("worker", worker_args, "10.1.2.3", monkeypatch)
    assert config.advertise == "10.1.2.3"  # each pod advertises its own IP
    assert (config.port, config.zmq_port, config.grpc_port, config.consul.host) == (8601, 8602, 8603, "consul")
    p = parsed("proxy", proxy_args, "10.1.2.4", monkeypatch)
    assert (p.port, p.grpc_port, p.consul.host, p.advertise) == (12480, 12481, "consul", "10.1.2.4")
    ports = {port["port"] for port in by_kind("Service")["proxy"]["spec"]["ports"]}
    assert ports == {12480, 12481}


def test_probes_hit_real_routes_and_the_drain_fits_the_grace_period(monkeypatch):
    worker_routes = {r.resource.canonical for r in worker_app(WorkerState(WorkerConfig(), "w")).router.routes()}
    proxy_routes = {r.resource.canonical for r in proxy_app(ProxyConfig()).router.routes()}
    for name, routes in (("worker", worker_routes), ("proxy", proxy_routes)):
        c = container(name)
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" in routes
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" in routes
    worker = by_kind("Deployment")["worker"]["spec"]["template"]["spec"]
    drain = parsed("worker", worker_args, "10.1.2.3", monkeypatch).drain_timeout
    assert worker["terminationGracePeriodSeconds"] > drain
    assert worker["securityContext"]["runAsUser"] == 10001  # the image's non-root user


def test_the_workers_have_an_autoscaler():
    (hpa,) = by_kind("HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"}
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60
