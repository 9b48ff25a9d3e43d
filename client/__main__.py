"""python -m client: classify photos, look up a worker, or load-test the cluster.

    python -m client classify PHOTO_OR_DIR... [--model NAME] [--mode p2p|proxy] [--top-k 5] [--json] [--max-side 1024]
                              [--concurrency 8]
    python -m client lookup [--model NAME]
    (anywhere: --proxy URL[,URL...] | --consul HOST:PORT | --dns HOST:PORT, --token T;
     each also from the environment, e.g. IMAGE_CLUSTER_PROXY: image_cluster/envflags.py)
    python -m client bench PHOTO [--mode p2p|proxy] [--concurrency 8 | --rate R] [--duration 10 | --count N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import aiohttp

from client.api import TIMEOUT_S, UNREACHABLE, ClassifyError, Client, parse_proxy_url
from client.images import downscale, expand_paths
from client.load import run_load, run_open_loop
from image_cluster.envflags import apply_environment

# From scripts/bench/formats.py: photos up to 1024 px are sent untouched (their answer is
# exactly the model's); bigger ones lose little at 1024 and most of their bytes.
DEFAULT_MAX_SIDE = 1024


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (the usage block is what --help is for)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help for usage)\n")


def at_least(low: float, kind: type = int):
    """An argparse type: a number of `kind`, at least `low`."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text!r}")
        return value
    return parse


positive, non_negative = at_least(1), at_least(0)


def more_than_zero(text: str) -> float:
    """A positive number (seconds, a rate, milliseconds)."""
    value = at_least(0.0, float)(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text!r}")
    return value


def top_k(text: str) -> int:
    """The same words as the servers' for a bad k (edge/errors.py, bad_top_k)."""
    try:
        return at_least(1)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"k must be an integer from 1 to the model's number of classes, got {text!r}") from None


def proxy_urls(text: str) -> list[str]:
    """Comma-separated proxy URLs; `host:port` alone means http://host:port."""
    try:
        urls = [parse_proxy_url(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not urls:
        raise argparse.ArgumentTypeError("no proxy URL given")
    return urls


def make_client(args, **kw) -> Client:
    """--proxy takes several URLs, comma-separated; --consul finds the proxies in Consul;
    --dns looks workers up in Consul's DNS (no proxy needed for p2p)."""
    return Client(args.proxy, token=args.token, consul=args.consul, dns=args.dns, **kw)


async def classify(args) -> int:
    failed = 0
    photos = expand_paths(args.photos)
    if not photos:
        raise NoPhotos(f"no image files in {', '.join(args.photos)}")
    async with make_client(args, retries=args.retries, max_side=args.max_side, deadline_s=args.timeout) as client:
        answers = client.classify_many(photos, concurrency=args.concurrency, mode=args.mode, k=args.top_k,
                                       model=args.model)
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
    photo = Path(args.photo).read_bytes()
    if args.max_side:
        photo = downscale(photo, args.max_side)
    duration = args.duration if args.count is None else 24 * 3600.0
    count = args.count or 1_000_000

    async with make_client(args, retries=args.retries, deadline_s=args.timeout) as client:
        send = lambda: client.classify(photo, mode=args.mode, model=args.model)  # noqa: E731
        await send()  # one first: a photo or setting the cluster refuses ends the run here, in its words
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
            if args.rate:
                result = await run_open_loop(send, rate=args.rate, duration_s=args.duration, arrivals=args.arrivals,
                                             slo_ms=args.slo_ms)
            else:
                result = await run_load(send, concurrency=args.concurrency, duration_s=duration, max_requests=count)
        finally:
            if progress:
                progress.cancel()
    summary = {"mode": args.mode, "bytes_per_image": len(photo), **result.summary(),
               "retries": client.stats["retries"]}
    if args.rate:
        return print_open_loop(summary, args.json)
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


def print_open_loop(summary: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps(summary))
    else:
        print(f"{summary['scheduled']} sent at {summary['rate']:g}/s ({summary['arrivals']}) in "
              f"{summary['seconds']:.1f} s: {summary['ok']} ok, {summary['errors']} errors, "
              f"{summary['not_sent']} not sent, {summary['retries']} retries")
        print(f"{summary['throughput']:.1f} img/s, goodput {summary['goodput']:.1f}/s within {summary['slo_ms']:g} ms   "
              f"p50 {summary['p50_ms']:.1f} ms   p90 {summary['p90_ms']:.1f} ms   p99 {summary['p99_ms']:.1f} ms "
              f"(from each request's scheduled time)")
        for error, count in list(summary["error_kinds"].items())[:3]:
            print(f"  error ({count}x): {error}")
    return 1 if summary["errors"] or summary["not_sent"] else 0


def add_connection_flags(p: argparse.ArgumentParser, here: bool = True) -> None:
    """Where the cluster is and how to be let in: on the command itself and, with `here`
    False, again on each subcommand (defaults left to the command's), so they may come
    before or after the subcommand's name."""
    def default(value):
        return value if here else argparse.SUPPRESS

    p.add_argument("--proxy", type=proxy_urls, default=default(os.environ.get("PROXY_URL", "http://127.0.0.1:12480")),
                   help="proxy URL(s), comma-separated: the next is used when one fails (default $PROXY_URL "
                        "or http://127.0.0.1:12480)")
    p.add_argument("--consul", default=default(None), help="find the proxies in this Consul agent (host:port) instead")
    p.add_argument("--dns", default=default(None),
                   help="look workers up in Consul's DNS at host:port (e.g. 127.0.0.1:8600): p2p with no proxy")
    p.add_argument("--token", default=default(None),
                   help="bearer token when the cluster requires one (better in $IMAGE_CLUSTER_TOKEN: ps shows flags)")


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = Parser(prog=prog)
    add_connection_flags(p)
    sub = p.add_subparsers(dest="command", required=True)

    def model(sp):
        sp.add_argument("--model", default=None, help="which model (default: the cluster's default model)")

    def common(sp):
        model(sp)
        sp.add_argument("--mode", choices=["p2p", "proxy"], default="p2p")
        sp.add_argument("--retries", type=non_negative, default=6, help="tries after the first (default %(default)s)")
        sp.add_argument("--timeout", type=more_than_zero, default=None,
                        help="seconds each photo may take, retries included; sent to the cluster, which refuses "
                             "at once (504) what it could only answer later (default: none)")
        sp.add_argument("--max-side", type=non_negative, default=DEFAULT_MAX_SIDE,
                        help="downscale bigger photos to this long side before sending, 0 to send them as they "
                             "are (default %(default)s: docs/performance/studies.md)")

    c = sub.add_parser("classify", help="classify photos (files or directories)")
    add_connection_flags(c, here=False)
    c.add_argument("photos", nargs="+")
    common(c)
    c.add_argument("--top-k", type=top_k, default=None, help="best classes per photo (default: 5 or fewer)")
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
    b.add_argument("--duration", type=more_than_zero, default=10.0, help="seconds (default %(default)s)")
    b.add_argument("--count", type=positive, default=None, help="stop after this many requests instead")
    b.add_argument("--rate", type=more_than_zero, default=None,
                   help="open loop: send this many requests a second, answered or not, and count latency from "
                        "each one's scheduled time (--concurrency is then unused; --count does not apply)")
    b.add_argument("--arrivals", choices=("poisson", "constant"), default="poisson",
                   help="with --rate: random (Poisson) or evenly spaced arrivals (default %(default)s)")
    b.add_argument("--slo-ms", type=more_than_zero, default=200.0,
                   help="with --rate: goodput counts answers within this many ms (default %(default)s)")
    b.add_argument("--json", action="store_true", help="print the summary as JSON")
    apply_environment(p)
    return p


class NoPhotos(Exception):
    """classify was given nothing it could send."""


def main(argv: list[str] | None = None, prog: str = "python -m client") -> int:
    """Run a subcommand; whatever stops it is one line on stderr and a non-zero status:
    the cluster's refusal in its own words, what could not be reached, a file that could
    not be read. Per-photo failures of classify are its own lines, and it goes on."""
    args = build_parser(prog).parse_args(argv)
    command = {"classify": classify, "lookup": lookup, "bench": bench}[args.command]

    def fail(message: str) -> int:
        print(f"{prog} {args.command}: error: {message}", file=sys.stderr)
        return 1

    try:
        return asyncio.run(command(args))
    except ClassifyError as exc:
        return fail(str(exc))
    except UNREACHABLE as exc:  # before OSError: a refused connection is both
        return fail(unreachable(args, exc))
    except OSError as exc:
        return fail(f"cannot read {exc.filename}: {exc.strerror}" if exc.filename else str(exc))
    except NoPhotos as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return 130


def unreachable(args, exc: Exception) -> str:
    """What could not be reached, named: the proxy, a worker, Consul's DNS or the proxies
    Consul lists."""
    if isinstance(exc, asyncio.TimeoutError):
        return f"no answer from the cluster in time ({TIMEOUT_S:g} s)"
    if args.dns:
        return f"Consul's DNS at {args.dns}: {exc}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        address = f"{exc.host}:{exc.port}"
        proxies = [u for u in args.proxy if u.split("://", 1)[1] in (address, exc.host)]
        what = f"the proxy at {proxies[0]}" if proxies and not args.consul else f"{address}"
        return f"cannot reach {what} ({exc.strerror or exc.os_error})"
    if args.consul:
        return f"no proxy reachable from Consul at {args.consul} ({exc})"
    return f"the cluster stopped answering ({exc})"


if __name__ == "__main__":
    sys.exit(main())
