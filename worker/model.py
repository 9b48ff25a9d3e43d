"""Load a served model version: MODEL_DIR/<version>/ (TF Serving's layout).

A version directory holds one model file (model.tflite, model.onnx or a SavedModel),
labels.txt and serving.json (worker/serving.py: how an image becomes the model's input).
The runtime is chosen by the file present unless --backend names one (worker/backends.py);
`noop` skips inference altogether, to measure everything around the model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.preprocessing import DEFAULT_PATH, PATHS, Preprocessing
from worker import backends
from worker.model_host import ModelHostError, native_fp16
from worker.serving import (
    BACKEND_FILES,
    CHANNELS,
    InputAdapter,
    ModelError,
    ServingSpec,
    backend_for,
    image_shape,
    read_spec,
    softmax,
)

log = logging.getLogger(__name__)

__all__ = ["BACKENDS", "Model", "ModelError", "load_model", "load_version", "newest_version"]

BACKENDS = ("auto", *BACKEND_FILES, "noop")


def newest_version(model_dir: Path) -> Path:
    versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()] if model_dir.is_dir() else []
    if not versions:
        raise ModelError(f"{model_dir} has no numeric version directory (expected {model_dir}/1/)")
    return max(versions, key=lambda p: int(p.name))


@dataclass
class Model:
    name: str
    version: str
    backend: str
    input_shape: tuple[int, int, int]  # H, W, C of one uint8 image, as it travels
    labels: list[str]
    preprocessing: Preprocessing
    load_seconds: float
    _predict: object  # callable: uint8 (N, H, W, C) -> float32 (N, classes)
    concurrency: int = 1  # batches `predict` may be given at once (the runtime's Runner.concurrency)
    precision: str = "fp32"  # the arithmetic the model runs in: fp32, or fp16 (worker/model_host.py)
    stop: object = lambda: None  # callable: end the runtime's processes; a batch still running fails

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities for a uint8 batch; one row per input image."""
        out = self._predict(batch)
        if out.shape[0] != batch.shape[0]:
            raise ModelError(f"model returned {out.shape[0]} rows for a batch of {batch.shape[0]}")
        return out


def _open(backend: str, version_dir: Path, spec: ServingSpec, threads: int, inter_op_threads: int,
          batch_interpreters: int, fp16: bool):
    if backend == "tflite":
        return backends.open_tflite(version_dir, threads, spec.output_name, batch_interpreters, fp16)
    if backend == "onnx":
        return backends.open_onnx(version_dir, threads, spec.output_name)
    return backends.open_savedmodel(version_dir, threads, spec.output_name, inter_op_threads)


def _prepared(backend: str, version_dir: Path, spec: ServingSpec, threads: int, inter_op_threads: int,
              batch_interpreters: int, preprocessing: str, fp16: bool):
    """The runtime opened, checked against serving.json and sized for the input: (runner,
    one image's shape as it travels, the adapter to the model's input form)."""
    where = str(version_dir / "serving.json")
    runner = _open(backend, version_dir, spec, threads, inter_op_threads, batch_interpreters, fp16)
    _check_preprocessing(spec, runner, preprocessing, where)
    shape = image_shape(tuple(runner.input_shape), spec, where)
    adapt = InputAdapter(spec, runner.input_dtype)
    runner.prepare(adapt(np.zeros((1, *shape), dtype=np.uint8)).shape[1:])
    return runner, shape, adapt


def _check_preprocessing(spec: ServingSpec, runner, path: str, where: str) -> None:
    if path not in PATHS:
        raise ModelError(f"preprocessing path {path!r} is not one of {PATHS}")
    if path == "exact" and spec.resample != "bicubic":
        raise ModelError(f"{where}: field 'resample' must be 'bicubic' for the exact path")
    dtype = runner.input_dtype.name
    if spec.dtype and spec.dtype != dtype:
        raise ModelError(f"{where}: field 'dtype' is {spec.dtype}, the model takes {dtype}")
    if dtype == "uint8" and spec.scaled:
        raise ModelError(f"{where}: fields 'scale', 'mean', 'std' apply to float inputs; the model takes uint8")


def load_version(version_dir: Path, *, name: str | None = None, backend: str = "auto", intra_op_threads: int = 0,
                 inter_op_threads: int = 0, batch_interpreters: int = 1, preprocessing: str = DEFAULT_PATH,
                 fp32: bool = False) -> Model:
    """One version directory, checked and warmed up. `intra_op_threads` is the runtime's
    intra-op threads (0: every core); `batch_interpreters` the one-thread TFLite
    interpreters that run batches side by side (0: one per core, 1: none); `preprocessing`
    the path that computes the input; `fp32` keeps a model whose serving.json allows fp16
    in fp32."""
    start = time.perf_counter()
    version_dir = Path(version_dir)
    spec = read_spec(version_dir)
    chosen = backend_for(version_dir, spec) if backend in ("auto", "noop") else backend
    if chosen not in BACKEND_FILES:
        raise ModelError(f"unknown backend {backend!r}; choose from {BACKENDS}")
    fp16 = uses_fp16(spec, chosen, backend == "noop" or fp32)
    opening = (chosen, version_dir, spec, intra_op_threads, inter_op_threads, batch_interpreters, preprocessing)
    try:
        runner, shape, adapt = _prepared(*opening, fp16)
    except ModelHostError as exc:  # e.g. a runtime build without fp16 kernels: serving beats failing
        log.warning("%s: cannot run in half precision (%s); serving it in fp32", version_dir, exc)
        fp16 = False
        runner, shape, adapt = _prepared(*opening, fp16)
    labels = _labels(version_dir / spec.labels)
    if backend == "noop":
        if not labels:
            raise ModelError(f"the noop backend needs {version_dir / spec.labels}")
        runner = backends.noop(runner, len(labels))

    def predict(batch: np.ndarray) -> np.ndarray:
        out = runner.run(adapt(batch))
        out = np.asarray(out, dtype=np.float32).reshape(len(batch), -1)
        return softmax(out) if spec.output == "logits" else out

    predict.keep = runner  # the runtime lives as long as the model
    probs = predict(np.zeros((1, *shape), dtype=np.uint8))  # warm-up: the first request pays no tracing
    if labels and len(labels) != probs.shape[1]:
        raise ModelError(f"{version_dir / spec.labels} has {len(labels)} labels, the model {probs.shape[1]} classes")
    preprocessing = Preprocessing(shape[0], spec.crop_fraction, spec.resample, preprocessing, CHANNELS[spec.channels])
    return Model(name or version_dir.parent.name, version_dir.name, backend if backend == "noop" else chosen, shape,
                 labels or [str(i) for i in range(probs.shape[1])], preprocessing, time.perf_counter() - start,
                 predict, runner.concurrency, "fp16" if fp16 else "fp32", runner.stop)


def uses_fp16(spec: ServingSpec, backend: str, fp32: bool) -> bool:
    """Whether the model runs in half precision: its serving.json allows it, it is a
    TFLite model, fp32 is not forced, and the CPU has native half-precision arithmetic
    (elsewhere XNNPACK would emulate it, slower than fp32)."""
    return spec.precision == "fp16" and backend == "tflite" and not fp32 and native_fp16()


def _labels(path: Path) -> list[str]:
    if not path.exists():
        return []
    labels = path.read_text().splitlines()
    while labels and not labels[-1].strip():
        labels.pop()
    return labels


def load_model(model_dir: Path, **options) -> Model:
    """The newest numeric version in `model_dir` (see load_version for the options)."""
    model_dir = Path(model_dir)
    return load_version(newest_version(model_dir), name=model_dir.name, **options)
