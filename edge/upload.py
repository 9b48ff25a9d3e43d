"""Read the image out of a classify request, enforcing the body limit while streaming.

The contract (from the original design): multipart field `data`
(`curl -XPOST HOST:PORT -F data=@photo.jpg`), also `image` or `file`; or the raw bytes
as the body with an image/* (or application/octet-stream) content type. A declared
Content-Length over the limit is refused before a byte of the body is read; a chunked
body is refused as soon as it passes the limit.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from edge.errors import ApiError

IMAGE_FIELDS = ("data", "image", "file")
RAW_TYPES = ("application/octet-stream",)
CHUNK = 64 * 1024

log = logging.getLogger(__name__)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the request body is over the limit of {limit} bytes")


async def _read_limited(read_chunk, limit: int, already: int = 0) -> bytes:
    chunks, total = [], already
    while chunk := await read_chunk(CHUNK):
        total += len(chunk)
        if total > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def _bounded(request: web.Request, limit: int, timeout_s: float, read) -> bytes:
    """read() under the body limit (413, from Content-Length before a byte is read) and a
    deadline (408: a client that sends slowly or stops must not hold a slot for ever)."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    try:
        async with asyncio.timeout(timeout_s):
            return await read()
    except TimeoutError:
        raise ApiError(408, "request_timeout", f"the request body did not arrive within {timeout_s:g} s") from None


async def read_image(request: web.Request, limit: int, timeout_s: float) -> bytes:
    """The image bytes of a classify request (multipart field, or the raw body)."""
    return await _bounded(request, limit, timeout_s, lambda: _read_body(request, limit))


async def read_body(request: web.Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, whatever its content type (the standard protocols' JSON and binary
    tensors)."""
    return await _bounded(request, limit, timeout_s, lambda: _read_limited(request.content.read, limit))


async def _read_body(request: web.Request, limit: int) -> bytes:
    ctype = request.content_type
    if ctype == "multipart/form-data":
        return await _read_multipart(request, limit)
    if ctype.startswith("image/") or ctype in RAW_TYPES:
        return await _read_limited(request.content.read, limit)
    raise ApiError(
        415,
        "unsupported_media_type",
        f"content type {ctype!r} is not supported: send multipart/form-data with the image in "
        f"field 'data', or the raw image with an image/* content type",
    )


async def _read_multipart(request: web.Request, limit: int) -> bytes:
    try:
        reader = await request.multipart()
        seen, total = [], 0
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise ApiError(400, "bad_multipart", "nested multipart bodies are not supported")
            if part.name in IMAGE_FIELDS:
                return await _read_limited(part.read_chunk, limit, total)
            seen.append(part.name)
            # Skip other fields, still counting them against the limit.
            total += len(await _read_limited(part.read_chunk, limit, total))
    except ApiError:
        raise
    except (ValueError, AssertionError, RuntimeError, HttpProcessingError) as exc:  # malformed multipart
        log.info("bad multipart body: %r", exc)
        raise ApiError(400, "bad_multipart", "the multipart body could not be parsed") from None
    raise ApiError(
        400,
        "missing_image_field",
        f"no image in the multipart body: expected a field named one of {list(IMAGE_FIELDS)}, got {seen}",
    )


def parse_top_k(request: web.Request, default: int, num_classes: int) -> int:
    raw = request.query.get("k")
    if raw is None:
        return min(default, num_classes)  # a 2-class model answers 2 by default
    try:
        k = int(raw)
    except ValueError:
        k = 0
    if not 1 <= k <= num_classes:
        raise ApiError(422, "invalid_parameter", f"k must be an integer from 1 to {num_classes}, got {raw!r}")
    return k
