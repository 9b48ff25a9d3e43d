"""Load a served model from a TF Serving-style directory: MODEL_DIR/<version>/.

The newest numeric version is served, by one of two backends:
- `tflite` (default): model.tflite through ai-edge-litert's interpreter with XNNPACK.
  It never imports TensorFlow, so a worker starts in well under a second and stays small.
- `savedmodel`: the SavedModel through TensorFlow.
- `noop`: no inference at all (uniform scores), to measure everything around the model.
Besides the model, a version directory may hold labels.txt (one class name per line) and
serving.json (preprocessing settings); without them, classes are named by index and the
default preprocessing applies.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.imaging import DEFAULT_PATH, PATHS, Preprocessing

# Reference preprocessings a serving.json may declare (what the model was validated with).
REFERENCES = {"tf_eval": "TensorFlow's eval path: centre crop, tf.image.resize bicubic, no antialias"}


class ModelError(Exception):
    pass


def newest_version(model_dir: Path) -> Path:
    versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    if not versions:
        raise ModelError(f"{model_dir} has no numeric version directory (expected {model_dir}/1/)")
    return max(versions, key=lambda p: int(p.name))


@dataclass
class Model:
    name: str
    version: str
    backend: str
    input_shape: tuple[int, int, int]  # H, W, C of one image
    labels: list[str]
    preprocessing: Preprocessing
    load_seconds: float
    _predict: object  # callable: uint8 (N, H, W, C) -> float32 (N, classes)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities for a uint8 batch; one row per input image."""
        out = self._predict(batch)
        if out.shape[0] != batch.shape[0]:
            raise ModelError(f"model returned {out.shape[0]} rows for a batch of {batch.shape[0]}")
        return out


def _savedmodel_predictor(version_dir: Path, intra_op_threads: int, inter_op_threads: int):
    import tensorflow as tf

    if intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
    if inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
    loaded = tf.saved_model.load(str(version_dir))
    fn = loaded.signatures["serving_default"]
    (input_name, spec), = fn.structured_input_signature[1].items()
    (output_name,) = fn.structured_outputs.keys()
    if spec.dtype != tf.uint8 or spec.shape.rank != 4:
        raise ModelError(f"serving_default must take uint8 NHWC images, takes {spec}")

    def predict(batch: np.ndarray) -> np.ndarray:
        return fn(**{input_name: tf.constant(batch)})[output_name].numpy()

    # Hold a reference to `loaded`: the concrete function needs its variables alive.
    predict.loaded = loaded
    return predict, tuple(spec.shape[1:])


def _tflite_predictor(version_dir: Path, threads: int):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(version_dir / "model.tflite"), num_threads=threads or os.cpu_count())
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    signature = tuple(int(d) for d in inp["shape_signature"])
    if inp["dtype"] != np.uint8 or len(signature) != 4:
        raise ModelError(f"model.tflite must take uint8 NHWC images, takes {inp['dtype']} {signature}")
    interpreter.resize_tensor_input(inp["index"], [1, *signature[1:]])
    interpreter.allocate_tensors()

    def predict(batch: np.ndarray) -> np.ndarray:
        # With XNNPACK on CPU, images one after another are as fast as one big batch
        # (measured: 344 img/s at batch 1, 293 at batch 32), and the interpreter never
        # has to re-allocate for a new batch size.
        rows = []
        for image in batch:
            interpreter.set_tensor(inp["index"], image[None])
            interpreter.invoke()
            rows.append(interpreter.get_tensor(out["index"])[0].copy())
        return np.stack(rows)

    return predict, signature[1:]


def _noop_predictor(version_dir: Path, threads: int):
    """Benchmark-only: the TFLite model's input shape, but no inference (uniform scores)."""
    _, input_shape = _tflite_predictor(version_dir, 1)
    classes = len((version_dir / "labels.txt").read_text().splitlines())

    def predict(batch: np.ndarray) -> np.ndarray:
        return np.full((len(batch), classes), 1.0 / classes, dtype=np.float32)

    return predict, input_shape


BACKENDS = ("tflite", "savedmodel", "noop")


def serving_settings(version_dir: Path, preprocessing: str) -> dict:
    """serving.json (optional), checked; errors name the file and the field."""
    path = version_dir / "serving.json"
    settings = json.loads(path.read_text()) if path.exists() else {}
    reference = settings.get("reference", "tf_eval")
    if reference not in REFERENCES:
        raise ModelError(f"{path}: field 'reference' is {reference!r}; supported: {sorted(REFERENCES)}")
    if preprocessing not in PATHS:
        raise ModelError(f"preprocessing path {preprocessing!r} is not one of {PATHS}")
    if preprocessing == "exact" and settings.get("resample", "bicubic") != "bicubic":
        raise ModelError(f"{path}: field 'resample' must be 'bicubic' for the exact path")
    return settings


def load_model(model_dir: Path, *, backend: str = "tflite", intra_op_threads: int = 0,
               inter_op_threads: int = 0, preprocessing: str = DEFAULT_PATH) -> Model:
    """`intra_op_threads` is TensorFlow's intra-op pool or the TFLite interpreter's threads;
    `preprocessing` the path that computes the model's input (edge.imaging.PATHS)."""
    start = time.perf_counter()
    model_dir = Path(model_dir)
    version_dir = newest_version(model_dir)
    if backend == "tflite":
        predict, input_shape = _tflite_predictor(version_dir, intra_op_threads)
    elif backend == "savedmodel":
        predict, input_shape = _savedmodel_predictor(version_dir, intra_op_threads, inter_op_threads)
    elif backend == "noop":
        predict, input_shape = _noop_predictor(version_dir, intra_op_threads)
    else:
        raise ModelError(f"unknown backend {backend!r}; choose from {BACKENDS}")
    if None in input_shape or input_shape[0] != input_shape[1] or input_shape[2] != 3:
        raise ModelError(f"model input must be square RGB, got {input_shape}")

    settings = serving_settings(version_dir, preprocessing)
    labels_file = version_dir / settings.get("labels", "labels.txt")
    labels = labels_file.read_text().splitlines() if labels_file.exists() else []

    preprocessing = Preprocessing(
        size=int(input_shape[0]),
        crop_fraction=float(settings.get("crop_fraction", Preprocessing.crop_fraction)),
        resample=settings.get("resample", Preprocessing.resample),
        path=preprocessing,
    )
    # One warm-up call so the first request does not pay for graph tracing.
    probs = predict(np.zeros((1, *input_shape), dtype=np.uint8))
    if labels and len(labels) != probs.shape[1]:
        raise ModelError(f"{labels_file} has {len(labels)} labels, the model {probs.shape[1]} classes")
    labels = labels or [str(i) for i in range(probs.shape[1])]
    return Model(
        name=model_dir.name,
        version=version_dir.name,
        backend=backend,
        input_shape=tuple(int(d) for d in input_shape),
        labels=labels,
        preprocessing=preprocessing,
        load_seconds=time.perf_counter() - start,
        _predict=predict,
    )
