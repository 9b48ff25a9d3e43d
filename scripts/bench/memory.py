"""Where a worker's and a proxy's memory goes: RSS idle and under load, and what holds it.

    .venv/bin/python scripts/bench/memory.py [--seconds 10] [--concurrency 32] [--json out.json]

For each configuration (the default worker; the same with --batch-interpreters 1, no
one-thread lanes) it starts a dev Consul, a worker serving the default model and a proxy
(tests/processes.local_cluster), classifies a photo through the proxy and straight at the
worker, waits 2 s and reads both processes' RSS, with their children's (idle); then posts the photo from
--concurrency loops through the proxy for --seconds, then straight to the worker, and
reads it again (loaded). Each
idle process's mappings (/proc/PID/smaps) are summed by what holds them: the libraries
of each package, the model file, and anonymous memory (the
Python heap, the interpreters' packed weights and arenas). Last, the imports the worker
makes, one at a time in a fresh interpreter, with the RSS each adds.

Run it with the interpreter of the install to measure: the project's .venv has the test
and TensorFlow packages too; a virtualenv with
`pip install '.[server]'` is what the runtime image serves with.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from client.load import run_load  # noqa: E402
from tests.processes import child_pids, local_cluster  # noqa: E402

PHOTO = ROOT / ".cache" / "photos" / "coffee.jpg"
# In the order the worker loads them (worker/server.py and what it imports).
IMPORTS = ["numpy", "aiohttp", "PIL.Image", "cv2", "edge.resize", "zmq", "prometheus_client", "consul.aio", "grpc",
           "tritonclient.grpc.service_pb2_grpc", "ai_edge_litert.interpreter", "worker.server"]
CONFIGS = {"default": (), "no lanes (--batch-interpreters 1)": ("--batch-interpreters", "1")}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def tree_mb(pid: int) -> float:
    """The process's RSS and its children's: a worker on a CPU with native fp16 runs its
    models in child processes (worker/model_host.py)."""
    return rss_mb(pid) + sum(rss_mb(child) for child in child_pids(pid))


def holder(path: str) -> str:
    """What a mapping belongs to: a site-packages package, a model file, or its kind."""
    if not path or path.startswith("["):
        return "anonymous (heap, arenas, packed weights)" if path in ("", "[heap]") else path
    if "site-packages/" in path:
        return path.split("site-packages/")[1].split("/")[0].removesuffix(".libs")
    if path.endswith((".tflite", ".onnx")):
        return "model file"
    return "python" if "python3" in path else "system libraries"


def by_holder(pid: int) -> dict[str, float]:
    sizes: Counter = Counter()
    current = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            fields = line.split()
            current = holder(fields[5] if len(fields) > 5 else "")
        elif line.startswith("Rss:"):
            sizes[current] += int(line.split()[1]) / 1024
    return {name: round(mb, 1) for name, mb in sizes.most_common() if mb >= 1}


async def load(url: str, photo: bytes, concurrency: int, seconds: float) -> dict:
    async with aiohttp.ClientSession() as session:
        async def post():
            form = aiohttp.FormData()
            form.add_field("data", photo, filename="photo.jpg", content_type="image/jpeg")
            async with session.post(url, data=form) as response:
                response.raise_for_status()
                await response.read()

        return (await run_load(post, concurrency=concurrency, duration_s=seconds)).summary()


def measure(name: str, worker_args: tuple, args, out: Path) -> dict:
    photo = PHOTO.read_bytes()
    with local_cluster(out, "memory", worker_args=worker_args) as (worker, proxy):
        for url in (proxy.url, worker.url):
            asyncio.run(load(url, photo, 1, 0.5))
        time.sleep(2)
        pids = {"worker": worker.proc.pid, "proxy": proxy.pid}
        row = {"config": name, "idle_mb": {k: round(tree_mb(p), 1) for k, p in pids.items()},
               "holders": {k: by_holder(p) for k, p in pids.items()}}
        row["load"] = asyncio.run(load(proxy.url, photo, args.concurrency, args.seconds))
        row["load_direct"] = asyncio.run(load(worker.url, photo, args.concurrency, args.seconds))
        row["loaded_mb"] = {k: round(tree_mb(p), 1) for k, p in pids.items()}
    return row


def import_costs() -> list[tuple[str, float]]:
    """RSS each import adds, in one fresh interpreter, in IMPORTS' order."""
    code = ("import importlib, json, sys\n"
            "def rss():\n"
            "    return next(int(l.split()[1]) / 1024 for l in open('/proc/self/status') if l.startswith('VmRSS'))\n"
            "rows, last = [('python', rss())], rss()\n"
            "for name in sys.argv[1:]:\n"
            "    importlib.import_module(name); now = rss(); rows.append((name, now - last)); last = now\n"
            "print(json.dumps(rows))\n")
    done = subprocess.run([sys.executable, "-c", code, *IMPORTS], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    return [(name, round(mb, 1)) for name, mb in json.loads(done.stdout)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--out", type=Path, default=ROOT / "run" / "bench")
    p.add_argument("--json", type=Path, help="write the figures here too")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [measure(name, extra, args, args.out) for name, extra in CONFIGS.items()]
    for row in rows:
        print(f"\n{row['config']}: idle worker {row['idle_mb']['worker']} MB, proxy {row['idle_mb']['proxy']} MB; "
              f"at c={args.concurrency} ({row['load']['per_second']} img/s through the proxy, "
              f"{row['load_direct']['per_second']} straight to the worker): "
              f"worker {row['loaded_mb']['worker']} MB, proxy {row['loaded_mb']['proxy']} MB")
        for role, holders in row["holders"].items():
            print(f"  {role} idle, by holder: " + ", ".join(f"{k} {v}" for k, v in holders.items()))
    costs = import_costs()
    print("\nimports, in the worker's order, RSS each adds (MB): " + ", ".join(f"{n} {mb}" for n, mb in costs))
    if args.json:
        args.json.write_text(json.dumps({"python": sys.executable, "rows": rows, "imports": costs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
