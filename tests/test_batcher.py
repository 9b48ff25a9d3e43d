"""The dynamic batcher in process, with a stand-in model so failures can be forced."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from edge.tasks import collect_batch
from worker.batcher import LANE_BATCH, BatchConfig, Batcher, InferenceError, QueueFullError, Stopped
from worker.service import top_k

pytestmark = pytest.mark.unit


class StandInModel:
    """Returns one row per image (the image's first pixel as its score); can fail or block."""

    name = "stand-in"

    def __init__(self, concurrency: int = 1):
        self.concurrency = concurrency  # batches the batcher may run at once
        self.fail_next = False
        self.gate = threading.Event()
        self.gate.set()
        self.batches: list[int] = []
        self.stopped = False

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.gate.wait(10)
        if self.stopped:
            raise RuntimeError("stopped")  # as a killed model host fails the batch waiting on it
        self.batches.append(len(batch))
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("boom")
        return batch[:, 0, 0, :1].astype(np.float32)

    def stop(self) -> None:
        self.stopped = True
        self.gate.set()


def image(value: int) -> np.ndarray:
    return np.full((2, 2, 3), value, dtype=np.uint8)


@pytest.fixture
async def batcher():
    model = StandInModel()
    b = Batcher(model, BatchConfig(max_batch_size=4, max_batch_delay_ms=20, max_queue=6))
    b.start()
    yield b, model
    model.gate.set()
    await b.close()


async def test_results_match_inputs_and_batches_form(batcher):
    b, model = batcher
    results = await asyncio.gather(*(b.submit(image(i)) for i in range(6)))
    assert [int(r.probabilities[0]) for r in results] == list(range(6))
    assert model.batches == [4, 2] and b.stats.max_batch_size == 4
    assert [r.batch_size for r in results] == [4, 4, 4, 4, 2, 2]


async def test_failed_batch_fails_its_requests_and_loop_continues(batcher):
    b, model = batcher
    model.fail_next = True
    outcomes = await asyncio.gather(*(b.submit(image(i)) for i in range(3)), return_exceptions=True)
    assert all(isinstance(o, InferenceError) and "boom" in str(o) for o in outcomes)
    assert int((await b.submit(image(9))).probabilities[0]) == 9
    assert b.stats.failed_batches == 1


async def test_full_queue_refuses_at_once(batcher):
    b, model = batcher
    model.gate.clear()  # the inference thread blocks: nothing leaves the queue
    first = asyncio.ensure_future(b.submit(image(0)))
    await asyncio.sleep(0.1)  # taken by the collector, now computing
    queued = [asyncio.ensure_future(b.submit(image(i))) for i in range(6)]
    await asyncio.sleep(0)
    with pytest.raises(QueueFullError):
        await b.submit(image(99))
    model.gate.set()
    await asyncio.gather(first, *queued)


async def test_room_is_reserved_at_admission_and_given_back(batcher):
    """Images still being read or decoded hold their room, so a full batcher refuses
    before any work is spent; room an admitted image never takes is given back."""
    b, _ = batcher  # max_queue 6
    with b.admit(4) as held:
        with b.admit(2):
            assert b.full and b.depth == 6
            with pytest.raises(QueueFullError):
                b.admit()
        assert not b.full and b.depth == 4  # the two that never came (a bad upload) gave their room back
        results = await asyncio.gather(*(held.submit(image(i)) for i in range(4)))
        with pytest.raises(RuntimeError):
            await held.submit(image(5))
    assert [int(r.probabilities[0]) for r in results] == [0, 1, 2, 3]
    assert b.depth == 0


async def test_caller_that_went_away_does_not_break_the_loop(batcher):
    b, model = batcher
    model.gate.clear()
    blocker = asyncio.ensure_future(b.submit(image(0)))
    await asyncio.sleep(0.1)
    gone = asyncio.ensure_future(b.submit(image(1)))
    await asyncio.sleep(0)
    gone.cancel()
    model.gate.set()
    await blocker
    assert int((await b.submit(image(2))).probabilities[0]) == 2
    assert sum(model.batches) == 2  # the cancelled request was never computed


async def test_callers_that_went_away_leave_the_depth_at_once(batcher):
    """A queue's depth predicts waits (deadline admission, the load proxies balance on):
    images whose callers left stop counting when they leave, not when the queue drains."""
    b, model = batcher
    model.gate.clear()
    blocker = asyncio.ensure_future(b.submit(image(0)))
    await asyncio.sleep(0.1)  # computing, behind the gate
    waiting = [asyncio.ensure_future(b.submit(image(i))) for i in range(1, 4)]
    await asyncio.sleep(0)
    assert b.depth == 4
    for task in waiting:
        task.cancel()
    await asyncio.sleep(0)
    assert b.depth == 1
    model.gate.set()
    await blocker
    assert b.depth == 0 and sum(model.batches) == 1


async def test_close_answers_every_image_and_stops_the_model(batcher):
    """A drain that ran out of time: the batch still running (its model stuck) and the
    images queued behind it fail with Stopped (answered 503) at once, not cut at exit."""
    b, model = batcher
    model.gate.clear()  # the first batch hangs in the model
    running = asyncio.ensure_future(b.submit(image(1)))
    await asyncio.sleep(0.05)
    queued = [asyncio.ensure_future(b.submit(image(i))) for i in range(2, 5)]
    await asyncio.sleep(0.05)
    assert not running.done() and model.batches == []
    await asyncio.wait_for(b.close(), 5)
    for request in (running, *queued):
        with pytest.raises(Stopped):
            await asyncio.wait_for(request, 5)
    assert model.stopped
    with pytest.raises(Stopped):  # an image decoded after close(): nothing would collect it
        await b.submit(image(5))


async def test_close_also_stops_a_retired_version_still_running_a_batch(batcher):
    """A swap while a batch hangs in the old version, then a stop: both versions' runtimes
    stop, so no thread is left waiting on the old one's hung process at exit."""
    b, old = batcher
    old.gate.clear()
    running = asyncio.ensure_future(b.submit(image(1)))
    await asyncio.sleep(0.05)
    new = StandInModel()
    b.swap(new)
    await asyncio.wait_for(b.close(), 5)
    with pytest.raises(Stopped):
        await asyncio.wait_for(running, 5)
    assert old.stopped and new.stopped


async def test_an_idle_batcher_does_not_wait_for_a_batch_to_fill():
    """One image on an idle batcher goes straight to the model, however long the batch
    delay; images queued behind a busy one still form a batch."""
    queue: asyncio.Queue = asyncio.Queue()
    queue.put_nowait("alone")
    assert await asyncio.wait_for(collect_batch(queue, 8, max_delay_ms=60_000), timeout=5) == ["alone"]
    for item in ("a", "b", "c"):
        queue.put_nowait(item)
    assert await asyncio.wait_for(collect_batch(queue, 3, max_delay_ms=60_000), timeout=5) == ["a", "b", "c"]


async def test_a_model_that_runs_batches_side_by_side_gets_a_new_one_while_one_runs():
    """With concurrency 2, a batch is started while the first is still computing (the
    model's call waits for a second one to arrive: run one at a time, it would time out
    and fail); with concurrency 1, never two at once."""
    for concurrency in (2, 1):
        model = StandInModel(concurrency)
        both = threading.Barrier(2, timeout=1)
        overlapped = []

        def predict(batch, original=model.predict):
            try:
                both.wait()
                overlapped.append(True)
            except threading.BrokenBarrierError:
                overlapped.append(False)
            return original(batch)

        model.predict = predict
        b = Batcher(model, BatchConfig(max_batch_size=4, max_batch_delay_ms=0, max_queue=8))
        b.start()
        try:
            first = asyncio.ensure_future(b.submit(image(1)))
            await asyncio.sleep(0.2)  # the first batch is computing, waiting at the barrier
            results = await asyncio.gather(first, b.submit(image(2)))
        finally:
            await b.close()
        assert [int(r.probabilities[0]) for r in results] == [1, 2]
        assert overlapped == ([True, True] if concurrency == 2 else [False, False])


async def test_a_model_with_lanes_gets_small_batches_and_one_ready_ahead():
    """With lanes (concurrency 2), batches are at most LANE_BATCH images however big
    max_batch_size is, and three batches are handed out while both lanes are busy: the
    third waits in the executor, for whichever lane finishes first."""
    model = StandInModel(concurrency=2)
    model.gate.clear()  # both lanes block inside their first batch
    b = Batcher(model, BatchConfig(max_batch_size=32, max_batch_delay_ms=0, max_queue=32))
    b.start()
    try:
        pending = [asyncio.ensure_future(b.submit(image(i))) for i in range(20)]
        await asyncio.sleep(0.2)
        assert b._queue.qsize() == 20 - 3 * LANE_BATCH  # three batches handed out, the rest queued
        model.gate.set()
        results = await asyncio.gather(*pending)
    finally:
        model.gate.set()
        await b.close()
    assert [int(r.probabilities[0]) for r in results] == list(range(20))
    assert max(model.batches) == LANE_BATCH and sum(model.batches) == 20


def test_top_k_answers_the_best_classes_best_first():
    probabilities = np.random.default_rng(3).random(1000).astype(np.float32)
    labels = [f"class {i}" for i in range(1000)]
    ranked = np.argsort(-probabilities, kind="stable")
    for k in (1, 5, 1000):
        answer = top_k(probabilities, labels, k)
        assert [a["index"] for a in answer] == ranked[:k].tolist()
        assert answer[0] == {"label": f"class {ranked[0]}", "index": int(ranked[0]),
                             "score": float(probabilities[ranked[0]])}
    tied = np.zeros(4, np.float32)
    tied[2] = 1
    assert [a["index"] for a in top_k(tied, labels[:4], 4)] == [2, 0, 1, 3]
