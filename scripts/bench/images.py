"""Container images side by side: bytes, a worker's cold start to ready, and the idle and
loaded RSS of a worker and a proxy run from each image (podman, host network, a dev
Consul agent on this machine). `scripts/podman-cluster measure` builds the images and
runs this; by hand:

    .venv/bin/python scripts/bench/images.py IMAGE [IMAGE ...] [--seconds 10] [--json out.json]

Each image runs `python -m worker` and `python -m proxy` (every image has those), the
worker serving /app/models. Cold start: from `podman run` to the worker's /readyz
answering 200, so it counts the container's creation too; the worker's own start-up
(spawn to ready, from its log) is printed beside it. RSS is the container's main
process's, read from /proc on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from memory import load, rss_mb  # noqa: E402  (beside this file)

from tests.consul_dev import DevAgent, free_port  # noqa: E402
from tests.processes import wait_for  # noqa: E402

PHOTO = ROOT / ".cache" / "photos" / "coffee.jpg"


def podman(*args: str, check: bool = True) -> str:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check).stdout.strip()


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def run(image: str, name: str, *argv: str) -> int:
    """Start a container on the host network; the host pid of its main process."""
    podman("rm", "-f", name, check=False)
    podman("run", "-d", "--name", name, "--network", "host", image, *argv)
    return int(podman("inspect", "-f", "{{.State.Pid}}", name))


def startup_seconds(container: str, timeout: float = 10) -> float | None:
    """The worker's own spawn-to-ready time, from its ready line (/readyz turns 200 a
    moment before the line is written, so this waits for it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = subprocess.run(["podman", "logs", container], capture_output=True, text=True)
        found = re.search(r'"startup_seconds": ([0-9.]+)', logs.stdout + logs.stderr)
        if found:
            return float(found.group(1))
        time.sleep(0.2)
    return None


def measure(image: str, consul: str, seconds: float) -> dict:
    row = {"image": image, "bytes": int(podman("image", "inspect", "-f", "{{.Size}}", image))}
    http, zmq, grpc, proxy_port = free_port(), free_port(), free_port(), free_port()
    started = time.monotonic()
    worker = run(image, "measure-worker", "python", "-m", "worker", "--model-repository", "/app/models",
                 "--host", "127.0.0.1", "--port", str(http), "--zmq-port", str(zmq), "--grpc-port", str(grpc),
                 "--consul", consul)
    try:
        wait_for(lambda: ready(f"http://127.0.0.1:{http}/readyz"), 120, 0.05, "the worker's /readyz")
        row["cold_start_s"] = round(time.monotonic() - started, 2)
        row["worker_ready_s"] = startup_seconds("measure-worker")
        proxy = run(image, "measure-proxy", "python", "-m", "proxy", "--host", "127.0.0.1", "--port",
                    str(proxy_port), "--grpc-port", str(free_port()), "--consul", consul)
        url = f"http://127.0.0.1:{proxy_port}/"
        wait_for(lambda: ready(url + "readyz"), 60, 0.05, "the proxy's /readyz")
        photo = PHOTO.read_bytes()
        for target in (url, f"http://127.0.0.1:{http}/"):
            asyncio.run(load(target, photo, 1, 0.5))
        time.sleep(2)
        row["idle_mb"] = {"worker": round(rss_mb(worker), 1), "proxy": round(rss_mb(proxy), 1)}
        row["load"] = asyncio.run(load(url, photo, 32, seconds))
        row["loaded_mb"] = {"worker": round(rss_mb(worker), 1), "proxy": round(rss_mb(proxy), 1)}
    finally:
        for name in ("measure-proxy", "measure-worker"):
            podman("rm", "-f", "-t", "5", name, check=False)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("images", nargs="+")
    p.add_argument("--seconds", type=float, default=10.0, help="of load at c=32 through the proxy")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    agent = DevAgent().start()
    try:
        rows = [measure(image, agent.address, args.seconds) for image in args.images]
    finally:
        agent.stop()
    print("\n| image | size MB | cold start s | worker ready s | idle worker / proxy MB | c=32 img/s | "
          "loaded worker / proxy MB |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['image']} | {r['bytes'] / 1e6:,.0f} | {r['cold_start_s']} | {r['worker_ready_s']} | "
              f"{r['idle_mb']['worker']} / {r['idle_mb']['proxy']} | {r['load']['per_second']} | "
              f"{r['loaded_mb']['worker']} / {r['loaded_mb']['proxy']} |")
    if len(rows) > 1:
        print(f"\n{rows[0]['image']} is {rows[0]['bytes'] / rows[1]['bytes']:.2f}x the bytes of {rows[1]['image']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
