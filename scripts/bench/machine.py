"""What a benchmark ran on, so that every figure it writes can name the machine and date."""

from __future__ import annotations

import datetime
import os
import platform
import re
from pathlib import Path

# The instruction sets that move this project's figures (see the performance page).
FEATURES = ("avx", "avx2", "avx512f", "avx512_fp16", "amx_tile")


def describe(cpuinfo: str | None = None) -> dict:
    """The CPU model, its core count, the instruction sets above that it has, and now (UTC)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    flags = re.search(r"^flags\s*:(.*)$", cpuinfo, re.M)
    have = set(flags.group(1).split()) if flags else set()
    return {"cpu": model.group(1).strip() if model else platform.processor() or "unknown",
            "cores": os.cpu_count(),
            "features": [f for f in FEATURES if f in have],
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def label(machine: dict) -> str:
    """One line for a caption: 'AMD EPYC, 2 cores (avx), 2026-12-07 18:02 UTC'."""
    features = ", ".join(machine["features"]) or "no AVX"
    return f"{machine['cpu']}, {machine['cores']} cores ({features}), {machine['date']}"
