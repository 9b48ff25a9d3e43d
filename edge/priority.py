"""The event loop's thread runs ahead of the threads that compute (which are named in the
kernel, so that system tools can tell them apart).

A worker's or proxy's event loop does little per request but is on every request's path:
it reads bodies, admits or refuses, answers. The threads that decode images and run the
model do the heavy work, and the model's runtime starts threads of its own (XNNPACK's
pool, ONNX Runtime's intra-op pool) that inherit their creator's priority. When the cores
are all busy, Linux's scheduler shares them by weight, so every compute thread runs at a
lower priority (nice +10) and the loop wins the core whenever it has work. Idle cores
still go to the compute threads and the loop's share is small, so throughput holds: a
worker refusing a storm of 256 connections answered 8% more and its refusal p99 fell
from 55-71 to 52 ms; at c=32 and c=1 on the real model it stayed within noise (docs/performance/history.md,
"The event loop runs ahead of the compute threads").
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

log = logging.getLogger(__name__)

BEHIND = 10  # nice increment: a nice-0 thread gets ~9x the CPU of a nice-10 one when both want a core
NICEST = 19


def run_behind_event_loop() -> None:
    """Lower the calling thread's priority (a thread pool's initializer, or the thread that
    creates a model runtime's threads). Linux sets priority per thread; elsewhere this
    would lower the whole process, so it does nothing."""
    if sys.platform != "linux":
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(NICEST, os.getpriority(os.PRIO_PROCESS, tid) + BEHIND))
    except OSError as exc:  # a sandbox that forbids it: serve at equal priority
        log.debug("could not lower thread %d's priority: %s", tid, exc)


def name_os_thread(name: str | None = None) -> None:
    """Give the calling thread its Python name (or `name`) in the kernel too (Linux keeps
    15 characters), so that `top -H`, `ps -L`, perf and /proc show `decode_0` or
    `inference_1` where they showed `python`; threads it starts inherit the name."""
    if sys.platform != "linux":
        return
    name = name or threading.current_thread().name
    try:
        Path(f"/proc/self/task/{threading.get_native_id()}/comm").write_text(name[:15])
    except OSError as exc:
        log.debug("could not name thread %s: %s", name, exc)


def _start_compute_thread() -> None:
    run_behind_event_loop()
    name_os_thread()


def compute_pool(max_workers: int | None, name: str) -> ThreadPoolExecutor:
    """A thread pool for work that computes (decoding, batches, loading a model): each of
    its threads runs behind the event loop from its start, named `NAME_N` in the kernel."""
    return ThreadPoolExecutor(max_workers, thread_name_prefix=name, initializer=_start_compute_thread)
