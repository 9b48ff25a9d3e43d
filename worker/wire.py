"""The proxy <-> worker ZeroMQ wire format. No pickle: JSON headers, raw tensor bytes.

Request (proxy DEALER -> worker ROUTER), two frames:
    1. JSON header {"batch": str, "ids": [str, ...], "dtype": "uint8",
                    "shape": [N, H, W, C], "model": str, "version": str, "k": int,
                    "token": str (only when the cluster uses a shared secret),
                    "request_ids": [str, ...] (optional: the callers' request ids, for logs)}
    2. the N images as one C-contiguous uint8 tensor, raw bytes (sent zero-copy)

Reply (worker -> proxy), one frame:
    JSON {"batch": str, "worker": str, "model": str, "version": str,
          "results": [{"id": str, "predictions": [...], "version": str, "queue_ms": float,
                       "inference_ms": float, "batch_size": int}
                      | {"id": str, "error": {"code": str, "message": str}}, ...]}
    A message the worker cannot parse is answered {"batch": ..., "error": {...}} when it
    has a batch id, and dropped with a log line when it has not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

DTYPE = "uint8"
MAX_HEADER_BYTES = 64 * 1024


class WireError(Exception):
    """A malformed message; `batch` is its batch id when that much could be read."""

    def __init__(self, message: str, batch: str | None = None):
        super().__init__(message)
        self.batch = batch


@dataclass
class BatchRequest:
    batch: str
    ids: list[str]
    images: np.ndarray  # uint8 (N, H, W, C)
    model: str = ""
    version: str = ""
    k: int = 5
    token: str = ""
    request_ids: list[str] | None = None


def encode_request(req: BatchRequest) -> list:
    images = np.ascontiguousarray(req.images, dtype=np.uint8)
    header = {
        "batch": req.batch,
        "ids": req.ids,
        "dtype": DTYPE,
        "shape": list(images.shape),
        "model": req.model,
        "version": req.version,
        "k": req.k,
    }
    if req.token:
        header["token"] = req.token
    if req.request_ids:
        header["request_ids"] = req.request_ids
    return [json.dumps(header).encode(), memoryview(images).cast("B")]


def decode_request(frames: list[bytes]) -> BatchRequest:
    if len(frames) != 2:
        raise WireError(f"expected 2 frames (header, tensor), got {len(frames)}")
    raw_header, data = frames
    if len(raw_header) > MAX_HEADER_BYTES:
        raise WireError("header too large")
    try:
        header = json.loads(raw_header)
    except ValueError:
        raise WireError("header is not JSON") from None
    if not isinstance(header, dict):
        raise WireError("header is not a JSON object")
    batch = header.get("batch")
    batch = batch if isinstance(batch, str) else None
    try:
        ids, shape, k = header["ids"], header["shape"], int(header.get("k", 5))
        if header.get("dtype") != DTYPE:
            raise WireError(f"dtype must be {DTYPE}", batch)
        if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(d, int) and d > 0 for d in shape)):
            raise WireError(f"shape must be 4 positive integers, got {shape!r}", batch)
        if not (isinstance(ids, list) and len(ids) == shape[0] and all(isinstance(i, str) for i in ids)):
            raise WireError("ids must be one string per image", batch)
        if batch is None:
            raise WireError("missing batch id")
    except (KeyError, TypeError, ValueError) as exc:
        raise WireError(f"bad header: {exc!r}", batch) from None
    expected = int(np.prod(shape))
    if len(data) != expected:
        raise WireError(f"tensor has {len(data)} bytes, shape {shape} needs {expected}", batch)
    images = np.frombuffer(data, dtype=np.uint8).reshape(shape)
    rids = header.get("request_ids")
    if not (isinstance(rids, list) and len(rids) == len(ids) and all(isinstance(r, str) for r in rids)):
        rids = None
    return BatchRequest(batch, ids, images, str(header.get("model", "")), str(header.get("version", "")), k,
                        str(header.get("token", "")), rids)


def encode_reply(reply: dict) -> list[bytes]:
    return [json.dumps(reply).encode()]


def decode_reply(frames: list[bytes]) -> dict:
    if len(frames) != 1:
        raise WireError(f"expected 1 reply frame, got {len(frames)}")
    try:
        reply = json.loads(frames[0])
    except ValueError:
        raise WireError("reply is not JSON") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("batch"), str):
        raise WireError("reply has no batch id")
    return reply
