"""How fast an overloaded tier says no: 256 connections (wrk, a C load generator) posting a
photo at a worker whose queue holds 2 images, and at a proxy that admits 4 requests at a
time in front of it. Refusals are 503 + Retry-After; the accepted requests still complete
(counted from the server's own metrics). Latency percentiles are wrk's, over every answer.

    .venv/bin/python scripts/bench/refusals.py [--duration 8] [--connections 256]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from proxy_rate import BOUNDARY, LUA, multipart_body, wrk  # noqa: E402

from tests.consul_dev import DevAgent  # noqa: E402
from tests.processes import worker_and_proxy  # noqa: E402


def answered_ok(url: str) -> float:
    """POST / answered 200, from the server's own /metrics."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "imagecluster_http_requests_total" and s.labels.get("route") == "/"
               and s.labels.get("method") == "POST" and s.labels.get("status") == "200")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--connections", type=int, default=256)
    p.add_argument("--out", type=Path, default=ROOT / "run" / "bench")
    a = p.parse_args()
    if not shutil.which("wrk"):
        sys.exit("needs wrk (apt-get install wrk)")
    a.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp())
    (tmp / "body").write_bytes(multipart_body((ROOT / ".cache" / "photos" / "coffee.jpg").read_bytes()))
    (tmp / "post.lua").write_text(LUA.format(boundary=BOUNDARY, body=tmp / "body"))
    agent = DevAgent(log_path=a.out / "consul-refusals.log").start()
    rows = []
    try:
        with worker_and_proxy(agent.address, a.out, ("--max-queue", "2", "--max-batch-size", "1"),
                              ("--max-in-flight", "4"), name="refusals") as (worker, proxy):
            for name, url in (("worker (queue 2)", worker.url), ("proxy (4 in flight)", proxy.url)):
                before = answered_ok(url)
                row = {"case": name, **wrk(url + "/", a.connections, a.duration, tmp / "post.lua")}
                row["accepted_per_second"] = round((answered_ok(url) - before) / a.duration, 1)
                rows.append(row)
    finally:
        agent.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"| {a.connections} connections, wrk | answers/s | p50 ms | p99 ms | refused (503) | accepted/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['per_second']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['non_2xx']} | "
              f"{r['accepted_per_second']} |")
    (a.out / "refusals.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
