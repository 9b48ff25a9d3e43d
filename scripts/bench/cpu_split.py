"""Where an image's CPU goes at c=32: what each group of threads spent per image (core-ms,
from /proc), straight to a worker and through the proxy, serving the default model, while
`wrk` (Debian package `wrk`) posts a photo's raw bytes. Threads are told apart by the
names they carry in the kernel (edge/priority.py names the compute pools' threads; libzmq
names its own): a process's main thread is its event loop, and a worker's fp16 model hosts
are child processes. It says what bounds the throughput: the model, decoding, or the
serving around them.

`--pinned` makes this machine two one-core hosts, by CPU affinity: the worker (and its
model hosts) on one core, Consul, the proxy and wrk on another. Forwarded, the proxy
decodes and the worker only runs the model; sent straight to the worker, it does both.

`--noop` serves a no-op model (`--backend noop`) and posts coffee at 224x224, as
proxy_rate.py does: what bounds the rate of everything around the model.

Before the servers start it also decodes the photo in a loop, in this process, on one
thread (`preprocess` alone): the decode rows less that figure are what handing images
to the decode pool costs (its queue, waking its threads, the GIL passed back and forth).

    .venv/bin/python scripts/bench/cpu_split.py [--duration 8] [--rounds 2] [--connections 32] [--pinned] [--noop]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts" / "bench"))

from proxy_rate import POST_LUA, small_photo, wrk, wrk_scratch  # noqa: E402
from suite import PHOTO  # noqa: E402

from edge.imaging import configure_decoding, preprocess  # noqa: E402
from edge.preprocessing import Preprocessing  # noqa: E402
from tests.processes import child_pids, local_cluster  # noqa: E402

TARGETS = ("direct", "proxy")


def thread_group(role: str, pid: int, tid: int, name: str) -> str:
    """`role: what` for one thread: the event loop, a named pool (digits dropped), libzmq's
    I/O, or `other` (threads no one named: the runtime's, asyncio's, Consul's client)."""
    if tid == pid:
        return f"{role}: event loop"
    if name.startswith("ZMQbg"):
        return f"{role}: ZeroMQ I/O"
    pool = re.sub(r"_?\d+$", "", name)
    return f"{role}: {pool}" if pool and pool != "python" else f"{role}: other"


def snapshot(roles: dict[int, str]) -> dict[tuple[int, int], tuple[str, float]]:
    """Every thread of these processes and of their children: (group, CPU ms so far)."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for parent, role in roles.items():
        for pid in (parent, *child_pids(parent)):
            who = role if pid == parent else f"{role}: children"
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError):  # a thread that ended meanwhile
                    fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                    name = (task / "comm").read_text().strip()
                    group = f"{who} ({name})" if pid != parent else thread_group(role, pid, int(task.name), name)
                    found[(pid, int(task.name))] = (group, (int(fields[11]) + int(fields[12])) * 1000 / ticks)
    return found


def measure(url: str, roles: dict[int, str], seconds: float, connections: int, script: Path) -> dict:
    before = snapshot(roles)
    row = wrk(url, connections, seconds, script)
    after = snapshot(roles)
    spent = Counter()
    for key, (group, ms) in after.items():
        spent[group] += ms - before.get(key, (group, 0.0))[1]
    images = max(row["requests"], 1)
    return {"per_second": row["per_second"], "p99_ms": row["p99_ms"], "non_2xx": row["non_2xx"],
            "groups": {group: round(ms / images, 3) for group, ms in spent.items()}}


def serial_decode_ms(photo: bytes, images: int = 300) -> float:
    """CPU ms per image to decode and resize `photo` for the default model, one image after
    another on this thread: the work itself, with no pool around it."""
    configure_decoding()
    prep = Preprocessing()
    for _ in range(20):  # warm: caches, the allocator
        preprocess(photo, prep, 1 << 40)
    started = time.process_time()
    for _ in range(images):
        preprocess(photo, prep, 1 << 40)
    return (time.process_time() - started) * 1000 / images


def table(runs: dict[str, list[dict]], model: str = "the default model") -> str:
    """Median over rounds: img/s, p99, then core-ms per image by group, biggest first."""
    def median(target, pick):
        return statistics.median(pick(r) for r in runs[target])

    groups = sorted({g for rows in runs.values() for r in rows for g in r["groups"]},
                    key=lambda g: -max(median(t, lambda r: r["groups"].get(g, 0.0)) for t in TARGETS))
    lines = [f"| c=32, raw JPEG body, {model} | " + " | ".join(TARGETS) + " |", "|---|" + "---:|" * len(TARGETS),
             "| img/s | " + " | ".join(f"{median(t, lambda r: r['per_second']):.1f}" for t in TARGETS) + " |",
             "| p99 ms | " + " | ".join(f"{median(t, lambda r: r['p99_ms']):.0f}" for t in TARGETS) + " |",
             "| **core-ms per image** | " + " | ".join(
                 f"**{median(t, lambda r: sum(r['groups'].values())):.2f}**" for t in TARGETS) + " |"]
    for group in groups:
        cells = [median(t, lambda r: r["groups"].get(group, 0.0)) for t in TARGETS]
        if max(cells) >= 0.005:
            lines.append(f"| {group} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--photo", type=Path, default=PHOTO)
    p.add_argument("--out", type=Path, default=ROOT / "run" / "bench")
    p.add_argument("--pinned", action="store_true", help="the worker on one core, everything else on another")
    p.add_argument("--noop", action="store_true", help="a no-op model, and coffee at 224x224 unless --photo")
    args = p.parse_args()
    worker_cpus = None
    if args.pinned:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            sys.exit("--pinned needs two CPUs")
        os.sched_setaffinity(0, {cpus[0]})  # Consul, the proxy and wrk (started from here) on the first
        worker_cpus = {cpus[1]}
    tmp = wrk_scratch(args.out)
    photo = args.photo.resolve()
    if args.noop and args.photo == PHOTO:
        photo = tmp / "coffee-224.jpg"
        photo.write_bytes(small_photo(224))
    script = tmp / "post.lua"
    script.write_text(POST_LUA.format(content_type="image/jpeg", body=photo))
    worker_args = ("--backend", "noop") if args.noop else ()
    serial = serial_decode_ms(photo.read_bytes())
    runs: dict[str, list[dict]] = {t: [] for t in TARGETS}
    with local_cluster(args.out, "cpu-split", worker_args, worker_cpus=worker_cpus) as (worker, proxy):
        roles = {worker.proc.pid: "worker", proxy.proc.pid: "proxy"}
        urls = {"direct": worker.url + "/", "proxy": proxy.url + "/"}
        for round_ in range(args.rounds):
            for target in TARGETS if round_ % 2 == 0 else TARGETS[::-1]:
                wrk(urls[target], args.connections, 2, script)  # warm-up
                run = measure(urls[target], roles, args.duration, args.connections, script)
                runs[target].append(run)
                print(f"  round {round_ + 1} {target:6s} {run['per_second']:6.1f} img/s  "
                      f"{sum(run['groups'].values()):.2f} core-ms/img", flush=True)
    name = "cpu_split" + "-noop" * args.noop + "-pinned" * args.pinned
    (args.out / f"{name}.json").write_text(json.dumps(runs, indent=2) + "\n")
    print("\n" + table(runs, "no-op model" if args.noop else "the default model"))
    print(f"\nDecoding the photo alone, one image after another on one thread: {serial:.2f} ms an image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
