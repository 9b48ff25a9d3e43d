"""How many requests per second the proxy's forward path sustains when the model costs
nothing: a worker with `--backend noop`, the proxy in front, and `wrk` (a C load
generator, Debian package `wrk`) posting a small photo at concurrency 32. Beside it, in
the same run, what bounds it: the proxy answering /healthz (HTTP alone), and the noop
worker's own HTTP front (its decode, no proxy). Each row also gives what a request cost
the two server processes, from /proc: CPU (core-ms), minor page faults and voluntary
context switches. Those move less with this shared machine's speed than req/s does.

    .venv/bin/python scripts/bench/proxy_rate.py [--duration 10] [--connections 32]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from report import noop_table  # noqa: E402  (beside this file)
from tests.processes import local_cluster  # noqa: E402

BOUNDARY = "wrkboundary7MA4YWxkTrZu0gW"

POST_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "{content_type}"
local f = io.open("{body}", "rb")
wrk.body = f:read("*all")
f:close()
"""


V2_PATH = "/v2/models/efficientnet_lite0/infer"  # the default model's Open Inference Protocol route


def v2_body(datatype: str, shape: list[int], data: list, parameters: dict | None = None) -> bytes:
    """An Open Inference Protocol request (JSON) with one input tensor, `image`."""
    body = {"inputs": [{"name": "image", "datatype": datatype, "shape": shape, "data": data}]}
    return json.dumps({**body, "parameters": parameters} if parameters else body).encode()


def v2_base64_body(photo: bytes, parameters: dict | None = None) -> bytes:
    """The photo as one BYTES element, base64 in JSON: the v2 form any JSON client can send."""
    return v2_body("BYTES", [1], [base64.b64encode(photo).decode()], parameters)


def multipart_body(photo: bytes) -> bytes:
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"data\"; filename=\"p.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()
    return head + photo + f"\r\n--{BOUNDARY}--\r\n".encode()


def wrk_scratch(out: Path) -> Path:
    """Exit when wrk is missing; make `out`; a fresh directory for request bodies and scripts."""
    if not shutil.which("wrk"):
        sys.exit("needs wrk (apt-get install wrk)")
    out.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp())


def to_ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()
    return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def wrk(url: str, connections: int, duration: float, script: Path | None) -> dict:
    args = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{duration:g}s", "--latency", url]
    if script:
        args[1:1] = ["-s", str(script)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=duration + 60).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|90|99)(?:\.0+)?%\s+(\S+)\s*$", out, re.M))
    if len(lat) < 3:
        raise RuntimeError(f"could not read wrk's latency distribution:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"per_second": rate, "requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "p50_ms": to_ms(lat["50"]), "p90_ms": to_ms(lat["90"]),
            "p99_ms": to_ms(lat["99"]), "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errors.group(1) if errors else ""}


def process_cost(pids: list[int]) -> dict:
    """CPU seconds, minor page faults and voluntary context switches of these processes so far."""
    cost = {"cpu_s": 0.0, "faults": 0, "switches": 0}
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cost["faults"] += int(fields[7])
        cost["cpu_s"] += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                status = (task / "status").read_text()
                cost["switches"] += int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M).group(1))
    return cost


def measured_wrk(url: str, connections: int, duration: float, script: Path | None, pids: list[int]) -> dict:
    """wrk's figures, and what each request cost the server processes `pids`."""
    before = process_cost(pids)
    row = wrk(url, connections, duration, script)
    after = process_cost(pids)
    requests = max(row["requests"], 1)  # the window also holds wrk's start and stop: a little idle time
    row["cpu_ms_per_request"] = round((after["cpu_s"] - before["cpu_s"]) * 1000 / requests, 3)
    row["faults_per_request"] = round((after["faults"] - before["faults"]) / requests, 2)
    row["switches_per_request"] = round((after["switches"] - before["switches"]) / requests, 2)
    return row


def small_photo(side: int) -> bytes:
    """coffee resized to side x side, as a JPEG (quality 90): the no-op benchmarks' image."""
    buf = io.BytesIO()
    Image.open(ROOT / ".cache" / "photos" / "coffee.jpg").resize((side, side)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def measure(duration: float, connections: int, side: int, out: Path) -> list[dict]:
    """Start Consul, a noop worker and the proxy; wrk each case; stop everything."""
    photo = small_photo(side)
    tmp = Path(tempfile.mkdtemp())
    (tmp / "body").write_bytes(multipart_body(photo))
    (tmp / "post.lua").write_text(POST_LUA.format(content_type=f"multipart/form-data; boundary={BOUNDARY}",
                                                  body=tmp / "body"))
    print(f"no-op model: coffee resized to {side}x{side}, {len(photo)} bytes; wrk -c "
          f"{connections}, {duration:g} s per row", flush=True)

    rows = []
    try:
        with local_cluster(out, "noop", ("--backend", "noop")) as (worker, proxy):
            cases = [
                ("proxy GET /healthz (HTTP only)", proxy.url + "/healthz", None),
                ("noop worker, POST direct", worker.url + "/", tmp / "post.lua"),
                ("proxy forward to noop worker", proxy.url + "/", tmp / "post.lua"),
            ]
            for name, url, script in cases:
                wrk(url, connections, 2, script)  # warm-up
                row = {"case": name, "connections": connections,
                       **measured_wrk(url, connections, duration, script, [worker.proc.pid, proxy.proc.pid])}
                rows.append(row)
                print(f"  {name:32s} {row['per_second']:8.1f} req/s  p50 {row['p50_ms']:6.2f} ms  "
                      f"p99 {row['p99_ms']:6.2f} ms  {row['cpu_ms_per_request']:.2f} core-ms/req  "
                      f"non-2xx {row['non_2xx']}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--side", type=int, default=224, help="the photo's side (coffee, resized)")
    p.add_argument("--out", type=Path, default=ROOT / "run" / "bench")
    args = p.parse_args()
    if not shutil.which("wrk"):
        sys.exit("needs wrk (apt-get install wrk)")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = measure(args.duration, args.connections, args.side, args.out)
    (args.out / "proxy_rate.json").write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    print("\n" + noop_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
