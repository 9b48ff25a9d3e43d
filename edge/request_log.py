"""Request ids, one log line and the HTTP metrics per request, for the worker and the proxy.

Every request gets an id: the caller's `X-Request-ID` when it is a sane token, else a new
one. It is returned in the `X-Request-ID` response header, logged on the request's line,
and the proxy sends it to the worker with the image (ZeroMQ header `request_ids`), whose
own log line carries the same id. `--log-format json` writes one JSON object per line
(python-json-logger), with the request id, status and timings as fields.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import sys
import time
from collections.abc import Callable

from aiohttp import web
from pythonjsonlogger.orjson import OrjsonFormatter

from edge.metrics import METRICS

HEADER = "X-Request-ID"
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})  # probes and scrapes: debug level
# Refusals (overloaded, not ready, no worker) and clients that gave up are counted in the
# metrics and logged at debug level: an overload storm must not become a log storm (the log
# line was a quarter of the event loop's time while a worker refused 256 connections, py-spy).
CLIENT_CLOSED = 499  # the client disconnected before its answer (nginx's code); nothing was sent
QUIET_STATUSES = frozenset({429, 503, CLIENT_CLOSED})
_VALID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# Per-request values handlers read or set.
REQUEST_ID = web.RequestKey("request_id", str)
SERVED_BY = web.RequestKey("served_by", str)  # the worker that answered, for the log line
# An app may watch every inference answer (every POST: each is a classification or a
# standard protocol's inference), refusals included: called with (status, seconds).
Answered = Callable[[int, float], None]
ANSWERED = web.AppKey("answered", Answered)

access_log = logging.getLogger("access")


def sane_request_id(incoming: str) -> str:
    """The caller's id when it is a sane token, else a new one."""
    # 16 random hex digits from the process's PRNG: an id traces, it guards nothing, and
    # uuid4 or os.urandom (a system call) were 4-5% of the event loop's samples while a
    # worker refused a storm of requests (py-spy)
    return incoming if _VALID.fullmatch(incoming) else f"{random.getrandbits(64):016x}"


def request_id(request: web.Request) -> str:
    return sane_request_id(request.headers.get(HEADER, ""))


@web.middleware
async def request_log(request: web.Request, handler):
    rid = request[REQUEST_ID] = request_id(request)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers[HEADER] = rid
        return response
    except web.HTTPException as exc:
        status = exc.status
        exc.headers[HEADER] = rid
        raise
    except asyncio.CancelledError:  # the client went away (edge/app.py's runner cancels the handler)
        status = CLIENT_CLOSED
        raise
    finally:
        seconds = time.perf_counter() - started
        request.app[METRICS].observe(request, status, seconds)
        if request.method == "POST" and (answered := request.app.get(ANSWERED)):
            answered(status, seconds)
        level = logging.DEBUG if request.path in QUIET_PATHS or status in QUIET_STATUSES else logging.INFO
        if access_log.isEnabledFor(level):
            ms = seconds * 1000
            access_log.log(level, "%s %s %d %.1f ms request_id=%s", request.method, request.path, status, ms, rid,
                           extra={"request_id": rid, "method": request.method, "path": request.path,
                                  "status": status, "duration_ms": round(ms, 3),
                                  "worker": request.get(SERVED_BY)})


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(OrjsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
