"""python -m client: classify photos or look up a worker through the proxy.

    python -m client classify photo.jpg [more.jpg ...] [--mode p2p|proxy] [--top-k 5] [--json]
    python -m client lookup
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from client.api import ClassifyError, Client


async def classify(args) -> int:
    failed = 0
    async with Client(args.proxy, retries=args.retries) as client:
        for path in args.photos:
            try:
                result = await client.classify(path, mode=args.mode, k=args.top_k)
            except (ClassifyError, OSError) as exc:
                print(f"{path}: error: {exc}", file=sys.stderr)
                failed += 1
                continue
            if args.json:
                print(json.dumps({"file": path, **result}))
                continue
            print(f"{path}  ({result['worker']}, {result['timings_ms']['total']:.1f} ms)")
            for p in result["predictions"]:
                print(f"  {p['score']:6.3f}  {p['label']}")
    return 1 if failed else 0


async def lookup(args) -> int:
    async with Client(args.proxy) as client:
        print(await client.lookup())
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m client")
    p.add_argument("--proxy", default=os.environ.get("PROXY_URL", "http://127.0.0.1:12480"),
                   help="proxy URL (default $PROXY_URL or %(default)s)")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("classify", help="classify photos")
    c.add_argument("photos", nargs="+")
    c.add_argument("--mode", choices=["p2p", "proxy"], default="p2p")
    c.add_argument("--top-k", type=int, default=5)
    c.add_argument("--retries", type=int, default=4)
    c.add_argument("--json", action="store_true", help="one JSON object per photo")
    sub.add_parser("lookup", help="print one live worker's host:port")
    args = p.parse_args(argv)
    return asyncio.run({"classify": classify, "lookup": lookup}[args.command](args))


if __name__ == "__main__":
    sys.exit(main())
