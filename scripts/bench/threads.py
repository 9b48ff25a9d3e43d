"""Interpreter threads against decode threads, and one-thread interpreters running
batches side by side (--batch-interpreters), measured: one worker per setting, direct POSTs of a
real photo at concurrency 1 and 32, side by side in one run.

    .venv/bin/python scripts/bench/threads.py [--duration 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from suite import measure, poster  # noqa: E402

from tests.consul_dev import DevAgent  # noqa: E402
from tests.processes import WorkerProcess, serve_model  # noqa: E402

MODEL_DIR = ROOT / "models" / "efficientnet_lite0"
PHOTO = ROOT / ".cache" / "photos" / "coffee.jpg"
# (interpreter threads, decode threads, one-thread interpreters running batches side by side)
SETTINGS = [(1, 1, 1), (1, 2, 1), (2, 1, 1), (2, 2, 1), (2, 2, 2)]


async def run(agent: DevAgent, duration: float, out: Path) -> list[dict]:
    rows = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        post = poster(s, PHOTO.read_bytes())
        for interp, decode, spread in SETTINGS:
            w = WorkerProcess(agent.address, *serve_model(MODEL_DIR), "--intra-op-threads", str(interp),
                              "--decode-threads", str(decode), "--batch-interpreters", str(spread),
                              log_path=out / "worker-threads.log").wait_ready()
            try:
                name = f"interpreter {interp}, decode {decode}, one-thread interpreters {spread}"
                rows += await measure(name, lambda: post(w.url), [1, 32], duration, lambda: [w.proc.pid])
            finally:
                w.stop()
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--out", type=Path, default=ROOT / "run" / "bench")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    agent = DevAgent(log_path=a.out / "consul-threads.log").start()
    try:
        rows = asyncio.run(run(agent, a.duration, a.out))
    finally:
        agent.stop()
    print("| threads | concurrency | img/s | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['config']} | {r['concurrency']} | {r['per_second']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
    (a.out / "threads.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
