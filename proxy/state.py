"""What the proxy's fronts share: its state, admission of a request, and where a request
may go (version routing and the A/B split)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from discovery.watcher import ServiceWatcher
from edge.errors import ApiError, retry_later
from edge.inference import pick_model
from proxy.config import ProxyConfig
from proxy.forward import ForwardStats, Route
from proxy.policy import VersionSplit
from proxy.pool import WorkerPool
from proxy.recent import RecentWindow

if TYPE_CHECKING:
    from edge.v2_grpc import GrpcFront


@dataclass
class ProxyState:
    config: ProxyConfig
    pool: WorkerPool
    watcher: ServiceWatcher
    splits: dict[str, VersionSplit] = field(default_factory=dict)  # per model, each with its own exact shares
    stats: ForwardStats = field(default_factory=ForwardStats)
    recent: RecentWindow = field(default_factory=RecentWindow)  # fed by the fronts (proxy/app.py)
    in_flight: int = 0
    grpc: GrpcFront | None = None  # the gRPC front, once started: a drain stops it first

    def split(self, model: str) -> VersionSplit | None:
        """The configured --split for `model`'s versions (None without one)."""
        if not self.config.split:
            return None
        return self.splits.setdefault(model, VersionSplit(self.config.split))


STATE = web.AppKey("proxy_state", ProxyState)


def check_capacity(state: ProxyState) -> None:
    """503 now at --max-in-flight requests, or with no live worker: before a body is read."""
    if state.in_flight >= state.config.max_in_flight:
        raise retry_later("overloaded", f"{state.in_flight} requests in flight")
    if not state.pool.live():
        raise retry_later("no_worker", "no live worker")


@contextlib.asynccontextmanager
async def admitted(state: ProxyState) -> AsyncIterator[None]:
    """One accepted request, whatever its protocol, its body read: refused at once beyond
    --max-in-flight or with no live worker; counted in flight."""
    check_capacity(state)
    state.in_flight += 1
    try:
        yield
    finally:
        state.in_flight -= 1


def route_for(state: ProxyState, model: str | None, version: str | None) -> Route:
    """The model asked for (none: the default; 404 when no live worker serves it); an
    asked-for version is strict; otherwise the configured split, if any."""
    model = pick_model(model, state.pool.models(), state.config.edge.default_model)
    if version is not None:
        if not version.isdigit():
            raise ApiError(422, "invalid_parameter", f"version must be a version number, got {version!r}")
        return Route(model, version, strict=True)
    split = state.split(model)
    if split:
        return Route(model, split.pick(state.pool.versions(model)))
    return Route(model)
