"""Worker selection policies: given the live workers, pick one.

round-robin and least-outstanding look only at this proxy's own requests;
power-of-two and peak-ewma also at what the workers report (proxy/balance.py), so they
see load from other proxies and p2p clients, and they serve lookups as well as forwarding.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Sequence
from typing import Protocol

from edge.config import numbered
from proxy.balance import WorkerBalance


class Candidate(Protocol):
    balance: WorkerBalance

    @property
    def outstanding(self) -> int: ...


class RoundRobin:
    """Each worker in turn: even spread when workers are alike."""

    name = "round-robin"

    def __init__(self):
        self._turn = itertools.count()

    def choose(self, candidates: Sequence[Candidate]) -> Candidate:
        return candidates[next(self._turn) % len(candidates)]


class LeastOutstanding:
    """The worker with the fewest requests in flight from this proxy: faster workers
    drain their share sooner and so get more. Ties go round-robin."""

    name = "least-outstanding"

    def __init__(self):
        self._turn = itertools.count()

    def choose(self, candidates: Sequence[Candidate]) -> Candidate:
        fewest = min(c.outstanding for c in candidates)
        tied = [c for c in candidates if c.outstanding == fewest]
        return tied[next(self._turn) % len(tied)]


class PowerOfTwo:
    """Two workers at random, the one with less load: this proxy's outstanding requests,
    the queue the worker last reported from everyone else, and lookups since (Mitzenmacher's
    power of two choices: nearly the best pick's balance, without herding on one worker)."""

    name = "power-of-two"

    def __init__(self, rng: random.Random | None = None):
        self.rng = rng or random.Random()

    def cost(self, candidate: Candidate, now: float, default_ms: float) -> float:
        return candidate.balance.load(now)

    def choose(self, candidates: Sequence[Candidate]) -> Candidate:
        if len(candidates) == 1:
            return candidates[0]
        now = time.monotonic()
        default_ms = typical_service_ms(candidates)
        a, b = self.rng.sample(list(candidates), 2)
        return a if self.cost(a, now, default_ms) <= self.cost(b, now, default_ms) else b


class PeakEwma(PowerOfTwo):
    """Power of two choices on the expected wait: (load + 1) x the worker's peak-EWMA compute
    time an image. A slow worker (throttled, or sharing its cores) costs more per request;
    failures and refusals raise it for a while, so a worker that refuses fast does not
    attract more traffic for it (Linkerd's finding)."""

    name = "peak-ewma"

    def cost(self, candidate: Candidate, now: float, default_ms: float) -> float:
        return candidate.balance.expected_ms(now, default_ms)


def typical_service_ms(candidates: Sequence[Candidate]) -> float:
    """What a worker that has not reported yet is assumed to take: the median of those that
    have (1 ms when none has), so a new worker is neither shunned nor flooded."""
    known = sorted(c.balance.service.value for c in candidates if c.balance.service.value > 0)
    return known[len(known) // 2] if known else 1.0


POLICIES = {cls.name: cls for cls in (RoundRobin, LeastOutstanding, PowerOfTwo, PeakEwma)}


def parse_split(text: str) -> dict[str, int]:
    """'1=90,2=10' -> {'1': 90, '2': 10}; ValueError names a bad entry (argparse shows it)."""
    weights = numbered(text, "VERSION=WEIGHT")
    if not all(version.isdigit() for version in weights):
        raise ValueError(f"bad split {text!r}: versions are numbers (VERSION=WEIGHT)")
    return {version: int(weight) for version, weight in weights.items()}


class VersionSplit:
    """Share traffic between model versions by weight (A/B tests), e.g. {"1": 90, "2": 10}.

    Smooth weighted round-robin (as in nginx): exact shares over every cycle of
    sum(weights) picks, and the versions interleave instead of arriving in runs. Only
    versions that some live worker serves take part; the shares rescale among them.
    """

    def __init__(self, weights: dict[str, int]):
        self.weights = {v: w for v, w in weights.items() if w > 0}
        self._current = dict.fromkeys(self.weights, 0)

    @classmethod
    def parse(cls, text: str) -> VersionSplit:
        """'1=90,2=10' -> VersionSplit({'1': 90, '2': 10})."""
        return cls(parse_split(text))

    def pick(self, available: set[str]) -> str | None:
        candidates = [v for v in self.weights if v in available]
        if not candidates:
            return None
        for v in candidates:
            self._current[v] += self.weights[v]
        best = max(candidates, key=self._current.__getitem__)
        self._current[best] -= sum(self.weights[v] for v in candidates)
        return best
