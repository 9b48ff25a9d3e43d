"""edge/priority.py: compute threads run behind the event loop's thread, named in the kernel."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from edge.priority import BEHIND, NICEST, compute_pool, run_behind_event_loop

pytestmark = [pytest.mark.unit, pytest.mark.skipif(sys.platform != "linux", reason="priority per thread is Linux's")]


def nice_of_this_thread() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_a_pool_initialised_with_it_runs_behind_and_the_caller_does_not():
    before = nice_of_this_thread()
    with compute_pool(2, "test") as pool:
        nices = set(pool.map(lambda _: nice_of_this_thread(), range(8)))
    assert nices == {min(NICEST, before + BEHIND)}
    assert nice_of_this_thread() == before  # priority is per thread: the caller keeps its own


def test_threads_started_by_a_lowered_thread_inherit_it():
    """As the threads a model runtime starts from the thread that loads the model do."""
    seen = []

    def loader():
        run_behind_event_loop()
        child = threading.Thread(target=lambda: seen.append(nice_of_this_thread()))
        child.start()
        child.join()

    thread = threading.Thread(target=loader)
    thread.start()
    thread.join()
    assert seen == [min(NICEST, nice_of_this_thread() + BEHIND)]


def kernel_name_of_this_thread() -> str:
    return Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()


def test_a_pools_threads_carry_their_names_in_the_kernel():
    caller = kernel_name_of_this_thread()
    with compute_pool(2, "decode") as pool:
        names = set(pool.map(lambda _: (threading.current_thread().name, kernel_name_of_this_thread()), range(8)))
    assert names and all(python == kernel and kernel.startswith("decode_") for python, kernel in names)
    assert kernel_name_of_this_thread() == caller
