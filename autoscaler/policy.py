"""How many workers a model needs: pure decisions, no I/O (tests/test_autoscale_policy.py).

The load is the model's images in flight on its workers (accepted and not yet answered:
queued or computing, whichever door they came in by, so p2p traffic counts). A worker
should carry about `target_in_flight` of them.

- Up: the workers the load needs, ceil(load / target), sustained: the smallest such need
  over the last `upscale_delay` seconds must exceed the current count (a burst shorter
  than the delay does nothing; a real step adds all the workers it needs at once).
- Down: the workers the load fits in *with headroom*, ceil(load / (target x (1 -
  hysteresis))), sustained: the largest such need over the last `downscale_delay` seconds
  must be below the current count. After scaling down, each remaining worker carries at
  most (1 - hysteresis) of the target, so the next look cannot want to scale back up: the
  band between the two rules is what makes flapping impossible at a steady load.
- Always within [min_workers, max_workers].
The peers' users complain of oscillation (Ray, Knative) and slow or stuck scale-down;
these are the two knobs for them, both in seconds, and every decision carries its reason.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class ScalePolicy:
    min_workers: int = 1
    max_workers: int = 4
    target_in_flight: float = 4.0  # images in flight per worker
    hysteresis: float = 0.3  # headroom a scale-down must leave (fraction of the target)
    upscale_delay: float = 2.0  # seconds a need for more workers must last
    downscale_delay: float = 30.0  # seconds a need for fewer must last

    def __post_init__(self):
        if not 1 <= self.min_workers <= self.max_workers:
            raise ValueError(f"need 1 <= min ({self.min_workers}) <= max ({self.max_workers})")
        if self.target_in_flight <= 0 or not 0 <= self.hysteresis < 1:
            raise ValueError("target_in_flight must be > 0 and hysteresis in [0, 1)")


@dataclass(frozen=True)
class Decision:
    at: float
    direction: str  # "up", "down" or "hold"
    current: int
    desired: int
    load: float
    reason: str


class Scaler:
    """One model's decisions over time; `decide` is called at every look."""

    def __init__(self, policy: ScalePolicy):
        self.policy = policy
        self._needs: deque[tuple[float, int, int]] = deque()  # (time, workers needed, workers it fits in)

    def _clamp(self, n: int) -> int:
        return max(self.policy.min_workers, min(self.policy.max_workers, n))

    def _sustained(self, now: float, delay: float, index: int, pick) -> int | None:
        """pick() of the needs over the last `delay` seconds, once they span that long."""
        if not self._needs or self._needs[0][0] > now - delay:
            return None
        return pick(n[index] for n in self._needs if n[0] >= now - delay)

    def decide(self, now: float, current: int, load: float) -> Decision:
        p = self.policy
        needed = self._clamp(math.ceil(load / p.target_in_flight))
        fits = self._clamp(math.ceil(load / (p.target_in_flight * (1 - p.hysteresis))))
        self._needs.append((now, needed, fits))
        horizon = now - max(p.upscale_delay, p.downscale_delay) - 1.0
        while self._needs and self._needs[0][0] < horizon:
            self._needs.popleft()
        if current < p.min_workers or current > p.max_workers:
            desired = self._clamp(current)
            return Decision(now, "up" if desired > current else "down", current, desired, load,
                            f"outside [{p.min_workers}, {p.max_workers}]")
        up = self._sustained(now, p.upscale_delay, 1, min)
        if up is not None and up > current:
            return Decision(now, "up", current, up, load,
                            f"load {load:g} has needed {up} workers at {p.target_in_flight:g} each "
                            f"for {p.upscale_delay:g} s")
        down = self._sustained(now, p.downscale_delay, 2, max)
        if down is not None and down < current:
            return Decision(now, "down", current, down, load,
                            f"load has fitted in {down} workers with {p.hysteresis:.0%} headroom "
                            f"for {p.downscale_delay:g} s")
        return Decision(now, "hold", current, current, load, "within the band")
