"""Worker selection policies: given the live workers, pick one."""

from __future__ import annotations

import itertools
from typing import Protocol, Sequence

from edge.config import numbered


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
    def parse(cls, text: str) -> "VersionSplit":
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
