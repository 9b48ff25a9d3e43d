"""Play deploy/kubernetes with `podman kube play`, then classify a photo through the proxy,
forwarded and p2p: what `scripts/podman-cluster kube` runs (`... kube down` removes it).

    .venv/bin/python scripts/podman_kube.py up|down

podman plays Deployments (and Pods), not Services or HorizontalPodAutoscalers, and its
4.3 lacks three things a Kubernetes cluster gives; each is adapted in a copy of the
manifest (run/kube/), the rest is played as written:
- no Service DNS: the pods join a network of their own (NETWORK) at fixed addresses, and
  `consul` is a hostAliases entry for the Consul pod's address;
- no `status.podIP` for env: the pod's fixed address is written in as the value;
- one pod a Deployment (replicas 1), and the image is the one podman built locally.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "kubernetes"
OUT = ROOT / "run" / "kube"
NETWORK, SUBNET = "image-cluster-kube", "10.89.71.0/24"
ADDRESSES = {"consul": "10.89.71.10", "worker": "10.89.71.11", "proxy": "10.89.71.12"}  # in start order
IMAGE = "localhost/image-cluster:latest"
PHOTO = ROOT / ".cache" / "photos" / "coffee.jpg"


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check)


def deployments() -> dict[str, dict]:
    yaml = YAML(typ="safe")
    kustomization = yaml.load((DEPLOY / "kustomization.yaml").read_text())
    docs = [d for name in kustomization["resources"] for d in yaml.load_all((DEPLOY / name).read_text()) if d]
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}


def for_podman(name: str, deployment: dict) -> dict:
    """The Deployment as podman 4.3 can play it (the module docstring says what changes)."""
    deployment["spec"]["replicas"] = 1
    pod = deployment["spec"]["template"]["spec"]
    pod["hostAliases"] = [{"ip": ADDRESSES["consul"], "hostnames": ["consul"]}]
    for container in pod["containers"]:
        if container["image"].startswith("image-cluster:"):
            container["image"] = IMAGE
        for env in container.get("env", []):
            if env.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "status.podIP":
                env.pop("valueFrom")
                env["value"] = ADDRESSES[name]
    return deployment


def up() -> None:
    if podman("network", "exists", NETWORK, check=False).returncode != 0:
        podman("network", "create", "--subnet", SUBNET, NETWORK)
    OUT.mkdir(parents=True, exist_ok=True)
    found = deployments()
    for name, address in ADDRESSES.items():
        path = OUT / f"{name}.yaml"
        with path.open("w") as f:
            YAML().dump(for_podman(name, found[name]), f)
        podman("kube", "play", "--replace", "--network", NETWORK, "--ip", address, str(path))
        print(f"  played {name} at {address} ({path.relative_to(ROOT)})")
    proxy = f"http://{ADDRESSES['proxy']}:12480"
    live = wait_live(proxy, timeout=180)
    print(f"{live} worker(s) live in the proxy; classifying {PHOTO.name}:")
    forwarded = classify(proxy + "/")
    worker = urllib.request.urlopen(proxy + "/", timeout=10).read().decode().strip()
    p2p = classify(f"http://{worker}/")
    for how, answer in (("forwarded, POST " + proxy + "/", forwarded), (f"p2p, POST http://{worker}/", p2p)):
        best = answer["predictions"][0]
        print(f"  {how}: {best['label']} {best['score']:.3f} (worker {answer['worker']})")


def wait_live(proxy: str, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(proxy + "/workers", timeout=2) as r:
                live = json.loads(r.read())["live"]
            if live:
                return live
        except OSError:
            pass
        time.sleep(1)
    logs = podman("logs", "--tail", "20", "worker-pod-0-worker", check=False)
    sys.exit(f"no live worker in the proxy after {timeout:.0f} s; the worker's log:\n{logs.stdout}{logs.stderr}")


def classify(url: str) -> dict:
    """The photo posted as the raw body, which every POST route takes beside the form."""
    request = urllib.request.Request(url, data=PHOTO.read_bytes(), headers={"Content-Type": "image/jpeg"})
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.loads(r.read())


def down() -> None:
    for name in reversed(ADDRESSES):
        path = OUT / f"{name}.yaml"
        if path.exists():
            podman("kube", "down", str(path), check=False)
    podman("network", "rm", "-f", NETWORK, check=False)
    print("podman kube: removed")


if __name__ == "__main__":
    {"up": up, "down": down}[sys.argv[1] if len(sys.argv) > 1 else "up"]()
