"""Open Inference Protocol tensors, shared by its REST and gRPC fronts: the image input
(BYTES: encoded files; UINT8: pixels at the model's input size) read from raw bytes or
from JSON/proto contents, and the outputs (FP32 probabilities, or the classification
extension's BYTES "score:index:label" strings) written back.

Every size is checked before anything is allocated: a declared shape is refused when it
could not fit in the body, a binary size past the end of the body is refused, and a
BYTES element's length prefix must stay inside its tensor.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from dataclasses import dataclass

import numpy as np

from edge.errors import ApiError
from edge.inference import OUTPUT_NAME, Inference, InferRequest, ModelInfo, check_tensor

DATATYPES = ("BYTES", "UINT8")


def bad(message: str) -> ApiError:
    return ApiError(400, "invalid_input", message)


def element_count(shape: object, limit: int) -> int:
    if not (isinstance(shape, list | tuple) and shape and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise bad(f"shape must be a list of non-negative integers, got {shape!r}")
    count = math.prod(shape)
    if count > limit:
        raise bad(f"shape {list(shape)} declares {count} elements, more than a request of this size can hold")
    return count


def serialize_bytes(items: list[bytes]) -> bytes:
    """BYTES elements as the protocol sends them: a 4-byte little-endian length, the bytes."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def deserialize_bytes(raw: bytes | memoryview, count: int) -> list[bytes]:
    items, offset = [], 0
    for _ in range(count):
        if offset + 4 > len(raw):
            raise bad("the BYTES tensor ends inside an element's length")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise bad("a BYTES element's length runs past the end of its tensor")
        items.append(bytes(raw[offset:offset + size]))
        offset += size
    if offset != len(raw):
        raise bad(f"the BYTES tensor has {len(raw) - offset} bytes after its {count} elements")
    return items


def timeout_parameter(value: object) -> float | None:
    """The `timeout` request parameter (Triton's schedule-policy extension): microseconds,
    0 or absent for none; in seconds."""
    if value is None or value == 0:
        return None
    if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        raise bad(f"the timeout parameter is a whole number of microseconds, got {value!r}")
    return value / 1e6


def _flat(data: object) -> list:
    """JSON tensor data, nested or flat, as one flat list."""
    if not isinstance(data, list):
        raise bad("tensor data must be a JSON array")
    out = []
    for item in data:
        out.extend(_flat(item) if isinstance(item, list) else [item])
    return out


def from_base64(items: list) -> list[bytes]:
    try:
        return [base64.b64decode(item, validate=True) for item in items]
    except (binascii.Error, TypeError, ValueError):
        raise bad("BYTES data in JSON must be base64 strings (send files as binary data to skip base64)") from None


def _uint8(data: object, count: int) -> np.ndarray:
    """JSON UINT8 data, flat or nested as its shape, as a flat uint8 array. numpy reads
    and checks the list: a check element by element in Python took 18 ms an image."""
    if not isinstance(data, list):
        raise bad("tensor data must be a JSON array")
    try:
        values = np.array(data)
    except ValueError:  # nested lists of uneven lengths
        raise bad("UINT8 data must be a flat list, or lists nested evenly as the shape") from None
    if values.size != count:
        raise bad(f"the UINT8 data has {values.size} elements, its shape declares {count}")
    if count and (values.dtype.kind not in "iu" or values.min() < 0 or values.max() > 255):
        raise bad("UINT8 data must be integers from 0 to 255")
    return values.astype(np.uint8).ravel()


def read_images(request: InferRequest, datatype: str, shape: list, raw: bytes | memoryview | None,
                data: object, info: ModelInfo, limit: int) -> None:
    """Fill `request` with the image input: `raw` when it came as binary, else JSON `data`."""
    count = element_count(shape, limit)
    if datatype == "BYTES":
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise bad(f"a BYTES image input has shape [N] or [N, 1], got {shape}")
        request.encoded = deserialize_bytes(raw, count) if raw is not None else from_base64(_flat(data))
        if len(request.encoded) != count:
            raise bad(f"the BYTES data has {len(request.encoded)} elements, its shape declares {count}")
    elif datatype == "UINT8":
        if raw is not None and len(raw) != count:
            raise bad(f"the UINT8 data has {len(raw)} bytes, its shape {shape} needs {count}")
        flat = np.frombuffer(raw, dtype=np.uint8) if raw is not None else _uint8(data, count)
        request.tensor = flat.reshape(shape)
        check_tensor(request.tensor, info)
    else:
        raise bad(f"the image input's datatype must be one of {DATATYPES}, got {datatype!r}")
    if len(request) == 0:
        raise bad("the request has no image")


@dataclass(frozen=True)
class OutputSpec:
    classification: int = 0  # k best as "score:index:label" strings; 0: the probabilities
    binary: bool = False


def output_spec(name: object, classification: object, binary: object, num_classes: int) -> OutputSpec:
    if name != OUTPUT_NAME:
        raise bad(f"unknown output {name!r}: the model's output is {OUTPUT_NAME!r}")
    k = 0 if classification in (None, 0) else classification
    if not (isinstance(k, int) and not isinstance(k, bool) and 0 <= k <= num_classes):
        raise bad(f"classification must be an integer from 1 to {num_classes}, got {classification!r}")
    return OutputSpec(k, bool(binary))


@dataclass
class OutputTensor:
    datatype: str
    shape: list[int]
    values: np.ndarray | list[bytes]  # FP32 rows, or BYTES elements

    def raw(self) -> bytes:
        return self.values.tobytes() if self.datatype == "FP32" else serialize_bytes(self.values)

    def json_data(self) -> np.ndarray | list[str]:
        if self.datatype == "FP32":
            return self.values.ravel()  # edge.jsonio writes the array itself
        return [v.decode() for v in self.values]


def output_tensor(spec: OutputSpec, results: list[Inference]) -> OutputTensor:
    if spec.classification:
        k = spec.classification
        strings = [f"{p['score']:f}:{p['index']}:{p['label']}".encode() for r in results for p in r.top[:k]]
        return OutputTensor("BYTES", [len(results), k], strings)
    probs = np.stack([r.probabilities for r in results]).astype("<f4", copy=False)
    return OutputTensor("FP32", list(probs.shape), probs)


def wanted(request: InferRequest, specs: list[OutputSpec]) -> None:
    """What the tier must compute for these outputs."""
    request.top_k = max([s.classification for s in specs] + [0])
    request.probabilities = any(not s.classification for s in specs)
