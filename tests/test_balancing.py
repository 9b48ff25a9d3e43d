"""Balancing: the policies, the retry budget, slow start, the ejection cap and deadline
admission; in process (unit) and on real worker and proxy processes (system)."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter

import uuid

import aiohttp
import pytest

from client.load import arrival_times, run_open_loop
from proxy.balance import PeakEwma, RetryBudget, WorkerBalance
from proxy.policy import PeakEwma as PeakEwmaPolicy
from proxy.policy import PowerOfTwo
from tests.conftest import value, scrape
from tests.processes import wait_for
from worker.protocol import BatchReply, BatchRequest, WorkerLoad


async def post_photo(session: aiohttp.ClientSession, url: str, photo: bytes,
                     headers: dict | None = None) -> tuple[int, dict]:
    """POST the photo as the README's curl does: (status, JSON body)."""
    form = aiohttp.FormData()
    form.add_field("data", photo, filename="p.jpg")
    async with session.post(url, data=form, headers=headers or {}) as r:
        return r.status, await r.json()


@pytest.fixture
def service():
    return f"classifier-{uuid.uuid4().hex[:6]}"


class Fake:
    def __init__(self, name: str, outstanding: int = 0, queue: int = 0, service_ms: float = 0.0):
        self.name = name
        self.balance = WorkerBalance(outstanding=outstanding)
        if queue or service_ms:
            self.balance.report(WorkerLoad(queue + outstanding, 0, service_ms), time.monotonic())

    @property
    def outstanding(self) -> int:
        return self.balance.outstanding


@pytest.mark.unit
def test_power_of_two_prefers_the_less_loaded_of_two():
    idle, busy = Fake("idle"), Fake("busy", outstanding=3, queue=20)
    picks = Counter(PowerOfTwo(random.Random(1)).choose([idle, busy]).name for _ in range(100))
    assert picks == {"idle": 100}
    # Among many, the most loaded is never picked: it loses every pair it is in.
    many = [Fake(f"w{i}", outstanding=i) for i in range(5)]
    picks = Counter(PowerOfTwo(random.Random(2)).choose(many).name for _ in range(500))
    assert "w4" not in picks and picks["w0"] > picks["w3"]


@pytest.mark.unit
def test_peak_ewma_weighs_load_by_each_workers_pace():
    # The same queue, one worker four times as slow (a quarter of a core): it costs 4x.
    fast, slow = Fake("fast", queue=4, service_ms=6.0), Fake("slow", queue=4, service_ms=24.0)
    picks = Counter(PeakEwmaPolicy(random.Random(3)).choose([fast, slow]).name for _ in range(50))
    assert picks == {"fast": 50}
    # Load still counts: a fast worker with 10x the queue loses to the slow idle one.
    swamped, idle_slow = Fake("swamped", queue=40, service_ms=6.0), Fake("idle", service_ms=24.0)
    assert PeakEwmaPolicy(random.Random(4)).choose([swamped, idle_slow]).name == "idle"


@pytest.mark.unit
def test_peak_ewma_jumps_up_and_decays_down():
    e = PeakEwma(tau_s=1.0)
    e.observe(10, now=0.0)
    e.observe(100, now=0.1)
    assert e.value == 100  # at once
    e.observe(10, now=1.1)  # one time constant later: most of the way back
    assert 10 < e.value < 50


@pytest.mark.unit
def test_a_failure_makes_a_worker_look_slower_for_a_while():
    b = WorkerBalance()
    b.report(WorkerLoad(0, 0, 6.0), 0.0)
    before = b.expected_ms(0.0, 6.0)
    b.failed(0.0, refused=True)  # a fast refusal
    assert b.expected_ms(0.0, 6.0) >= 5 * before
    for _ in range(50):  # a run of refusals: still five times the worker's pace, not 5 ** 50
        b.failed(0.0, refused=True)
    assert b.service.value == pytest.approx(5 * max(6.0, 10.0))


@pytest.mark.unit
def test_lookups_count_as_load_until_the_next_report():
    b = WorkerBalance()
    b.report(WorkerLoad(2, 2, 5.0), time.monotonic())
    b.lookups += 3
    assert b.load(time.monotonic()) == 5
    b.report(WorkerLoad(4, 4, 5.0), time.monotonic())  # the report now holds them
    assert b.load(time.monotonic()) == 4
    assert b.load(time.monotonic() + 5) == 0  # a stale report says nothing


@pytest.mark.unit
def test_the_retry_budget_allows_a_share_plus_a_floor():
    budget = RetryBudget(ratio=0.2, min_per_s=1.0, window_s=10.0)
    for _ in range(100):
        budget.request(5.0)
    allowed = sum(budget.try_retry(5.0) for _ in range(100))
    assert allowed == 30  # 0.2 x 100 + 1/s x 10 s
    assert budget.refused == 70
    assert budget.try_retry(16.0)  # the window moved on: the floor is back


@pytest.mark.unit
def test_slow_start_ramps_a_share_from_a_tenth():
    b = WorkerBalance(joined=100.0, slow_start=True)
    assert b.weight(100.0, 10.0) == pytest.approx(0.1)
    assert b.weight(105.0, 10.0) == pytest.approx(0.5)
    assert b.weight(120.0, 10.0) == 1.0
    assert WorkerBalance(joined=100.0).weight(100.0, 10.0) == 1.0  # known at start: no ramp


@pytest.mark.unit
def test_deadlines_and_load_travel_on_the_wire():
    import numpy as np

    request = BatchRequest("b1", ["i1", "i2"], np.zeros((2, 2, 2, 3), np.uint8), deadlines_ms=[150.0, None])
    assert BatchRequest.decode(request.encode()).deadlines_ms == [150.0, None]
    assert BatchRequest.decode(BatchRequest("b2", ["i"], np.zeros((1, 2, 2, 3), np.uint8)).encode()).deadlines_ms is None
    reply = BatchReply("b1", "w", "m", [], load=WorkerLoad(7, 3, 4.5))
    assert BatchReply.decode(reply.encode()).load == WorkerLoad(7, 3, 4.5)


@pytest.mark.unit
def test_open_loop_arrivals_are_seeded_and_at_the_rate():
    poisson = arrival_times(100, 20)
    assert poisson == arrival_times(100, 20) and 1800 < len(poisson) < 2200
    assert arrival_times(50, 2, "constant") == [i / 50 for i in range(100)]


@pytest.mark.unit
def test_open_loop_latency_counts_from_the_scheduled_time():
    async def main():
        lock = asyncio.Lock()

        async def send():  # a server that answers one request at a time, 20 ms each
            async with lock:
                await asyncio.sleep(0.02)
        return await run_open_loop(send, rate=100, duration_s=1, arrivals="constant")
    r = asyncio.run(main()).summary()
    # Sent every 10 ms into a 20 ms server: the queue grows all second; the last requests
    # wait ~1 s, which a closed-loop client (sending on each answer) would never show.
    assert r["scheduled"] == 100 and r["ok"] == 100
    assert r["p99_ms"] > 800 and r["p50_ms"] > 400


@pytest.mark.system
async def test_peak_ewma_sends_less_to_a_throttled_worker(start_worker, start_proxy, service, coffee_jpeg):
    """A worker made slow (SIGSTOP/SIGCONT duty cycle stands in for a CPU quota: a quarter
    of the time running) gets a small share under peak-ewma, and nothing fails."""
    fast, slow = start_worker("--service-name", service), start_worker("--service-name", service)
    proxy = start_proxy("--service-name", service, "--policy", "peak-ewma", "--slow-start", "0",
                        "--stall-timeout", "5")
    wait_for(lambda: len(proxy.workers()["workers"]) == 2, what="both workers known")
    stop = asyncio.Event()

    async def duty_cycle():  # 25 ms running, 75 ms stopped
        while not stop.is_set():
            slow.signal(signal.SIGSTOP)
            await asyncio.sleep(0.075)
            slow.signal(signal.SIGCONT)
            await asyncio.sleep(0.025)
    throttle = asyncio.create_task(duty_cycle())
    try:
        async with aiohttp.ClientSession() as s:
            async def send():
                status, body = await post_photo(s, proxy.url, coffee_jpeg)
                assert status == 200, body
            result = await run_open_loop(send, rate=25, duration_s=6)
    finally:
        stop.set()
        await throttle
        slow.signal(signal.SIGCONT)
    assert result.errors == {} and result.ok == result.scheduled
    served = {w["id"]: w["served"] for w in proxy.workers()["workers"]}
    assert served[slow.worker_id] < 0.35 * served[fast.worker_id], served


@pytest.mark.system
async def test_deadline_refused_at_admission_and_never_answered_late(start_worker, start_proxy, service,
                                                                     coffee_jpeg):
    worker = start_worker("--service-name", service)
    proxy = start_proxy("--service-name", service)
    wait_for(lambda: len(proxy.workers()["workers"]) == 1, what="worker known")
    async with aiohttp.ClientSession() as s:
        async def post(url: str, timeout_ms: int):
            started = time.monotonic()
            status, body = await post_photo(s, url, coffee_jpeg, {"X-Request-Timeout-Ms": str(timeout_ms)})
            return status, body, (time.monotonic() - started) * 1000

        assert (await post(proxy.url, 5000))[0] == 200  # the worker learns its pace
        # 60 at once with 300 ms each: the queue can answer only some in time; the rest are
        # refused at once (the queue's predicted wait) or dropped when their time is up.
        for url in (worker.url, proxy.url):
            answers = await asyncio.gather(*(post(url, 300) for _ in range(60)))
            statuses = Counter(status for status, _, _ in answers)
            assert set(statuses) <= {200, 504} and statuses[200] > 0 and statuses[504] > 0, \
                sorted((ms, body.get("error")) for _, body, ms in answers)[:5]
            codes = {body["error"]["code"] for status, body, _ in answers if status == 504}
            assert codes == {"timeout"}
        # Arrivals past what one worker can take (~1.5x here), 200 ms each, through the
        # proxy: a 200 comes in time (50 ms allowed for this client's own event loop, which
        # sends and reads all of them), the rest is 504, nothing else.
        seen = []

        async def send():
            status, _, ms = await post(proxy.url, 200)
            seen.append((status, ms))
        await run_open_loop(send, rate=150, duration_s=3)
        late = [ms for status, ms in seen if status == 200 and ms > 250]
        assert {status for status, _ in seen} <= {200, 504} and len(late) <= 0.02 * len(seen), late
        bad = await s.post(worker.url, data=b"x", headers={"X-Request-Timeout-Ms": "soon"})
        assert bad.status == 422 and (await bad.json())["error"]["code"] == "invalid_parameter"
    samples = scrape(worker.url)
    assert value(samples, "imagecluster_http_requests_total", protocol="native", route="/", method="POST",
                 status="504") > 0


@pytest.mark.system
async def test_the_ejection_cap_keeps_half_the_workers(start_worker, start_proxy, service, coffee_jpeg):
    """Two of three workers frozen: only one is ejected (50% of 3 rounds down to 1); the
    other stays in the set, as Envoy's panic threshold does."""
    workers = [start_worker("--service-name", service) for _ in range(3)]
    proxy = start_proxy("--service-name", service, "--stall-timeout", "0.5", "--worker-timeout", "1",
                        "--ejection-time", "30")
    wait_for(lambda: len(proxy.workers()["workers"]) == 3, what="three workers known")
    for w in workers[:2]:
        w.signal(signal.SIGSTOP)
    try:
        async with aiohttp.ClientSession() as s:
            answers = await asyncio.gather(*(post_photo(s, proxy.url, coffee_jpeg) for _ in range(12)))
        statuses = [status for status, _ in answers]
        state = proxy.workers()
        ejected = [w["id"] for w in state["workers"] if not w["live"]]
        assert len(ejected) == 1 and state["ejections_capped"] >= 1, state
        assert statuses.count(200) >= 1
    finally:
        for w in workers[:2]:
            w.signal(signal.SIGCONT)


@pytest.mark.system
async def test_lookups_spread_by_reported_load(start_worker, start_proxy, service, coffee_jpeg):
    """p2p: the proxy sees none of the requests, yet power-of-two spreads lookups by what the
    workers report (and by the lookups it handed out since)."""
    workers = [start_worker("--service-name", service) for _ in range(3)]
    proxy = start_proxy("--service-name", service, "--policy", "power-of-two", "--slow-start", "0")
    wait_for(lambda: len(proxy.workers()["workers"]) == 3, what="three workers known")
    async with aiohttp.ClientSession() as s:
        async def p2p():
            async with s.get(proxy.url) as r:
                address = (await r.text()).strip()
            status, body = await post_photo(s, f"http://{address}", coffee_jpeg)
            assert status == 200
            return body["worker"]
        result = await run_open_loop(p2p, rate=30, duration_s=4)
        async with s.get(proxy.url + "/lookup") as r:
            assert "load" in await r.json()
    assert result.errors == {}
    counts = Counter()
    for w in workers:
        async with aiohttp.ClientSession() as s, s.get(w.url + "/stats") as r:
            counts[w.worker_id] = (await r.json())["served"]
    assert min(counts.values()) >= 0.15 * sum(counts.values()), counts


@pytest.mark.system
async def test_the_clients_timeout_bounds_a_classify_retries_included(start_worker, start_proxy, service,
                                                                      coffee_jpeg):
    """--timeout / deadline_s: the header goes out and the whole call, retries included,
    ends by its deadline even when the only worker is frozen."""
    from client import Client
    from client.api import ClassifyError

    worker = start_worker("--service-name", service)
    proxy = start_proxy("--service-name", service, "--stall-timeout", "5")
    wait_for(lambda: len(proxy.workers()["workers"]) == 1, what="worker known")
    async with Client(proxy.url, deadline_s=2.0) as client:
        assert (await client.classify(coffee_jpeg, mode="proxy"))["predictions"][0]["index"] == 967
    worker.signal(signal.SIGSTOP)
    try:
        async with Client(proxy.url, deadline_s=0.5) as client:
            started = time.monotonic()
            with pytest.raises((ClassifyError, asyncio.TimeoutError)):
                await client.classify(coffee_jpeg, mode="proxy")
            assert time.monotonic() - started < 1.5
    finally:
        worker.signal(signal.SIGCONT)


@pytest.mark.system
async def test_the_retry_budget_stops_retries_on_real_processes(start_worker, start_proxy, service, coffee_jpeg):
    """No budget at all: a request whose worker timed out is not retried on the healthy
    one; it gets a fast 503 overloaded, and /workers counts the refused retry."""
    frozen, _healthy = start_worker("--service-name", service), start_worker("--service-name", service)
    proxy = start_proxy("--service-name", service, "--policy", "round-robin", "--worker-timeout", "0.5",
                        "--stall-timeout", "30", "--retry-budget", "0", "--min-retries-per-second", "0",
                        "--consecutive-failures", "100")
    wait_for(lambda: len(proxy.workers()["workers"]) == 2, what="both workers known")
    frozen.signal(signal.SIGSTOP)
    try:
        async with aiohttp.ClientSession() as s:
            answers = []
            for _ in range(4):  # round-robin: some go to the frozen worker
                status, body = await post_photo(s, proxy.url, coffee_jpeg)
                answers.append((status, body.get("error", {}).get("code")))
    finally:
        frozen.signal(signal.SIGCONT)
    refused = answers.count((503, "overloaded"))
    assert set(answers) <= {(200, None), (503, "overloaded")} and refused >= 1, answers
    assert proxy.workers()["retries_over_budget"] == refused


@pytest.mark.system
async def test_a_new_worker_ramps_up_in_slow_start(start_worker, start_proxy, service, coffee_jpeg):
    first = start_worker("--service-name", service)
    proxy = start_proxy("--service-name", service, "--policy", "round-robin", "--slow-start", "4")
    wait_for(lambda: len(proxy.workers()["workers"]) == 1, what="first worker known")
    second = start_worker("--service-name", service)
    wait_for(lambda: len(proxy.workers()["workers"]) == 2, what="second worker known")
    joined = time.monotonic()

    async def shares(n: int) -> float:
        before = {w["id"]: w["served"] for w in proxy.workers()["workers"]}
        async with aiohttp.ClientSession() as s:
            for _ in range(n):
                assert (await post_photo(s, proxy.url, coffee_jpeg))[0] == 200
        after = {w["id"]: w["served"] for w in proxy.workers()["workers"]}
        return (after[second.worker_id] - before.get(second.worker_id, 0)) / n

    early = await shares(30)  # its first second or so: offered 10-35% of round-robin's half
    state = {w["id"]: w for w in proxy.workers()["workers"]}
    assert state[second.worker_id]["slow_start"] and not state[first.worker_id]["slow_start"]
    await asyncio.sleep(max(0.0, 4.5 - (time.monotonic() - joined)))
    ramped = await shares(30)  # past the window: round-robin's half
    assert early < 0.3 and ramped >= 0.4, (early, ramped)


@pytest.mark.system
async def test_a_queue_bounded_in_time_refuses_fast(start_worker, coffee_jpeg):
    """--max-queue-wait-ms: past that predicted wait, 503 overloaded at once, without a
    client deadline; what is accepted is answered."""
    worker = start_worker("--max-queue-wait-ms", "60")
    async with aiohttp.ClientSession() as s:
        for _ in range(3):  # the pace is learnt past each lane's cold first batch
            assert (await post_photo(s, worker.url, coffee_jpeg))[0] == 200
        answers = await asyncio.gather(*(post_photo(s, worker.url, coffee_jpeg) for _ in range(40)))
    statuses = Counter(status for status, _ in answers)
    assert set(statuses) == {200, 503}, statuses
    messages = {body["error"]["message"] for status, body in answers if status == 503}
    assert all("--max-queue-wait-ms 60" in m for m in messages), messages
