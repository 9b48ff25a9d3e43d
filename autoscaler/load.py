"""The load the workers already measure: every passing worker of the service (the live set
discovery.watcher keeps from Consul), and its `imagecluster_in_flight` gauge (images
accepted and not yet answered) from its own /metrics. Workers of every entry point count,
p2p traffic included."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from discovery.watcher import Instance
from worker.protocol import ProtocolError, WorkerMeta

log = logging.getLogger(__name__)
GAUGE = "imagecluster_in_flight"


@dataclass
class WorkerLoad:
    worker_id: str
    address: str  # host:port of its HTTP front
    models: tuple[str, ...]  # the models it serves
    in_flight: float | None = None  # None: its /metrics did not answer


def in_flight(text: str) -> float:
    for family in text_string_to_metric_families(text):
        if family.name == GAUGE:
            return float(family.samples[0].value)
    raise ValueError(f"no {GAUGE} in the scrape")


async def scrape(session: aiohttp.ClientSession, worker: WorkerLoad, token: str | None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with session.get(f"http://{worker.address}/metrics", headers=headers) as r:
            worker.in_flight = in_flight(await r.text()) if r.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        log.info("could not read %s's load: %s", worker.worker_id, exc)


async def observe(instances: dict[str, Instance], session: aiohttp.ClientSession,
                  token: str | None) -> list[WorkerLoad]:
    """Every worker among the passing `instances`, with its in-flight count."""
    workers = []
    for worker_id, instance in instances.items():
        try:
            meta = WorkerMeta.from_meta(instance.meta)
        except ProtocolError:
            continue
        workers.append(WorkerLoad(worker_id, instance.http_address, tuple(meta.models)))
    await asyncio.gather(*(scrape(session, w, token) for w in workers))
    return workers
