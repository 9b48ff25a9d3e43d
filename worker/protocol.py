"""The worker protocol: the one contract between the proxy tier and the worker tier.

Two halves, both here and nowhere else:

1. The ZeroMQ messages. No pickle: JSON headers, raw tensor bytes.
   Request (proxy DEALER -> worker ROUTER), two frames:
       1. JSON header {"batch": str, "ids": [str, ...], "dtype": "uint8",
                       "shape": [N, H, W, C], "model": str, "k": int,
                       "token": str (only when the cluster uses a shared secret),
                       "request_ids": [str, ...] (optional: the callers' request ids, for logs),
                       "probabilities": true (optional: send every class's probability too),
                       "deadlines_ms": [float | null, ...] (optional: each item's time left when sent;
                                        an item that cannot be answered in time is refused, 504)}
       2. the N images as one C-contiguous uint8 tensor, raw bytes (sent zero-copy)
   Reply (worker -> proxy), one frame, JSON, or two when probabilities were asked for:
       {"batch": str, "worker": str, "model": str,
        "results": [{"id", "predictions": [...], "version", "queue_ms", "inference_ms",
                     "batch_size", "row": int (with probabilities)}
                    | {"id", "error": {"status", "code", "message"}}, ...],
        "probabilities_shape": [R, C] (with probabilities),
        "load": {"queue": int, "in_flight": int, "service_ms": float} (the worker's load now:
                 images admitted, waiting or computing; images accepted and unanswered; the
                 recent compute time an image, for the proxy's balancing)}
       then the R probability rows as one float32 little-endian tensor, raw bytes;
       or, when the whole message is refused: {"batch", "worker", "error": {...}}.
   Cancel (proxy -> worker), one frame, JSON {"cancel": [item id, ...]}: the callers of
       these items gave up (a client disconnected, a timeout), so the worker drops the
       images still waiting; their results come back as errors 499 `cancelled`.
   A message the worker cannot parse is answered with an error when it has a batch id,
   and dropped with a log line when it has not.

2. The Consul Meta a worker registers with (`WorkerMeta`): what a proxy needs to reach
   a worker and to preprocess images for each model it serves (`ServedModel`).
   "model" in a request names which; images for different models never share a batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from edge import jsonio
from edge.preprocessing import Preprocessing

DTYPE = "uint8"
MAX_HEADER_BYTES = 64 * 1024

# Error codes a worker answers with, by who is at fault.
CLIENT_CODES = frozenset({"invalid_parameter"})  # the caller's request (relay it)
# The worker is fine but full, or too far behind for the item's deadline: try another, keep it.
BUSY_CODES = frozenset({"overloaded", "timeout"})


class ProtocolError(Exception):
    """A malformed message; `batch` is its batch id when that much could be read."""

    def __init__(self, message: str, batch: str | None = None):
        super().__init__(message)
        self.batch = batch


@dataclass(frozen=True)
class ErrorInfo:
    status: int
    code: str
    message: str

    @classmethod
    def from_dict(cls, d: object) -> ErrorInfo:
        if not isinstance(d, dict):
            return cls(500, "bad_reply", "the worker's error was not an object")
        return cls(int(d.get("status", 500)), str(d.get("code", "worker_error")), str(d.get("message", "")))


@dataclass
class BatchRequest:
    batch: str
    ids: list[str]
    images: np.ndarray  # uint8 (N, H, W, C)
    model: str = ""
    k: int = 5
    token: str = ""
    request_ids: list[str] | None = None
    probabilities: bool = False
    deadlines_ms: list[float | None] | None = None  # each item's time left when sent; None: no limit

    def encode(self) -> list:
        images = np.ascontiguousarray(self.images, dtype=np.uint8)
        header = {"batch": self.batch, "ids": self.ids, "dtype": DTYPE, "shape": list(images.shape),
                  "model": self.model, "k": self.k}
        if self.probabilities:
            header["probabilities"] = True
        if self.token:
            header["token"] = self.token
        if self.request_ids:
            header["request_ids"] = self.request_ids
        if self.deadlines_ms and any(d is not None for d in self.deadlines_ms):
            header["deadlines_ms"] = self.deadlines_ms
        return [jsonio.dumps(header), memoryview(images).cast("B")]

    @classmethod
    def decode(cls, frames: list) -> BatchRequest:
        if len(frames) != 2:
            raise ProtocolError(f"expected 2 frames (header, tensor), got {len(frames)}")
        header = _json_object(frames[0], "header")
        batch = header.get("batch") if isinstance(header.get("batch"), str) else None
        try:
            ids, shape, k = header["ids"], header["shape"], int(header.get("k", 5))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"bad header: {exc!r}", batch) from None
        _check_header(header, ids, shape, batch)
        expected = int(np.prod(shape))
        if len(frames[1]) != expected:
            raise ProtocolError(f"tensor has {len(frames[1])} bytes, shape {shape} needs {expected}", batch)
        images = np.frombuffer(frames[1], dtype=np.uint8).reshape(shape)
        rids = header.get("request_ids")
        if not (isinstance(rids, list) and len(rids) == len(ids) and all(isinstance(r, str) for r in rids)):
            rids = None
        return cls(batch, ids, images, str(header.get("model", "")), k, str(header.get("token", "")), rids,
                   header.get("probabilities") is True, _deadlines(header.get("deadlines_ms"), len(ids)))


def _deadlines(value: object, count: int) -> list[float | None] | None:
    """A request's per-item time left, when it is a list of that many numbers (or nulls);
    anything else means no limit, as from a proxy that sends none."""
    if not (isinstance(value, list) and len(value) == count):
        return None
    if not all(d is None or (isinstance(d, (int, float)) and not isinstance(d, bool)) for d in value):
        return None
    return [None if d is None else float(d) for d in value]


@dataclass
class Cancel:
    """The proxy's callers of these items (ids from their BatchRequests) gave up."""

    ids: list[str]

    def encode(self) -> list[bytes]:
        return [jsonio.dumps({"cancel": self.ids})]

    @classmethod
    def decode(cls, frames: list) -> Cancel:
        ids = _json_object(frames[0], "cancel message").get("cancel") if len(frames) == 1 else None
        if not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
            raise ProtocolError("a cancel message is one frame: {\"cancel\": [item id, ...]}")
        return cls(ids)


def decode_message(frames: list) -> BatchRequest | Cancel:
    """What a proxy sent: a batch (two frames) or a cancel (one); ProtocolError otherwise."""
    return Cancel.decode(frames) if len(frames) == 1 else BatchRequest.decode(frames)


def _json_object(raw: bytes, what: str, max_bytes: int | None = MAX_HEADER_BYTES) -> dict:
    if max_bytes is not None and len(raw) > max_bytes:
        raise ProtocolError(f"{what} too large")
    try:
        value = jsonio.loads(raw)
    except ValueError:
        raise ProtocolError(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} is not a JSON object")
    return value


def _check_header(header: dict, ids, shape, batch: str | None) -> None:
    if header.get("dtype") != DTYPE:
        raise ProtocolError(f"dtype must be {DTYPE}", batch)
    if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(d, int) and d > 0 for d in shape)):
        raise ProtocolError(f"shape must be 4 positive integers, got {shape!r}", batch)
    if not (isinstance(ids, list) and len(ids) == shape[0] and all(isinstance(i, str) for i in ids)):
        raise ProtocolError("ids must be one string per image", batch)
    if batch is None:
        raise ProtocolError("missing batch id")


@dataclass
class ItemResult:
    """One image's answer: predictions, or an error."""

    id: str
    predictions: list[dict] | None = None
    version: str = ""
    queue_ms: float = 0.0
    inference_ms: float = 0.0
    batch_size: int = 0
    error: ErrorInfo | None = None
    probabilities: np.ndarray | None = None  # float32 [classes], travels in the reply's tensor frame

    def to_dict(self) -> dict:
        if self.error:
            return {"id": self.id, "error": asdict(self.error)}
        return {"id": self.id, "predictions": self.predictions, "version": self.version, "queue_ms": self.queue_ms,
                "inference_ms": self.inference_ms, "batch_size": self.batch_size}

    @classmethod
    def from_dict(cls, d: dict) -> ItemResult:
        if "error" in d:
            return cls(str(d.get("id")), error=ErrorInfo.from_dict(d["error"]))
        return cls(str(d.get("id")), list(d.get("predictions") or []), str(d.get("version", "")),
                   float(d.get("queue_ms", 0)), float(d.get("inference_ms", 0)), int(d.get("batch_size", 0)))


@dataclass(frozen=True)
class WorkerLoad:
    """What a worker reports of its load with every reply (and in /stats): images admitted,
    waiting or computing; images accepted and not yet answered; the recent compute time an
    image in ms (0 before its first batch)."""

    queue: int = 0
    in_flight: int = 0
    service_ms: float = 0.0

    @classmethod
    def from_dict(cls, d: object) -> WorkerLoad | None:
        if not isinstance(d, dict):
            return None
        try:
            return cls(int(d.get("queue", 0)), int(d.get("in_flight", 0)), float(d.get("service_ms", 0.0)))
        except (TypeError, ValueError):
            return None


@dataclass
class BatchReply:
    batch: str
    worker: str
    model: str = ""
    results: list[ItemResult] = field(default_factory=list)
    error: ErrorInfo | None = None  # the whole message was refused
    load: WorkerLoad | None = None

    def encode(self) -> list[bytes]:
        body = {"batch": self.batch, "worker": self.worker}
        if self.load is not None:
            body["load"] = asdict(self.load)
        if self.error:
            body["error"] = asdict(self.error)
            return [jsonio.dumps(body)]
        items, rows = [], []
        for result in self.results:
            item = result.to_dict()
            if result.probabilities is not None and not result.error:
                item["row"] = len(rows)
                rows.append(result.probabilities)
            items.append(item)
        body.update(model=self.model, results=items)
        if not rows:
            return [jsonio.dumps(body)]
        tensor = np.ascontiguousarray(np.stack(rows), dtype="<f4")
        body["probabilities_shape"] = list(tensor.shape)
        return [jsonio.dumps(body), tensor.tobytes()]

    @classmethod
    def decode(cls, frames: list[bytes]) -> BatchReply:
        if len(frames) not in (1, 2):
            raise ProtocolError(f"expected 1 or 2 reply frames, got {len(frames)}")
        body = _json_object(frames[0], "reply", max_bytes=None)  # replies grow with batch size and k
        if not isinstance(body.get("batch"), str):
            raise ProtocolError("reply has no batch id")
        worker, load = str(body.get("worker", "")), WorkerLoad.from_dict(body.get("load"))
        if "error" in body:
            return cls(body["batch"], worker, error=ErrorInfo.from_dict(body["error"]), load=load)
        try:
            results = [ItemResult.from_dict(r) for r in body.get("results", [])]
            if len(frames) == 2:
                _attach_probabilities(results, body, frames[1])
        except (TypeError, ValueError, AttributeError, IndexError) as exc:
            raise ProtocolError(f"bad results: {exc!r}", body["batch"]) from None
        return cls(body["batch"], worker, str(body.get("model", "")), results, load=load)


def _attach_probabilities(results: list[ItemResult], body: dict, frame: bytes) -> None:
    rows, classes = (int(d) for d in body["probabilities_shape"])
    if rows < 0 or classes < 0 or rows * classes * 4 != len(frame):
        raise ValueError(f"probability frame of {len(frame)} bytes for shape {[rows, classes]}")
    tensor = np.frombuffer(frame, dtype="<f4").reshape(rows, classes)
    for result, raw in zip(results, body.get("results", [])):
        if "row" in raw:
            if not 0 <= int(raw["row"]) < rows:
                raise ValueError(f"row {raw['row']} outside the probability frame")
            result.probabilities = tensor[int(raw["row"])]


@dataclass(frozen=True)
class ServedModel:
    """One model a worker serves, as a proxy needs to know it."""

    version: str
    backend: str
    input_shape: tuple[int, int, int]  # H, W, C of one uint8 image
    num_labels: int
    crop_fraction: float = Preprocessing.crop_fraction
    resample: str = Preprocessing.resample

    def to_json(self) -> str:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return jsonio.dumps(d).decode()  # compact, as Consul Meta values should be

    @classmethod
    def from_json(cls, text: str) -> ServedModel:
        d = jsonio.loads(text)
        return cls(str(d["version"]), str(d.get("backend", "")), tuple(int(x) for x in d["input_shape"]),
                   int(d["num_labels"]), float(d.get("crop_fraction", Preprocessing.crop_fraction)),
                   str(d.get("resample", Preprocessing.resample)))


MODEL_KEY = "model-"  # Consul Meta key prefix: one key per served model, its value ServedModel's JSON


@dataclass(frozen=True)
class WorkerMeta:
    """A worker's Consul service Meta (all values strings there): its ports, the
    preprocessing path it runs, and every model it serves (`model-NAME` keys)."""

    worker_id: str
    http_port: int
    zmq_port: int
    grpc_port: int = 0  # the Open Inference Protocol over gRPC
    preprocessing_path: str = Preprocessing.path  # so forwarded and direct answers are the same
    models: dict[str, ServedModel] = field(default_factory=dict)

    def preprocessing(self, model: str) -> Preprocessing:
        m = self.models[model]
        return Preprocessing(m.input_shape[0], m.crop_fraction, m.resample, self.preprocessing_path,
                             m.input_shape[2])

    def to_meta(self) -> dict[str, str]:
        meta = {"worker_id": self.worker_id, "http_port": str(self.http_port), "zmq_port": str(self.zmq_port),
                "grpc_port": str(self.grpc_port), "preprocessing_path": self.preprocessing_path,
                "models": ",".join(sorted(self.models))}
        meta.update({MODEL_KEY + name: m.to_json() for name, m in self.models.items()})
        return meta

    @classmethod
    def from_meta(cls, meta: dict[str, str]) -> WorkerMeta:
        """Raises ProtocolError when the Meta is not a worker's (missing or bad fields)."""
        try:
            names = [n for n in meta["models"].split(",") if n]
            return cls(
                worker_id=meta["worker_id"], http_port=int(meta["http_port"]), zmq_port=int(meta["zmq_port"]),
                grpc_port=int(meta.get("grpc_port", 0)),
                preprocessing_path=meta.get("preprocessing_path", Preprocessing.path),
                models={name: ServedModel.from_json(meta[MODEL_KEY + name]) for name in names},
            )
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise ProtocolError(f"not a worker's Meta: {exc!r}") from None
