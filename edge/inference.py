"""What a standard-protocol front needs from the tier behind it.

Each protocol module (edge/v2_rest.py, edge/v2_grpc.py, edge/tfserving.py) turns a request
into an `InferRequest` (model, version, images, what to answer) and the `Inference`
results back into the protocol's own answer. The worker and the proxy each provide an
`InferenceService`: the worker decodes and batches itself, the proxy decodes and forwards
over ZeroMQ (batched like any other request). So every protocol works on both tiers, and
all of them go through the same admission: auth and request ids (the middlewares), body
and pixel limits, and the tier's own overload refusals.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from edge.deadline import within
from edge.errors import ApiError

SERVER_NAME = "image-cluster"
SERVER_VERSION = importlib.metadata.version(SERVER_NAME)  # pyproject.toml's, not a second copy
INPUT_NAME = "image"  # the one input of every served model
OUTPUT_NAME = "probabilities"  # FP32 [N, classes]; classification on request


@dataclass(frozen=True)
class ModelInfo:
    name: str
    versions: tuple[str, ...]  # the versions this tier can serve now
    platform: str  # the backend, e.g. "tflite"
    input_shape: tuple[int, int, int]  # H, W, C of one image
    num_classes: int


@dataclass
class InferRequest:
    """N images for one model: encoded files (decoded by the shared path) or a uint8
    tensor [N, H, W, C] already at the model's input size."""

    model: str
    version: str | None = None  # None: whichever this tier serves (the proxy's split decides)
    encoded: list[bytes] = field(default_factory=list)
    tensor: np.ndarray | None = None
    top_k: int = 0  # best classes wanted per image (0: none)
    probabilities: bool = False  # the whole probability vector wanted per image
    request_id: str = ""
    timeout_s: float | None = None  # the client's own limit (the v2 `timeout` parameter); None: the tier's

    def __len__(self) -> int:
        return len(self.tensor) if self.tensor is not None else len(self.encoded)


@dataclass
class Inference:
    """One image's answer."""

    version: str
    top: list[dict]  # [{"label", "index", "score"}], best first; top_k of them
    probabilities: np.ndarray | None = None  # float32 [classes], when asked for


class InferenceService(Protocol):
    def ready(self) -> bool: ...

    def model(self, name: str, version: str | None = None) -> ModelInfo:
        """The model's metadata; ApiError 404 when this tier does not serve it (or that version)."""

    def check_room(self, info: ModelInfo) -> None:
        """503 now when this tier could not take a request for the model: called before the
        request's body is read, as the native route does, so a refusal costs no body."""

    async def infer(self, request: InferRequest) -> list[Inference]:
        """One answer per image, in order; ApiError for the whole request otherwise."""


async def infer_within(service: InferenceService, request: InferRequest) -> list[Inference]:
    """service.infer, given up when the client's timeout passes first: its images still
    queued are dropped as a departed client's are (a worker's batcher skips them; the
    proxy sends its workers a Cancel), and the answer is a 504."""
    return await within(request.timeout_s, service.infer(request))


def check_tensor(tensor: np.ndarray, info: ModelInfo) -> None:
    """A UINT8 input must already be at the model's input size."""
    if tensor.ndim != 4 or tuple(tensor.shape[1:]) != info.input_shape:
        raise ApiError(400, "wrong_shape", f"a UINT8 input must be [N, {', '.join(map(str, info.input_shape))}], "
                                           f"got {list(tensor.shape)}")


def not_found(name: str, version: str | None) -> ApiError:
    which = f"version {version} of model {name!r}" if version else f"model {name!r}"
    return ApiError(404, "model_not_found", f"{which} is not served here")


def pick_model(requested: str | None, served: Collection[str], default: str) -> str:
    """The model a request is for: the one it names, else the default, else the only one
    served. ApiError 404 (listing what is served) when there is none."""
    if requested:
        if requested not in served:
            raise ApiError(404, "model_not_found", f"model {requested!r} is not served here; served: "
                                                   f"{', '.join(sorted(served)) or 'none'}")
        return requested
    if default in served:
        return default
    if len(served) == 1:
        return next(iter(served))
    raise ApiError(404, "model_not_found", f"name a model (?model=NAME): the default {default!r} is not served "
                                           f"here; served: {', '.join(sorted(served)) or 'none'}")
