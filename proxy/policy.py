"""Worker selection policies: given the live workers, pick one."""

from __future__ import annotations

import itertools
from typing import Protocol, Sequence


class Candidate(Protocol):
    outstanding: int


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


POLICIES = {cls.name: cls for cls in (RoundRobin, LeastOutstanding)}
