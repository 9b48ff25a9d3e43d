"""The autoscaler's decisions in process: no flapping at a steady load, bursts shorter
than the delay ignored, scale-down only after its delay and with headroom, the bounds."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.policy import ScalePolicy, Scaler

pytestmark = pytest.mark.unit

POLICY = ScalePolicy(min_workers=1, max_workers=8, target_in_flight=4, hysteresis=0.3,
                     upscale_delay=2, downscale_delay=10)


def run(loads, policy: ScalePolicy = POLICY, start: int = 1, step: float = 0.5) -> tuple[int, list]:
    """Feed one load per look (every `step` s), applying each decision; (workers, changes)."""
    scaler, workers, changes = Scaler(policy), start, []
    for i, load in enumerate(loads):
        d = scaler.decide(i * step, workers, load)
        if d.direction != "hold":
            changes.append((i * step, d.direction, workers, d.desired, d.reason))
            workers = d.desired
    return workers, changes


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.floats(0, 40), st.integers(1, 8))
def test_a_steady_load_changes_the_count_at_most_once(load, start):
    workers, changes = run([load] * 400, start=start)
    assert len(changes) <= 1, changes
    needed = min(8, max(1, math.ceil(load / 4)))  # what the load needs at the target
    fits = min(8, max(1, math.ceil(load / (4 * 0.7))))  # what it fits in with headroom
    assert needed <= workers <= max(needed, min(start, fits))  # enough, and no more than the band allows


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.floats(2, 30), st.floats(0.0, 0.25), st.integers(0, 10_000))
def test_noise_around_a_level_does_not_flap(level, noise, seed):
    import random

    rng = random.Random(seed)
    loads = [level * (1 + rng.uniform(-noise, noise)) for _ in range(600)]  # 5 minutes of looks
    workers, changes = run(loads)
    assert all(c[1] == "up" for c in changes), changes  # never back and forth
    assert workers <= math.ceil(level * (1 + noise) / 4)  # never more than the peaks need


def test_a_burst_shorter_than_the_delay_is_ignored():
    workers, changes = run([1] * 10 + [32] * 3 + [1] * 30)  # 1.5 s of burst, delay 2 s
    assert workers == 1 and changes == []


def test_step_up_at_once_then_down_only_after_the_delay_with_headroom():
    loads = [2] * 10 + [24] * 20 + [2] * 40
    workers, changes = run(loads)
    (t_up, d1, _, up_to, _), (t_down, d2, _, down_to, reason) = changes
    assert (d1, up_to) == ("up", 6) and 5 + 2 <= t_up <= 5 + 2.5  # the whole need, after the delay
    assert (d2, down_to) == ("down", 1) and t_down >= 15 + 10  # after the 10 s delay
    assert "headroom" in reason and workers == 1


def test_after_a_scale_down_each_worker_has_headroom():
    for load in (5, 9, 13, 17.5, 23):
        workers, _ = run([40] * 20 + [load] * 60)
        assert load / workers <= 4 * (1 - 0.3) + 1e-9 or workers == 8


def test_bounds_are_kept():
    assert run([1000] * 20)[0] == 8
    assert run([0] * 40, start=5)[0] == 1
    scaler = Scaler(POLICY)
    assert scaler.decide(0, 0, 0).desired == 1  # below the minimum: up at once
    with pytest.raises(ValueError):
        ScalePolicy(min_workers=3, max_workers=2)
