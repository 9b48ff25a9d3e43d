"""JSON errors: every failure leaves as {"error": {"code": ..., "message": ...}}.

`ApiError` is the one error type a handler raises: it carries its HTTP status, a stable
code and a message written for the client. Anything else that escapes a handler is
logged with its request id and answered with a generic 500: exception text never
reaches a client.
"""

from __future__ import annotations

import logging

from aiohttp import web

from edge.error_codes import STATUS_OVERRIDES
from edge.jsonio import json_response
from edge.metrics import protocol_of
from edge.request_log import REQUEST_ID

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def retry_later(code: str, message: str, seconds: int = 1, status: int = 503) -> ApiError:
    """A refusal the client should retry after `seconds` (overloaded, not ready, no worker)."""
    return ApiError(status, code, message, {"Retry-After": str(seconds)})


def bad_top_k(got: object, bound: int | str) -> ApiError:
    """The one wording of a bad `k`, on every tier and entry point (the client's CLI says
    the same of --top-k); `bound` the model's number of classes, or words for it where the
    model is not known yet."""
    return ApiError(422, "invalid_parameter", f"k must be an integer from 1 to {bound}, got {str(got)!r}")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None,
                   path: str = "/") -> web.Response:
    """Our own format, or the standard protocols' where the path is theirs: the Open
    Inference Protocol (/v2) and TF Serving (/v1/models) answer {"error": "..."}, and TF
    Serving's statuses differ from ours where the catalog says so (edge/error_codes.py)."""
    protocol = protocol_of(path)
    if protocol == "v2":
        return json_response({"error": message}, status=status, headers=headers)
    if protocol == "tfserving":
        return json_response({"error": message}, status=STATUS_OVERRIDES.get((protocol, code), status),
                             headers=headers)
    return json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


@web.middleware
async def json_errors(request: web.Request, handler):
    """Turn ApiError and aiohttp's own HTTP errors (404, 405, 413...) into JSON."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.headers, request.path)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return error_response(exc.status, code, f"{exc.reason}: {request.method} {request.path}", headers, request.path)
    except Exception:
        log.exception("unhandled error on %s %s request_id=%s", request.method, request.path,
                      request.get(REQUEST_ID))
        return error_response(500, "internal_error", "the server failed to handle this request", path=request.path)
