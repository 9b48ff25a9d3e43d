"""The catalog of error codes: every code a worker or proxy answers, with its status and
when it happens. Standard library only, so the docs site renders it (docs/hooks.py) and a
test checks that every code the servers raise is here, with the same status.

A code is stable: clients may branch on it. The message beside it is for people and may
change. The standard protocols carry the message only (`{"error": "..."}`), with the
same HTTP status, except where the protocol says otherwise (`STATUS_OVERRIDES`); gRPC
maps the HTTP status to its own (`GRPC_STATUS`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorCode:
    status: int
    when: str
    retry: bool = False  # answered with Retry-After: the same request may succeed later


CATALOG: dict[str, ErrorCode] = {
    # the request: its body, its image
    "empty_image": ErrorCode(400, "the image is 0 bytes"),
    "not_an_image": ErrorCode(400, "the bytes are not an image in a format the servers read (JPEG, PNG, WebP, "
                                   "GIF, BMP, TIFF; nothing else ever reaches an image decoder)"),
    "corrupt_image": ErrorCode(400, "the image's header or pixels could not be read: truncated or corrupt"),
    "missing_image_field": ErrorCode(400, "a multipart body without a `data`, `image` or `file` field"),
    "bad_multipart": ErrorCode(400, "a multipart body that cannot be parsed, has no boundary, or ends early"),
    "wrong_shape": ErrorCode(400, "a tensor input whose shape is not the model's input "
                                  "(`[N, height, width, 3]` UINT8)"),
    "invalid_input": ErrorCode(400, "an Open Inference Protocol or TF Serving request that does not follow "
                                    "its protocol: the message says which field"),
    "unsupported": ErrorCode(400, "a TF Serving verb other than `:predict` and `:classify` (`:regress`)"),
    "bad_message": ErrorCode(400, "a ZeroMQ message that is not the contract's (`worker/protocol.py`); "
                                  "between the tiers only"),
    "unauthorized": ErrorCode(401, "the server has a token and the request has no valid `Authorization: "
                                   "Bearer` header (health probes stay open)"),
    "model_not_found": ErrorCode(404, "`?model=` (or the path's model) names a model no live worker serves; "
                                      "the message lists those served"),
    "label_not_found": ErrorCode(404, "a TF Serving `/labels/LABEL` that names no version"),
    "not_found": ErrorCode(404, "a path the server does not have"),
    "method_not_allowed": ErrorCode(405, "a method the path does not take, e.g. `GET /` on a worker; the "
                                         "`Allow` header lists those it does"),
    "request_timeout": ErrorCode(408, "the body did not arrive within `--read-timeout` (30 s): a client that "
                                      "sends slowly or stops"),
    "payload_too_large": ErrorCode(413, "a body over `--max-body-bytes` (20 MiB); a declared Content-Length "
                                        "over it is refused before the body is read"),
    "image_too_large": ErrorCode(413, "more than `--max-pixels` (40 M) pixels, refused from the image's header "
                                      "before decoding"),
    "too_many_images": ErrorCode(413, "a standard-protocol request with more images than the worker's "
                                      "`--max-queue` could ever hold"),
    "unsupported_media_type": ErrorCode(415, "a body that is neither multipart nor an image content type"),
    "invalid_parameter": ErrorCode(422, "`k` is not an integer from 1 to the model's number of classes, or "
                                        "another parameter is out of range"),
    "cancelled": ErrorCode(499, "the client went away (or the proxy gave up) before the image was computed; "
                                "counted in the metrics, never sent to a client that is still there"),
    # the server
    "internal_error": ErrorCode(500, "a bug: logged with the request id; the answer never carries "
                                     "exception text"),
    "inference_failed": ErrorCode(500, "the model failed on the batch this image was in (logged)"),
    "worker_rejected": ErrorCode(502, "a worker refused the proxy's own message (a token or input-shape "
                                      "mismatch between the tiers): the details are in the proxy's log"),
    "not_ready": ErrorCode(503, "the worker is loading its models or draining", retry=True),
    "overloaded": ErrorCode(503, "the queue (`--max-queue`, or `--max-queue-wait-ms` of predicted wait), the "
                                 "bytes of uploads being read (`--max-upload-bytes`) or the proxy's "
                                 "`--max-in-flight` is full, or the proxy's retry budget is spent", retry=True),
    "no_worker": ErrorCode(503, "the proxy has no live worker (for that model) that could take the request",
                           retry=True),
    "shutting_down": ErrorCode(503, "the worker stopped before computing an accepted image (a drain that ran "
                                    "out of time): send it again", retry=True),
    "timeout": ErrorCode(504, "the request's deadline (`X-Request-Timeout-Ms`, the v2 `timeout`, a gRPC "
                              "deadline) passed, or the worker's queue could not start it in time (refused at "
                              "once), or no worker answered within the proxy's `--request-timeout` (30 s)"),
}

# Where a protocol's own convention differs from our status: TF Serving says "resource
# exhausted" (429) where we say 503 overloaded.
STATUS_OVERRIDES: dict[tuple[str, str], int] = {("tfserving", "overloaded"): 429}

# gRPC's status for each HTTP status (the Open Inference Protocol over gRPC); any other is INTERNAL.
GRPC_STATUS: dict[int, str] = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND", 405: "UNIMPLEMENTED",
    408: "DEADLINE_EXCEEDED", 413: "RESOURCE_EXHAUSTED", 415: "INVALID_ARGUMENT", 422: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED",
    502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}


def markdown_table() -> str:
    """The catalog as the docs' table."""
    lines = ["| status | code | gRPC | when | retry |", "|---:|---|---|---|---|"]
    for code, e in CATALOG.items():
        lines.append(f"| {e.status} | `{code}` | {GRPC_STATUS.get(e.status, 'INTERNAL')} | {e.when} | "
                     f"{'yes, after `Retry-After`' if e.retry else ''} |")
    return "\n".join(lines)
