"""python -m client: classify photos, look up a worker, or load-test the cluster.

    python -m client classify PHOTO_OR_DIR... [--model NAME] [--mode p2p|proxy] [--top-k 5] [--json] [--max-side 1024]
                              [--concurrency 8]
    python -m client lookup [--model NAME]
    (anywhere: --proxy URL[,URL...] | --consul HOST:PORT | --dns HOST:PORT, --token T;
     each also from the environment, e.g. IMAGE_CLUSTER_PROXY: image_cluster/envflags.py)
    python -m client bench PHOTO [--mode p2p|proxy] [--concurrency 8] [--duration 10 | --count N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

from client.api import Client
from client.images import downscale, expand_paths
from client.load import run_load
from image_cluster.envflags import apply_environment

# From scripts/bench/formats.py: photos up to 1024 px are sent untouched (their answer is
# exactly the model's); bigger ones lose little at 1024 and most of their bytes.
DEFAULT_MAX_SIDE = 1024


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def make_client(args, **kw) -> Client:
    """--proxy takes several URLs, comma-separated; --consul finds the proxies in Consul;
    --dns looks workers up in Consul's DNS (no proxy needed for p2p)."""
    return Client(args.proxy.split(","), token=args.token, consul=args.consul, dns=args.dns, **kw)


async def classify(args) -> int:
    failed = 0
    async with make_client(args, retries=args.retries, max_side=args.max_side) as client:
        answers = client.classify_many(expand_paths(args.photos), concurrency=args.concurrency, mode=args.mode,
                                       k=args.top_k, model=args.model)
        async for path, result in answers:
            if isinstance(result, Exception):
                print(f"{path}: error: {result}", file=sys.stderr)
                failed += 1
                continue
            if args.json:
                print(json.dumps({"file": str(path), **result}), flush=True)
                continue
            print(f"{path}  ({result['worker']}, {result['timings_ms']['total']:.1f} ms)")
            for p in result["predictions"]:
                print(f"  {p['score']:6.3f}  {p['label']}")
    return 1 if failed else 0


async def lookup(args) -> int:
    async with make_client(args) as client:
        print(await client.lookup(args.model))
    return 0


async def bench(args) -> int:
    photo = open(args.photo, "rb").read()
    if args.max_side:
        photo = downscale(photo, args.max_side)
    duration = args.duration if args.count is None else 24 * 3600.0
    count = args.count or 1_000_000

    async with make_client(args, retries=args.retries) as client:
        send = lambda: client.classify(photo, mode=args.mode, model=args.model)  # noqa: E731
        progress = None
        if not args.json:
            async def report():
                started = time.perf_counter()
                while True:
                    await asyncio.sleep(2)
                    done = client.stats["requests"]
                    print(f"  ... {done} requests in {time.perf_counter() - started:.0f} s", file=sys.stderr)
            progress = asyncio.create_task(report())
        try:
            result = await run_load(send, concurrency=args.concurrency, duration_s=duration, max_requests=count)
        finally:
            if progress:
                progress.cancel()
    summary = {"mode": args.mode, "bytes_per_image": len(photo), **result.summary(),
               "retries": client.stats["retries"]}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['ok']} ok, {summary['errors']} errors in {summary['seconds']:.1f} s, "
              f"{summary['retries']} retries ({args.mode}, concurrency {args.concurrency})")
        print(f"{summary['per_second']:.1f} img/s   p50 {summary['p50_ms']:.1f} ms   "
              f"p90 {summary['p90_ms']:.1f} ms   p99 {summary['p99_ms']:.1f} ms")
        for error in result.errors[:3]:
            print(f"  error: {error}")
    return 1 if result.errors else 0


def add_connection_flags(p: argparse.ArgumentParser, here: bool = True) -> None:
    """Where the cluster is and how to be let in: on the command itself and, with `here`
    False, again on each subcommand (defaults left to the command's), so they may come
    before or after the subcommand's name."""
    def default(value):
        return value if here else argparse.SUPPRESS

    p.add_argument("--proxy", default=default(os.environ.get("PROXY_URL", "http://127.0.0.1:12480")),
                   help="proxy URL(s), comma-separated: the next is used when one fails (default $PROXY_URL "
                        "or http://127.0.0.1:12480)")
    p.add_argument("--consul", default=default(None), help="find the proxies in this Consul agent (host:port) instead")
    p.add_argument("--dns", default=default(None),
                   help="look workers up in Consul's DNS at host:port (e.g. 127.0.0.1:8600): p2p with no proxy")
    p.add_argument("--token", default=default(None),
                   help="bearer token when the cluster requires one (better in $IMAGE_CLUSTER_TOKEN: ps shows flags)")


def main(argv: list[str] | None = None, prog: str = "python -m client") -> int:
    p = argparse.ArgumentParser(prog=prog)
    add_connection_flags(p)
    sub = p.add_subparsers(dest="command", required=True)

    def model(sp):
        sp.add_argument("--model", default=None, help="which model (default: the cluster's default model)")

    def common(sp):
        model(sp)
        sp.add_argument("--mode", choices=["p2p", "proxy"], default="p2p")
        sp.add_argument("--retries", type=int, default=6)
        sp.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE,
                        help="downscale bigger photos to this long side before sending, 0 to send them as they "
                             "are (default %(default)s: README, 'Image formats and sizes')")

    c = sub.add_parser("classify", help="classify photos (files or directories)")
    add_connection_flags(c, here=False)
    c.add_argument("photos", nargs="+")
    common(c)
    c.add_argument("--top-k", type=int, default=None, help="best classes per photo (default: 5 or fewer)")
    c.add_argument("--json", action="store_true", help="one JSON object per photo")
    c.add_argument("--concurrency", type=positive, default=8,
                   help="photos in flight at once; answers print in the order given (default %(default)s)")

    lk = sub.add_parser("lookup", help="print one live worker's host:port")
    add_connection_flags(lk, here=False)
    model(lk)

    b = sub.add_parser("bench", help="load-test with one photo")
    add_connection_flags(b, here=False)
    b.add_argument("photo")
    common(b)
    b.add_argument("--concurrency", type=positive, default=8)
    b.add_argument("--duration", type=float, default=10.0, help="seconds (default %(default)s)")
    b.add_argument("--count", type=int, default=None, help="stop after this many requests instead")
    b.add_argument("--json", action="store_true", help="print the summary as JSON")

    apply_environment(p)
    args = p.parse_args(argv)
    return asyncio.run({"classify": classify, "lookup": lookup, "bench": bench}[args.command](args))


if __name__ == "__main__":
    sys.exit(main())
