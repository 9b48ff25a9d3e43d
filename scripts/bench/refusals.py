"""How fast an overloaded tier says no: 256 connections (wrk, a C load generator) posting a
photo at a worker whose queue holds 2 images, and at a proxy that admits 4 requests at a
time in front of it. Refusals are 503 + Retry-After; the accepted requests still complete
(counted from the server's own metrics). Latency percentiles are wrk's, over every answer.
`--v2` posts the photo as an Open Inference Protocol request instead (JSON, BYTES in
base64), to the v2 infer route.

    .venv/bin/python scripts/bench/refusals.py [--duration 8] [--connections 256] [--v2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from proxy_rate import BOUNDARY, V2_PATH, multipart_body, to_ms, v2_base64_body, wrk_scratch  # noqa: E402

from tests.consul_dev import free_port  # noqa: E402
from tests.processes import local_cluster  # noqa: E402

V2_ROUTE = "/v2/models/{model}/infer"  # the metrics' route label

# Each request carries its send time in X-Request-ID (a token the servers echo); the
# response callback records (status, microseconds). done() prints them after wrk's report.
TIMED_LUA = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct {{ long tv_sec; long tv_nsec; }} bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_us()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000000 + math.floor(tonumber(ts.tv_nsec) / 1000)
end
local f = io.open("{body}", "rb")
local body = f:read("*all")
f:close()
local sent, threads = 0, {{}}
answers = {{}}  -- a global: done() reads it from each thread with thread:get
function setup(thread) table.insert(threads, thread) end
function request()
  sent = sent + 1
  return wrk.format("POST", nil, {{["Host"] = wrk.headers["Host"],
    ["Content-Type"] = "{content_type}",
    ["X-Request-ID"] = string.format("t%d-%d", now_us(), sent)}}, body)
end
function response(status, headers, _)
  local t = tonumber((headers["X-Request-ID"] or ""):match("^t(%d+)-"))
  if t then table.insert(answers, status * 100000000 + (now_us() - t)) end
end
function done()
  for _, thread in ipairs(threads) do
    for _, a in ipairs(thread:get("answers")) do io.write("answer ", a, "\\n") end
  end
end
"""


def timed_wrk(url: str, connections: int, duration: float, script: Path) -> dict:
    """wrk's own figures, plus p50/p99 per status from each answer's own timing."""
    args = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{duration:g}s", "--latency", "-s", str(script), url]
    out = subprocess.run(args, capture_output=True, text=True, timeout=duration + 60).stdout
    by_status: dict[int, list[float]] = {}
    for value in re.findall(r"^answer (\d+)$", out, re.M):
        status, micros = divmod(int(value), 100_000_000)
        by_status.setdefault(status, []).append(micros / 1000)
    row = {"per_second": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
           "p99_all_ms": to_ms(dict(re.findall(r"^\s+(99)(?:\.0+)?%\s+(\S+)\s*$", out, re.M))["99"])}
    for status, ms in by_status.items():
        row[status] = {"count": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 1),
                       "p99_ms": round(float(np.percentile(ms, 99)), 1)}
    return row


# The floor: aiohttp alone, refusing everything, echoing the id (argv[1]: the port).
BARE_AIOHTTP = """
import sys
from aiohttp import web
async def refuse(request):
    return web.json_response({"error": {"code": "overloaded", "message": "full"}}, status=503,
                             headers={"Retry-After": "1", "X-Request-ID": request.headers.get("X-Request-ID", "")})
app = web.Application()
app.router.add_post("/", refuse)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=lambda *_: print("ready", flush=True))
"""


@contextlib.contextmanager
def bare_aiohttp(tmp: Path):
    """The floor's server, on a free port, until the block ends."""
    port = free_port()
    (tmp / "bare.py").write_text(BARE_AIOHTTP)
    proc = subprocess.Popen([sys.executable, str(tmp / "bare.py"), str(port)], stdout=subprocess.PIPE, text=True)
    try:
        proc.stdout.readline()  # "ready"
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def answered_ok(url: str, route: str) -> float:
    """POSTs to `route` answered 200, from the server's own /metrics."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "imagecluster_http_requests_total" and s.labels.get("route") == route
               and s.labels.get("method") == "POST" and s.labels.get("status") == "200")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--connections", type=int, default=256)
    p.add_argument("--v2", action="store_true", help="post v2 inference requests (JSON, base64) instead")
    p.add_argument("--out", type=Path, default=ROOT / "run" / "bench")
    a = p.parse_args()
    tmp = wrk_scratch(a.out)
    photo = (ROOT / ".cache" / "photos" / "coffee.jpg").read_bytes()
    if a.v2:
        path, route, content_type = V2_PATH, V2_ROUTE, "application/json"
        body = v2_base64_body(photo)
    else:
        path, route, content_type = "/", "/", f"multipart/form-data; boundary={BOUNDARY}"
        body = multipart_body(photo)
    (tmp / "body").write_bytes(body)
    (tmp / "post.lua").write_text(TIMED_LUA.format(content_type=content_type, body=tmp / "body"))
    rows = []
    try:
        with local_cluster(a.out, "refusals", ("--max-queue", "2", "--max-batch-size", "1"),
                           ("--max-in-flight", "4")) as (worker, proxy):
            for name, url in (("worker (queue 2)", worker.url), ("proxy (4 in flight)", proxy.url)):
                before = answered_ok(url, route)
                row = {"case": name, **timed_wrk(url + path, a.connections, a.duration, tmp / "post.lua")}
                row["accepted_per_second"] = round((answered_ok(url, route) - before) / a.duration, 1)
                rows.append(row)
        with bare_aiohttp(tmp) as url:
            rows.append({"case": "floor: bare aiohttp, 503 at once", "accepted_per_second": 0,
                         **timed_wrk(url + "/", a.connections, a.duration, tmp / "post.lua")})  # any body
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"| {a.connections} connections, wrk | answers/s | refused | refusal p50 ms | refusal p99 ms | "
          "accepted/s | accepted p50 ms | accepted p99 ms | p99 of all (wrk) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        no, ok = r.get(503, {}), r.get(200, {})
        print(f"| {r['case']} | {r['per_second']:.0f} | {no.get('count', 0)} | {no.get('p50_ms')} | "
              f"{no.get('p99_ms')} | {r['accepted_per_second']} | {ok.get('p50_ms')} | {ok.get('p99_ms')} | "
              f"{r['p99_all_ms']:.1f} |")
    (a.out / "refusals.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
