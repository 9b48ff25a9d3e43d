"""Request ids travel from the proxy to the worker and back in a header; each process
logs one line per request carrying the id (JSON lines with --log-format json)."""

from __future__ import annotations

import json
import re
import uuid

import aiohttp
import pytest

from tests.processes import wait_for

pytestmark = pytest.mark.system


def json_lines(path) -> list[dict]:
    lines = []
    for line in path.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue  # a library's own non-JSON output (e.g. the TFLite delegate banner)
    return lines


async def post(url: str, data: bytes, headers: dict | None = None):
    form = aiohttp.FormData()
    form.add_field("data", data, filename="p.jpg", content_type="image/jpeg")
    async with aiohttp.ClientSession() as s, s.post(url, data=form, headers=headers or {}) as r:
        return r.status, r.headers.get("X-Request-ID"), await r.json()


async def test_request_id_travels_proxy_to_worker_and_back(start_worker, start_proxy, artifacts_dir, request,
                                                           coffee_jpeg):
    service = f"classifier-{uuid.uuid4().hex[:6]}"
    worker = start_worker("--service-name", service, "--log-format", "json")
    proxy = start_proxy("--service-name", service, "--log-format", "json").wait_live(1)
    worker_log = artifacts_dir / f"worker-{request.node.name}-0.log"
    proxy_log = artifacts_dir / f"proxy-{request.node.name}-0.log"

    rid = f"trace-{uuid.uuid4().hex[:8]}.1"
    status, echoed, body = await post(proxy.url, coffee_jpeg, {"X-Request-ID": rid})
    assert status == 200 and echoed == rid

    def line_for(log, **fields):
        return next((e for e in json_lines(log) if all(e.get(k) == v for k, v in fields.items())), None)

    proxy_line = wait_for(lambda: line_for(proxy_log, request_id=rid), what="the proxy's log line")
    assert proxy_line["status"] == 200 and proxy_line["path"] == "/" and proxy_line["worker"] == worker.worker_id
    worker_line = wait_for(lambda: line_for(worker_log, request_id=rid), what="the worker's log line")
    assert worker_line["via"] == "zmq" and worker_line["status"] == 200 and worker_line["duration_ms"] > 0

    # p2p: straight to the worker, same header contract; errors carry it too.
    rid2 = f"p2p-{uuid.uuid4().hex[:8]}"
    status, echoed, _ = await post(worker.url, coffee_jpeg, {"X-Request-ID": rid2})
    assert status == 200 and echoed == rid2
    assert wait_for(lambda: line_for(worker_log, request_id=rid2, path="/"), what="direct request line")["status"] == 200
    status, echoed, _ = await post(worker.url, b"not an image", {"X-Request-ID": "bad-1"})
    assert status == 400 and echoed == "bad-1"

    # No id, or an unusable one: a fresh id is made.
    for headers in ({}, {"X-Request-ID": "has spaces and is far too long " * 4}):
        status, echoed, _ = await post(proxy.url, coffee_jpeg, headers)
        assert status == 200 and re.fullmatch(r"[0-9a-f]{16}", echoed)
