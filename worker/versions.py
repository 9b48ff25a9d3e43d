"""Hot model swap: notice a newer version directory, load it beside the running one, and
switch between two batches.

TF Serving's layout: MODEL_DIR/<version>/. Every `poll_s` the worker looks for a version
number above the one it serves. It loads and warms the new model off the event loop
while the old one keeps serving, then swaps the reference the batcher reads at each batch
start: no request waits, none fails, and each answer names the version that computed it.
A version whose input shape differs is refused (the proxy preprocesses by the shape
published at registration; restart the worker for that). A version that fails to load is
logged once and not retried until a newer one appears.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from edge.tasks import cancel
from worker.config import WorkerConfig
from worker.model import Model, ModelError, load_model, newest_version

log = logging.getLogger(__name__)


def load_configured_model(config: WorkerConfig) -> Model:
    """The newest version in the configured model directory, on the configured backend."""
    return load_model(config.model_dir, backend=config.backend, intra_op_threads=config.intra_op_threads,
                      inter_op_threads=config.inter_op_threads, preprocessing=config.preprocessing)


class VersionWatcher:
    def __init__(self, state, on_swap: Callable[[Model], Awaitable[None]], poll_s: float = 2.0):
        self.state = state
        self.on_swap = on_swap
        self.poll_s = poll_s
        self._refused: set[str] = set()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="version-watcher")

    async def close(self) -> None:
        await cancel(self._task)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.check()
            except Exception:  # a bad directory must not stop the watching
                log.exception("checking for a new model version failed")

    async def check(self) -> None:
        config, current = self.state.config, self.state.model
        try:
            newest = newest_version(config.model_dir).name
        except (ModelError, OSError):
            return
        if int(newest) <= int(current.version) or newest in self._refused:
            return
        log.info("found version %s (serving %s): loading it in the background", newest, current.version)
        try:
            model = await asyncio.get_running_loop().run_in_executor(None, load_configured_model, config)
        except Exception as exc:
            self._refused.add(newest)
            log.error("version %s failed to load, still serving %s: %s", newest, current.version, exc)
            return
        if model.input_shape != current.input_shape:
            self._refused.add(model.version)
            log.error("version %s takes %s, not %s: a hot swap needs the same input shape; restart to serve it",
                      model.version, model.input_shape, current.input_shape)
            return
        self.state.batcher.swap(model)  # the next batch uses it
        log.info("now serving version %s (loaded in %.2f s)", model.version, model.load_seconds)
        await self.on_swap(model)
