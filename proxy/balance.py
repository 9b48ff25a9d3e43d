"""What the proxy knows of each worker's load and health, for its policies and its
outlier detection, and the retry budget every request shares.

Load comes from two sides: the requests this proxy has outstanding at a worker, and what
the worker reports (worker/protocol.py, WorkerLoad) with every ZeroMQ reply and in the
/stats the pool polls: its queue (from every client, p2p ones too) and its recent compute
time an image. A lookup hands out a worker without seeing the request that follows, so
lookups since the last report count as load until the next report.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from worker.protocol import WorkerLoad

REPORT_FRESH_S = 2.0  # an older report says nothing about the queue now
ADMISSION_FRESH_S = 0.1  # the proxy refuses on a report no older than this
FAILURE_PENALTY = 5.0  # a failure or refusal looks this many times slower (Linkerd's bias against fast failures)
PENALTY_FLOOR_MS = 10.0


class PeakEwma:
    """A moving average that jumps to a higher sample at once and decays towards lower ones
    with time constant `tau_s` (Finagle's and Linkerd's peak EWMA): a slowing worker is seen
    at once, a recovered one over a few seconds."""

    def __init__(self, tau_s: float = 2.0):
        self.tau_s = tau_s
        self.value = 0.0
        self._at = 0.0

    def observe(self, sample: float, now: float) -> None:
        if sample >= self.value:
            self.value = sample
        else:
            weight = math.exp(-(now - self._at) / self.tau_s)
            self.value = self.value * weight + sample * (1 - weight)
        self._at = now


@dataclass
class WorkerBalance:
    """One worker's load and health as this proxy sees them."""

    joined: float = field(default_factory=time.monotonic)
    slow_start: bool = False  # ramp its share up from `joined` (a new or returning worker)
    outstanding: int = 0  # this proxy's requests at it
    lookups: int = 0  # workers handed out by lookups since the last report
    reported: WorkerLoad | None = None
    reported_at: float = 0.0
    others_queue: int = 0  # its queue at the last report, less what this proxy had outstanding then
    service: PeakEwma = field(default_factory=PeakEwma)  # ms an image, as it reports it
    reported_service_ms: float = 0.0  # the last report's, which a penalty multiplies (it never compounds)
    consecutive_failures: int = 0
    window_ok: int = 0  # answers in the outlier detector's current interval
    window_failed: int = 0

    def report(self, load: WorkerLoad, now: float) -> None:
        self.reported, self.reported_at = load, now
        self.others_queue = max(0, load.queue - self.outstanding)
        self.lookups = 0
        if load.service_ms > 0:
            self.reported_service_ms = load.service_ms
            self.service.observe(load.service_ms, now)

    def load(self, now: float) -> int:
        """Images ahead of a new request there: ours outstanding, others' queue when fresh,
        and the lookups handed out since."""
        others = self.others_queue if now - self.reported_at < REPORT_FRESH_S else 0
        return self.outstanding + others + self.lookups

    def expected_ms(self, now: float, default_service_ms: float) -> float:
        """The wait a new request would see: the load ahead of it and itself, at the
        worker's (peak) compute time an image."""
        return (self.load(now) + 1) * (self.service.value or default_service_ms)

    def predicted_wait_ms(self, now: float) -> float:
        """When a request sent now would start, at the pace the worker last reported; 0 unless
        that report is a tenth of a second old at most (a reply's, under load: a poll's can
        describe a burst that has since drained)."""
        if now - self.reported_at > ADMISSION_FRESH_S:
            return 0.0
        return self.load(now) * self.reported_service_ms

    def weight(self, now: float, window_s: float) -> float:
        """Its share of picks during slow start: from 10% to all over `window_s`."""
        if not self.slow_start or window_s <= 0:
            return 1.0
        return min(1.0, max(0.1, (now - self.joined) / window_s))

    def succeeded(self) -> None:
        self.consecutive_failures = 0
        self.window_ok += 1

    def failed(self, now: float, refused: bool) -> None:
        """A failure, or a refusal (the worker answered that it is full or too far behind):
        either makes it look slower for a while; only a failure counts towards ejection."""
        if not refused:
            self.consecutive_failures += 1
            self.window_failed += 1
        self.service.observe(FAILURE_PENALTY * max(self.reported_service_ms, PENALTY_FLOOR_MS), now)


class RetryBudget:
    """Retries may be at most `ratio` of the requests of the last `window_s` seconds, plus
    `min_per_s` a second (Linkerd's and Finagle's retry budget): a failing cluster is not
    sent a multiple of its load."""

    def __init__(self, ratio: float = 0.2, min_per_s: float = 10.0, window_s: float = 10.0):
        self.ratio, self.min_per_s, self.window_s = ratio, min_per_s, window_s
        self._requests: list[int] = [0] * int(window_s)  # one bucket a second
        self._retries: list[int] = [0] * int(window_s)
        self._second = 0
        self.refused = 0  # retries the budget did not allow

    def _advance(self, now: float) -> int:
        second = int(now)
        if second - self._second >= len(self._requests):
            self._requests = [0] * len(self._requests)
            self._retries = [0] * len(self._retries)
        else:
            for s in range(self._second + 1, second + 1):
                self._requests[s % len(self._requests)] = 0
                self._retries[s % len(self._retries)] = 0
        self._second = max(self._second, second)
        return second % len(self._requests)

    def request(self, now: float) -> None:
        self._requests[self._advance(now)] += 1

    def try_retry(self, now: float) -> bool:
        """Spend one retry, if the budget has one."""
        slot = self._advance(now)
        allowed = self.ratio * sum(self._requests) + self.min_per_s * self.window_s
        if sum(self._retries) + 1 > allowed:
            self.refused += 1
            return False
        self._retries[slot] += 1
        return True
