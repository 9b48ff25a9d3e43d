"""JSON in and out of the servers, through orjson: every HTTP answer, the standard
protocols' request bodies and the ZeroMQ messages between proxy and worker.

The standard library's json cost a v2 request with its 224x224 image as JSON numbers
7.6 ms to parse and a TF Serving answer of 1,000 probabilities 0.42 ms to write, on the
event loop; orjson takes 2.0 and 0.02 (docs/performance/history.md, "JSON through orjson").
numpy arrays and scalars are written as they are, float32 at float32's shortest form.
Stricter than json on input: NaN, Infinity and nesting deeper than 1,024 are refused.
"""

from __future__ import annotations

import numpy as np
import orjson
from aiohttp import web


def loads(raw: bytes | bytearray | memoryview | str) -> object:
    """Parse a JSON text; a ValueError (orjson.JSONDecodeError) when it is not one, or not UTF-8."""
    return orjson.loads(raw)


def _as_list(value: object) -> object:
    """What orjson leaves to us: numpy arrays it cannot write as they lie (a strided view)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: object) -> bytes:
    """UTF-8 JSON; numpy arrays and scalars included. Dict keys must be strings."""
    return orjson.dumps(value, default=_as_list, option=orjson.OPT_SERIALIZE_NUMPY)


def json_response(value: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """aiohttp's json_response, written by orjson."""
    return web.Response(body=dumps(value), status=status, headers=headers, content_type="application/json",
                        charset="utf-8")
