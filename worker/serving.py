"""serving.json: how an image becomes a model's input, and what its output means.

Every version directory may hold one (docs/guide/own-models.md); every field is
optional and unknown fields are refused, so a typo cannot pass silently:

    {
      "backend": "tflite",          tflite | savedmodel | onnx (default: the model file present)
      "labels": "labels.txt",       one class name per line
      "size": 224,                  square input side (default: the model's own)
      "channels": "RGB",            RGB | BGR | L (grayscale)
      "layout": "NHWC",             NHWC | NCHW | flat (N, H*W*C: e.g. a scikit-learn pipeline)
      "dtype": "float32",           checked against the model's input (uint8 or float32)
      "scale": 0.00392156862,       float inputs: (x * scale - mean) / std, per channel
      "mean": [0.485, 0.456, 0.406],
      "std": [0.229, 0.224, 0.225],
      "crop_fraction": 0.875,       centre crop before resizing (1.0: the whole image)
      "resample": "bicubic",        bicubic | bilinear
      "reference": "tf_eval",       the preprocessing the model was validated with
      "output": "probabilities",    probabilities | logits (softmax applied)
      "output_name": "probs",       which output, when the model has several
      "precision": "fp16"           fp32 | fp16: fp16 allows half precision where the runtime
                                    and CPU have it (TFLite on AVX512-FP16 or Arm FP16), else fp32
    }

Images always travel as uint8 (N, H, W, C) tensors (the worker protocol); the channel
order, scaling, dtype and layout are applied by the worker just before the model runs:
cheap, and 4x fewer bytes on the wire than float32.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from edge.imaging import RESAMPLE
from edge.preprocessing import Preprocessing

# Reference preprocessings a serving.json may declare (what the model was validated with).
REFERENCES = {"tf_eval": "TensorFlow's eval path: centre crop, tf.image.resize bicubic, no antialias"}
BACKEND_FILES = {"tflite": "model.tflite", "onnx": "model.onnx", "savedmodel": "saved_model.pb"}
CHANNELS = {"RGB": 3, "BGR": 3, "L": 1}
LAYOUTS = ("NHWC", "NCHW", "flat")
DTYPES = ("uint8", "float32")
OUTPUTS = ("probabilities", "logits")
PRECISIONS = ("fp32", "fp16")


class ModelError(Exception):
    """A model or its serving.json cannot be served; the message names the file and field."""


@dataclass(frozen=True)
class ServingSpec:
    backend: str | None = None
    labels: str = "labels.txt"
    size: int | None = None
    channels: str = "RGB"
    layout: str = "NHWC"
    dtype: str | None = None
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    crop_fraction: float = Preprocessing.crop_fraction
    resample: str = Preprocessing.resample
    reference: str = "tf_eval"
    output: str = "probabilities"
    output_name: str | None = None
    precision: str = "fp32"

    @property
    def scaled(self) -> bool:
        return self.scale != 1.0 or any(self.mean) or any(s != 1.0 for s in self.std)

    def to_json(self) -> dict:
        """The fields that differ from the defaults (what an import writes)."""
        default = ServingSpec()
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value != getattr(default, f.name):
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def read_spec(version_dir: Path) -> ServingSpec:
    """The version directory's serving.json (defaults when absent), checked field by field."""
    path = version_dir / "serving.json"
    if not path.exists():
        return ServingSpec()
    try:
        raw = json.loads(path.read_text())
    except ValueError as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ModelError(f"{path}: must be a JSON object")
    return parse_spec(raw, str(path))


def parse_spec(raw: dict, where: str) -> ServingSpec:
    known = {f.name for f in fields(ServingSpec)}
    for key in raw:
        if key not in known:
            raise ModelError(f"{where}: unknown field {key!r}; known: {sorted(known)}")

    def bad(name: str, expected: str):
        return ModelError(f"{where}: field {name!r} is {raw[name]!r}; expected {expected}")

    def choice(name: str, allowed) -> None:
        if name in raw and raw[name] not in allowed:
            raise bad(name, f"one of {list(allowed)}")

    choice("backend", BACKEND_FILES)
    choice("channels", CHANNELS)
    choice("layout", LAYOUTS)
    choice("dtype", DTYPES)
    choice("output", OUTPUTS)
    choice("resample", RESAMPLE)
    choice("reference", REFERENCES)
    choice("precision", PRECISIONS)
    for name in ("labels", "output_name"):
        if name in raw and not (isinstance(raw[name], str) and raw[name]):
            raise bad(name, "a non-empty string")
    if "size" in raw and not (isinstance(raw["size"], int) and 1 <= raw["size"] <= 4096):
        raise bad("size", "a whole number of pixels from 1 to 4096")
    if "crop_fraction" in raw and not (_is_number(raw["crop_fraction"]) and 0 < raw["crop_fraction"] <= 1):
        raise bad("crop_fraction", "a number in (0, 1]")
    if "scale" in raw and not (_is_number(raw["scale"]) and raw["scale"] > 0):
        raise bad("scale", "a positive number")
    values = dict(raw)
    channels = CHANNELS[raw.get("channels", "RGB")]
    for name in ("mean", "std"):
        if name in raw:
            values[name] = _per_channel(raw, name, channels, bad)
    if "std" in values and not all(s > 0 for s in values["std"]):
        raise bad("std", "positive numbers")
    return ServingSpec(**values)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _per_channel(raw: dict, name: str, channels: int, bad) -> tuple[float, ...]:
    value = raw[name]
    value = [value] if _is_number(value) else value
    if not (isinstance(value, list) and len(value) in (1, channels) and all(_is_number(v) for v in value)):
        raise bad(name, f"a number or a list of {channels} numbers (one per channel)")
    return tuple(float(v) for v in value)


def backend_for(version_dir: Path, spec: ServingSpec) -> str:
    """serving.json's backend, else the first model file present (tflite, onnx, savedmodel)."""
    if spec.backend:
        if not (version_dir / BACKEND_FILES[spec.backend]).exists():
            raise ModelError(f"{version_dir}/serving.json: field 'backend' is {spec.backend!r} but "
                             f"{BACKEND_FILES[spec.backend]} is missing")
        return spec.backend
    for backend, filename in BACKEND_FILES.items():
        if (version_dir / filename).exists():
            return backend
    raise ModelError(f"{version_dir} holds no model file (one of {', '.join(BACKEND_FILES.values())})")


class InputAdapter:
    """uint8 (N, H, W, C) images -> the model's input, as serving.json describes it."""

    def __init__(self, spec: ServingSpec, dtype: np.dtype):
        self.spec, self.dtype = spec, dtype
        self.scale = np.float32(spec.scale)
        self.mean = np.asarray(spec.mean, dtype=np.float32)
        self.std = np.asarray(spec.std, dtype=np.float32)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = batch[..., ::-1] if self.spec.channels == "BGR" else batch
        if self.dtype != np.uint8:
            x = ((x.astype(np.float32) * self.scale - self.mean) / self.std).astype(self.dtype, copy=False)
        if self.spec.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        elif self.spec.layout == "flat":
            x = x.reshape(len(x), -1)
        return np.ascontiguousarray(x)


def image_shape(model_shape: tuple, spec: ServingSpec, where: str) -> tuple[int, int, int]:
    """The (H, W, C) uint8 image a model input of `model_shape` (batch excluded; None where
    dynamic) takes under `spec`. Raises ModelError when they cannot agree."""
    channels = CHANNELS[spec.channels]
    if spec.layout == "flat":
        if len(model_shape) != 1:
            raise ModelError(f"{where}: layout 'flat' needs a rank-2 input (N, H*W*C), the model takes {model_shape}")
        if spec.size is None:
            raise ModelError(f"{where}: layout 'flat' needs field 'size' (the image side)")
        if model_shape[0] not in (None, spec.size * spec.size * channels):
            raise ModelError(f"{where}: a {spec.size}x{spec.size}x{channels} image is "
                             f"{spec.size * spec.size * channels} values, the model takes {model_shape[0]}")
        return spec.size, spec.size, channels
    if len(model_shape) != 3:
        raise ModelError(f"{where}: the model has no image input: it takes {model_shape}, "
                         f"not (H, W, C) or (C, H, W) (a flat input needs \"layout\": \"flat\")")
    h, w, c = model_shape if spec.layout == "NHWC" else (model_shape[1], model_shape[2], model_shape[0])
    if c != channels:
        raise ModelError(f"{where}: field 'channels' is {spec.channels} ({channels} channel(s)), "
                         f"the model's {spec.layout} input has {c}")
    sides = {d for d in (h, w) if d is not None}
    if len(sides) > 1:
        raise ModelError(f"{where}: only square inputs are served; the model takes {h}x{w}")
    size = spec.size or (sides.pop() if sides else None)
    if size is None:
        raise ModelError(f"{where}: the model's input size is dynamic: set field 'size'")
    if sides and size not in sides:
        raise ModelError(f"{where}: field 'size' is {spec.size}, the model takes {h}x{w}")
    return size, size, channels


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)
