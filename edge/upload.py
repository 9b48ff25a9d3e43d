"""Read the image out of a classify request, enforcing the body limit while streaming.

The contract (from the original design): multipart field `data`
(`curl -XPOST HOST:PORT -F data=@photo.jpg`), also `image` or `file`; or the raw bytes
as the body with an image/* (or application/octet-stream) content type. A declared
Content-Length over the limit is refused before a byte of the body is read; a chunked
body is refused as soon as it passes the limit.

Bodies being read at once are bounded in bytes (`UploadBudget`, --max-upload-bytes): each
is counted at its declared Content-Length from before its first byte is read (a chunked
one as it grows) until it is read, and one that does not fit is refused 503. It bounds
what uploads take in memory however many clients send slowly at once, without holding a
place in a model's queue while the bytes trickle in (worker/http_api.py).

Multipart bodies are parsed by python-multipart (Starlette's parser), fed as the body
streams in. aiohttp's own reader parsed each part's Content-Disposition twice, at ~90 µs
a parse here (it rebuilds a 128-character escape table on every call): a sixth of the
event loop's time for a no-op worker's request.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from edge.errors import ApiError, bad_top_k, retry_later

IMAGE_FIELDS = ("data", "image", "file")
RAW_TYPES = ("application/octet-stream",)
CHUNK = 64 * 1024

log = logging.getLogger(__name__)


class UploadBudget:
    """Bytes of request bodies being read at once, in one process."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> None:
        """Count `size` more bytes; 503 overloaded when they do not fit."""
        if self.used + size > self.limit:
            raise retry_later("overloaded", f"{self.used} bytes of uploads are being read (--max-upload-bytes "
                                            f"{self.limit})")
        self.used += size

    def give(self, size: int) -> None:
        self.used -= size


UPLOADS = web.AppKey("uploads", UploadBudget)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the request body is over the limit of {limit} bytes")


class _LimitedBody:
    """The body's chunks as they arrive (b"" at its end); 413 as soon as they pass the
    limit. Counted in the upload budget: a declared Content-Length before the first byte
    is read, a chunked body as it grows; `close()` gives it back. A plain reader, not an
    async generator: a generator left open by a caller that stops early is closed by the
    garbage collector through a wake-up of the event loop (a self-pipe write per request,
    9% of a no-op worker's event loop)."""

    def __init__(self, request: web.Request, limit: int):
        self._content = request.content
        self._limit = limit
        self._budget = request.app[UPLOADS]
        self._total = self._counted = 0
        self._count(request.content_length or 0)

    def _count(self, size: int) -> None:
        if size > self._counted:
            self._budget.take(size - self._counted)
            self._counted = size

    async def read(self) -> bytes:
        chunk = await self._content.read(CHUNK)
        self._total += len(chunk)
        if self._total > self._limit:
            raise _too_large(self._limit)
        self._count(self._total)
        return chunk

    def close(self) -> None:
        self._budget.give(self._counted)
        self._counted = 0


async def _read_all(body: _LimitedBody) -> bytes:
    chunks = []
    while chunk := await body.read():
        chunks.append(chunk)
    return b"".join(chunks)


async def _bounded(request: web.Request, limit: int, timeout_s: float, read) -> bytes:
    """read(body) under the body limit (413, from Content-Length before a byte is read),
    within the app's upload budget (503), and by a deadline (408: a client that sends
    slowly or stops must not hold memory for ever)."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    body = _LimitedBody(request, limit)
    try:
        async with asyncio.timeout(timeout_s):
            return await read(body)
    except TimeoutError:
        raise ApiError(408, "request_timeout", f"the request body did not arrive within {timeout_s:g} s") from None
    finally:
        body.close()


async def read_image(request: web.Request, limit: int, timeout_s: float) -> bytes:
    """The image bytes of a classify request (multipart field, or the raw body)."""
    return await _bounded(request, limit, timeout_s, lambda body: _read_body(request, body))


async def read_body(request: web.Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, whatever its content type (the standard protocols' JSON and binary
    tensors)."""
    return await _bounded(request, limit, timeout_s, _read_all)


async def _read_body(request: web.Request, body: _LimitedBody) -> bytes:
    ctype = request.content_type
    if ctype == "multipart/form-data":
        return await _read_multipart(request, body)
    if ctype.startswith("image/") or ctype in RAW_TYPES:
        return await _read_all(body)
    raise ApiError(
        415,
        "unsupported_media_type",
        f"content type {ctype!r} is not supported: send multipart/form-data with the image in "
        f"field 'data', or the raw image with an image/* content type",
    )


async def _read_multipart(request: web.Request, body: _LimitedBody) -> bytes:
    boundary = parse_options_header(request.headers.get("Content-Type"))[1].get(b"boundary")
    if not boundary:
        raise ApiError(400, "bad_multipart", "the multipart content type has no boundary")
    field = _ImageField()
    try:
        parser = MultipartParser(boundary, field.callbacks())
        while chunk := await body.read():
            parser.write(chunk)
            if field.image is not None:  # the rest of the body is not needed
                return field.image
    except FormParserError as exc:  # malformed multipart
        log.info("bad multipart body: %r", exc)
        raise ApiError(400, "bad_multipart", "the multipart body could not be parsed") from None
    if parser.state != MultipartState.END:
        raise ApiError(400, "bad_multipart", "the multipart body ended before its closing boundary")
    raise ApiError(
        400,
        "missing_image_field",
        f"no image in the multipart body: expected a field named one of {list(IMAGE_FIELDS)}, got {field.seen}",
    )


class _ImageField:
    """The parser's callbacks: keep the first part named one of IMAGE_FIELDS, note the
    names of the others."""

    def __init__(self):
        self.image: bytes | None = None
        self.seen: list[str] = []
        self._header = self._value = self._disposition = b""
        self._chunks: list[bytes] | None = None

    def callbacks(self) -> dict:
        return {"on_part_begin": self._part_begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
                "on_part_end": self._part_end}

    def _part_begin(self):
        self._disposition, self._chunks = b"", None

    def _header_field(self, data: bytes, start: int, end: int):
        self._header += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int):
        self._value += data[start:end]

    def _header_end(self):
        if self._header.lower() == b"content-disposition":
            self._disposition = self._value
        self._header = self._value = b""

    def _headers_finished(self):
        name = parse_options_header(self._disposition)[1].get(b"name", b"").decode("latin-1")
        if name in IMAGE_FIELDS and self.image is None:  # the first one wins
            self._chunks = []
        else:
            self.seen.append(name)

    def _part_data(self, data: bytes, start: int, end: int):
        if self._chunks is not None:
            self._chunks.append(data[start:end])

    def _part_end(self):
        if self._chunks is not None:
            self.image = b"".join(self._chunks)


_MAX_CLASSES = 1_000_000  # beyond any classifier; keeps k a small integer in JSON


def parse_top_k(request: web.Request, default: int, num_classes: int | None) -> int:
    """`?k=N`; `num_classes` None where the model is not known yet (the proxy, whose worker
    checks it again against the model's classes)."""
    raw = request.query.get("k")
    if raw is None:
        return default if num_classes is None else min(default, num_classes)  # a 2-class model answers 2
    try:
        k = int(raw)
    except ValueError:
        k = 0
    if not 1 <= k <= (num_classes or _MAX_CLASSES):
        raise bad_top_k(raw, num_classes or "the model's number of classes")
    return k
