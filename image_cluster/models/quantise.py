"""Integer variants of the default model, built offline: `python -m image_cluster.models build --quantise`.

EfficientNet-Lite was designed for integer inference. Two post-training candidates are
written beside the float model, as models of their own in the repository, so each is one
`?model=` or `--models` away and the float model stays the default:

- efficientnet_lite0_int8: full-integer quantisation (int8 weights and activations, uint8
  input, float32 probabilities out), calibrated on a representative set: random crops,
  flips and brightness changes of the real photos scripts/setup fetches (darknet's), put
  through the served preprocessing;
- efficientnet_lite0_dynamic: dynamic-range quantisation (int8 weights, float activations).

scripts/bench/quantise.py measures both against the float model (docs/performance/studies.md, "Quantised
variants"); neither is the default unless its top-1 agrees with the float model's on
at least 98% of the images kept apart from calibration.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from edge.config import EdgeConfig
from edge.imaging import preprocess
from edge.preprocessing import Preprocessing
from worker.serving import read_spec

VARIANTS = ("int8", "dynamic")
CALIBRATION_SEED = 1  # scripts/bench/quantise.py evaluates on other seeds' crops


def augmented(photos: list[Image.Image], count: int, seed: int) -> Iterator[bytes]:
    """`count` JPEGs: random crops (40-100% of the short side), flips and brightness."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        img = photos[i % len(photos)]
        side = int(min(img.size) * rng.uniform(0.4, 1.0))
        left, top = rng.integers(0, img.width - side + 1), rng.integers(0, img.height - side + 1)
        crop = img.crop((left, top, left + side, top + side))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop = ImageEnhance.Brightness(crop).enhance(rng.uniform(0.7, 1.3))
        out = io.BytesIO()
        crop.save(out, "JPEG", quality=90)
        yield out.getvalue()


def representative(photo_dir: Path, count: int = 200):
    """The converter's representative dataset: preprocessed uint8 crops, one at a time."""
    photos = [Image.open(p).convert("RGB") for p in sorted(photo_dir.glob("*.jpg"))]
    if not photos:
        raise FileNotFoundError(f"no calibration photos (*.jpg) in {photo_dir}: run scripts/setup")
    prep = Preprocessing()

    def dataset():
        for data in augmented(photos, count, CALIBRATION_SEED):
            yield [preprocess(data, prep, EdgeConfig().max_pixels)[None]]

    return dataset


def convert(saved_model: Path, variant: str, photo_dir: Path) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "int8":
        converter.representative_dataset = representative(photo_dir)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8  # the images as they travel
        converter.inference_output_type = tf.float32  # probabilities, as the float model's
    return converter.convert()


def build_variants(float_dir: Path, models_dir: Path, photo_dir: Path) -> list[Path]:
    """Write each variant as models_dir/efficientnet_lite0_VARIANT/1 (skipped when present)."""
    from worker.repository import write_version

    written = []
    for variant in VARIANTS:
        model_dir = models_dir / f"{float_dir.parent.name}_{variant}"
        if (model_dir / "1").exists():
            print(f"{model_dir}/1 exists, skipping")
            continue

        def fill(staging: Path, variant=variant) -> None:
            (staging / "model.tflite").write_bytes(convert(float_dir, variant, photo_dir))
            shutil.copy(float_dir / "labels.txt", staging / "labels.txt")
            # fp16 was measured on the float model, not on these
            serving = replace(read_spec(float_dir), precision="fp32").to_json()
            (staging / "serving.json").write_text(json.dumps(serving, indent=2) + "\n")

        written.append(write_version(model_dir, fill))
        print(f"built {written[-1]}")
    return written
