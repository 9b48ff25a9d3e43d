"""The proxy's recent traffic: every inference answer of the last minute, on any protocol,
refusals and failures included (the status page's figures)."""

from __future__ import annotations

import time
from collections import deque

import numpy as np

REFUSED = frozenset({429, 503})  # "busy, or no worker: try again" (Retry-After), apart from errors


class RecentWindow:
    def __init__(self, horizon_s: float = 60.0, max_items: int = 100_000):
        self.horizon_s = horizon_s
        self._items: deque[tuple[float, float, int]] = deque(maxlen=max_items)  # (time, ms, status)

    def record(self, status: int, seconds: float) -> None:
        """One inference answer, whatever its protocol (edge's ANSWERED hook, and gRPC's)."""
        self._items.append((time.monotonic(), seconds * 1000, status))

    def summary(self, window_s: float = 10.0) -> dict:
        now = time.monotonic()
        while self._items and self._items[0][0] < now - self.horizon_s:
            self._items.popleft()
        recent = [(ms, status) for t, ms, status in self._items if t >= now - window_s]
        ok = [ms for ms, status in recent if status == 200]
        return {
            "window_s": window_s,
            "requests": len(recent),
            "per_second": round(len(recent) / window_s, 2),
            "errors": sum(1 for _, status in recent if status >= 400 and status not in REFUSED),
            "refused": sum(1 for _, status in recent if status in REFUSED),
            "p50_ms": round(float(np.percentile(ok, 50)), 1) if ok else None,
            "p99_ms": round(float(np.percentile(ok, 99)), 1) if ok else None,
        }
