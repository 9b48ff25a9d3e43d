"""Import a model file as the next version of a model in the repository.

The file is copied (a Keras file is converted to TFLite, so serving it never imports
TensorFlow), serving.json is written from the flags, and the staged version is loaded
exactly as a worker would load it and asked to classify one sample image through the
real decode path: it must answer one finite score per label. Only then is it renamed
into place; on any refusal nothing is left in the repository.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.config import EdgeConfig
from edge.imaging import ImageError, preprocess
from worker.model import Model, load_version
from worker.repository import check_name, write_version
from worker.serving import ModelError, ServingSpec

KERAS_SUFFIXES = (".keras", ".h5")


@dataclass
class Imported:
    version_dir: Path
    model: Model
    sample_top: list[tuple[str, float]]  # the sample image's best classes, as a smoke check


def source_kind(source: Path) -> str:
    """keras, savedmodel, tflite or onnx; ModelError for anything else."""
    if source.is_dir():
        if (source / "saved_model.pb").exists():
            return "savedmodel"
        raise ModelError(f"{source} is a directory without saved_model.pb (not a SavedModel)")
    if not source.is_file():
        raise ModelError(f"{source}: no such file")
    suffix = source.suffix.lower()
    kinds = {".tflite": "tflite", ".onnx": "onnx", **dict.fromkeys(KERAS_SUFFIXES, "keras")}
    if suffix not in kinds:
        raise ModelError(f"{source}: unknown model file; import a .keras, .h5, .tflite or .onnx file or a "
                         f"SavedModel directory")
    return kinds[suffix]


def keras_to_tflite(source: Path) -> bytes:
    import keras
    import tensorflow as tf

    try:
        model = keras.models.load_model(source, compile=False)
    except Exception as exc:  # Keras raises many types for unreadable files
        raise ModelError(f"{source}: Keras cannot load it ({type(exc).__name__}: {exc})") from None
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def copy_model(source: Path, kind: str, target: Path) -> None:
    if kind == "keras":
        (target / "model.tflite").write_bytes(keras_to_tflite(source))
    elif kind == "savedmodel":
        shutil.copytree(source, target, dirs_exist_ok=True)
    else:
        shutil.copyfile(source, target / f"model.{kind}")


def sample_image() -> bytes:
    """A PNG to smoke-test with when none is given: a colour gradient with a disc."""
    from PIL import Image, ImageDraw

    y, x = np.mgrid[0:256, 0:256]
    pixels = np.stack([x, y, 255 - (x + y) // 2], axis=2).astype(np.uint8)
    img = Image.fromarray(pixels)
    ImageDraw.Draw(img).ellipse((64, 64, 192, 192), fill=(240, 240, 240))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def check_answers(model: Model, sample: bytes) -> list[tuple[str, float]]:
    try:
        image = preprocess(sample, model.preprocessing, EdgeConfig().max_pixels)
    except ImageError as exc:
        raise ModelError(f"the sample image: {exc.message}") from None
    row = model.predict(image[None])[0]
    if not np.all(np.isfinite(row)):
        raise ModelError("the model answered the sample image with non-finite scores")
    best = np.argsort(-row)[:3]
    return [(model.labels[i], float(row[i])) for i in best]


def import_model(source: Path, name: str, repository: Path, spec: ServingSpec, *, labels: Path | None = None,
                 sample: bytes | None = None) -> Imported:
    """Write `source` as the next version of `repository/name`; ModelError says why not."""
    check_name(name)
    kind = source_kind(source)
    if labels is not None and not labels.is_file():
        raise ModelError(f"{labels}: no such labels file")
    checked: dict = {}

    def fill(staging: Path) -> None:
        try:
            check(staging)
        except ModelError as exc:  # name the files as the user knows them, not the staging directory
            raise ModelError(str(exc).replace(str(staging), f"{repository / name}/<new version>")) from None

    def check(staging: Path) -> None:
        copy_model(source, kind, staging)
        if labels is not None:
            shutil.copyfile(labels, staging / spec.labels)
        (staging / "serving.json").write_text(json.dumps(spec.to_json(), indent=2) + "\n")
        model = load_version(staging, name=name)  # without labels, classes are named by index
        checked["top"] = check_answers(model, sample_image() if sample is None else sample)
        checked["model"] = model

    version_dir = write_version(repository / name, fill)
    model = checked["model"]
    model.version = version_dir.name
    return Imported(version_dir, model, checked["top"])
