"""Load the served models, and hot-swap each to a newer version when one appears.

TF Serving's layout: REPOSITORY/NAME/<version>/. Every `poll_s` the worker looks, for
each model it serves, for a version number above the one it serves. It loads and warms
the new version off the event loop while the old one keeps serving, then swaps the
reference that model's batcher reads at each batch start: no request waits, none fails,
and each answer names the version that computed it. A version whose input shape differs
is refused (proxies preprocess by the shape published at registration; restart the
worker for that). A version that fails to load is logged once and not retried until a
newer one appears. Versions are written atomically (worker/repository.py), so a
half-written one is never seen.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from edge.tasks import cancel
from worker.config import WorkerConfig
from worker.model import Model, ModelError, load_model, newest_version
from worker.repository import model_names

log = logging.getLogger(__name__)


def load_configured_model(config: WorkerConfig, name: str) -> Model:
    """The newest version of model `name` in the repository, on the configured backend."""
    return load_model(config.model_repository / name, backend=config.backend,
                      intra_op_threads=config.intra_op_threads, inter_op_threads=config.inter_op_threads,
                      batch_interpreters=config.batch_interpreters,
                      preprocessing=config.preprocessing, fp32=config.fp32)


def load_configured_models(config: WorkerConfig) -> list[Model]:
    """Every configured model (or every model in the repository); ModelError names what failed."""
    return [load_configured_model(config, name) for name in model_names(config.model_repository, config.models)]


class VersionWatcher:
    def __init__(self, state, on_swap: Callable[[Model], Awaitable[None]], poll_s: float = 2.0):
        self.state = state
        self.on_swap = on_swap
        self.poll_s = poll_s
        self._refused: set[tuple[str, str]] = set()  # (model, version)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="version-watcher")

    async def close(self) -> None:
        await cancel(self._task)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            for name in list(self.state.batchers):
                try:
                    await self.check(name)
                except Exception:  # a bad directory must not stop the watching
                    log.exception("checking for a new version of %s failed", name)

    async def check(self, name: str) -> None:
        config, batcher = self.state.config, self.state.batchers[name]
        current = batcher.model
        try:
            newest = newest_version(config.model_repository / name).name
        except (ModelError, OSError):
            return
        if int(newest) <= int(current.version) or (name, newest) in self._refused:
            return
        log.info("%s: found version %s (serving %s): loading it in the background", name, newest, current.version)
        try:
            model = await asyncio.get_running_loop().run_in_executor(None, load_configured_model, config, name)
        except Exception as exc:
            self._refused.add((name, newest))
            log.error("%s: version %s failed to load, still serving %s: %s", name, newest, current.version, exc)
            return
        if model.input_shape != current.input_shape:
            self._refused.add((name, model.version))
            log.error("%s: version %s takes %s, not %s: a hot swap needs the same input shape; restart to serve it",
                      name, model.version, model.input_shape, current.input_shape)
            return
        batcher.swap(model)  # the next batch uses it
        log.info("%s: now serving version %s (loaded in %.2f s)", name, model.version, model.load_seconds)
        await self.on_swap(model)
