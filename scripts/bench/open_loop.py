"""Open-loop load: requests at a set arrival rate (Poisson, or evenly spaced), each one's
latency counted from its scheduled time, so queueing shows as latency instead of slowing
the sender (closed-loop clients hide it: coordinated omission). Goodput counts the
answers that were 200 within the latency bound; throughput every 200.

Modes: `native` (a multipart POST to the URL, as curl -F does), `v2` (the Open Inference
Protocol over REST, the photo as base64 BYTES), `p2p` (two steps, as the README's curl:
GET / on the proxy for a worker, then the POST straight to it).

    .venv/bin/python scripts/bench/open_loop.py --url http://127.0.0.1:12480 --rate 50 [--mode p2p]
    .venv/bin/python scripts/bench/open_loop.py --url URL --sweep 20 40 60 80 100 [--bound-ms 200]
    .venv/bin/python scripts/bench/open_loop.py --local --sweep 20 40 60 80 --check-wrk

--sweep prints one row a rate and the highest rate whose p99 stayed within --bound-ms
with at least 99% answered 200 (MLPerf's "server" figure). --local starts Consul, one
worker and a proxy on loopback and measures through the proxy. --check-wrk first
measures at a low rate against wrk at one connection on the same URL (there each request
waits for the last, so both see the same service time when nothing queues).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from proxy_rate import BOUNDARY, POST_LUA, V2_PATH, multipart_body, v2_base64_body, wrk  # noqa: E402

from client.load import run_open_loop  # noqa: E402
from tests.processes import local_cluster  # noqa: E402

PHOTO = ROOT / ".cache" / "photos" / "coffee.jpg"
HELD = 0.99  # a rate is held when at least this share is answered 200 and p99 is within the bound


class Refused(Exception):
    """An answer other than 200: its status is the error's kind."""


def sender(session: aiohttp.ClientSession, url: str, mode: str, photo: bytes, headers: dict | None = None):
    """An async send() for run_open_loop: one request of `mode`, raising unless answered 200."""
    form = multipart_body(photo)
    form_headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}", **(headers or {})}
    v2 = v2_base64_body(photo)

    async def post(target: str, body: bytes, hdrs: dict) -> None:
        async with session.post(target, data=body, headers=hdrs) as r:
            await r.read()
            if r.status != 200:
                raise Refused(r.status)

    async def send() -> None:
        if mode == "native":
            await post(url, form, form_headers)
        elif mode == "v2":
            await post(url.rstrip("/") + V2_PATH, v2, headers or {})
        else:
            async with session.get(url) as r:
                address = (await r.text()).strip()
                if r.status != 200:
                    raise Refused(r.status)
            await post(f"http://{address}", form, form_headers)
    return send


async def sweep(send, rates: list[float], duration_s: float, bound_ms: float, arrivals: str) -> list[dict]:
    rows = []
    for rate in rates:
        row = (await run_open_loop(send, rate=rate, duration_s=duration_s, arrivals=arrivals, slo_ms=bound_ms)).summary()
        rows.append(row)
        print(f"  {rate:7.1f}/s  ok {row['ok']:5d}  errors {row['errors']:4d}  goodput {row['goodput']:7.1f}/s  "
              f"p50 {row['p50_ms']:7.1f}  p90 {row['p90_ms']:7.1f}  p99 {row['p99_ms']:7.1f} ms  "
              f"sender late by up to {row['max_lateness_ms']:.1f} ms", flush=True)
    return rows


def held_rate(rows: list[dict], bound_ms: float) -> float:
    """The highest rate whose p99 stayed within `bound_ms` with HELD of it answered 200."""
    held = [r["rate"] for r in rows if r["p99_ms"] <= bound_ms and r["ok"] >= HELD * r["scheduled"]]
    return max(held, default=0.0)


async def measure(url: str, args) -> dict:
    photo = args.photo.read_bytes()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        send = sender(session, url, args.mode, photo)
        await send()  # one first: a refusal ends the run here
        rows = await sweep(send, args.sweep or [args.rate], args.duration, args.bound_ms, args.arrivals)
    return {"url": url, "mode": args.mode, "arrivals": args.arrivals, "bound_ms": args.bound_ms, "rows": rows,
            "held_rate": held_rate(rows, args.bound_ms)}


def check_against_wrk(url: str, args) -> dict:
    """Our generator at a low rate beside wrk at one connection, same URL and body."""
    scratch = Path(args.out) / "open-loop-wrk"
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "body").write_bytes(multipart_body(args.photo.read_bytes()))
    (scratch / "post.lua").write_text(POST_LUA.format(content_type=f"multipart/form-data; boundary={BOUNDARY}",
                                                      body=scratch / "body"))
    ours = asyncio.run(measure(url, argparse.Namespace(**{**vars(args), "sweep": [args.check_rate],
                                                          "mode": "native"})))["rows"][0]
    theirs = wrk(url, 1, args.duration, scratch / "post.lua")
    print(f"  at {args.check_rate:g}/s: ours p50 {ours['p50_ms']:.1f} / p90 {ours['p90_ms']:.1f} ms; "
          f"wrk -c1 p50 {theirs['p50_ms']:.1f} / p90 {theirs['p90_ms']:.1f} ms ({theirs['per_second']:.0f} req/s)")
    return {"ours": ours, "wrk_c1": theirs}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="the proxy's or a worker's URL (p2p: the proxy's)")
    p.add_argument("--local", action="store_true", help="start Consul, one worker and a proxy; measure the proxy")
    p.add_argument("--mode", choices=("native", "v2", "p2p"), default="native")
    p.add_argument("--rate", type=float, default=20.0, help="requests a second (without --sweep)")
    p.add_argument("--sweep", type=float, nargs="+", help="rates to measure in turn")
    p.add_argument("--arrivals", choices=("poisson", "constant"), default="poisson")
    p.add_argument("--duration", type=float, default=10.0, help="seconds a rate")
    p.add_argument("--bound-ms", type=float, default=200.0, help="the p99 bound and goodput's latency bound")
    p.add_argument("--check-wrk", action="store_true", help="first compare with wrk -c1 at --check-rate")
    p.add_argument("--check-rate", type=float, default=5.0)
    p.add_argument("--photo", type=Path, default=PHOTO)
    p.add_argument("--out", type=Path, default=ROOT / "run" / "bench")
    args = p.parse_args()
    if not args.url and not args.local:
        p.error("give --url or --local")
    args.out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        url = args.url
        if args.local:
            _, proxy = stack.enter_context(local_cluster(args.out, "open-loop"))
            url = proxy.url
        result = {"check": check_against_wrk(url, args)} if args.check_wrk else {}
        result.update(asyncio.run(measure(url, args)))
    print(f"held at p99 <= {args.bound_ms:g} ms: {result['held_rate']:g}/s")
    (args.out / "open_loop.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
