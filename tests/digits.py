"""scikit-learn's digits (1,797 real 8x8 handwritten digits, 17 grey levels) as the second
real model's data: arrays for a scikit-learn pipeline, PNG files for the serving path."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def digits() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 8, 8), 0 = no ink, 255 = full ink; labels (N,))."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return np.rint(data.images * 255 / 16).astype(np.uint8), data.target


def png(image: np.ndarray, side: int = 64) -> bytes:
    """An 8x8 digit upscaled (nearest) to `side` px, grayscale PNG."""
    out = io.BytesIO()
    Image.fromarray(image).resize((side, side), Image.Resampling.NEAREST).save(out, format="PNG")
    return out.getvalue()


def write_folders(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """ROOT/<digit>/<i>.png: the layout `python -m image_cluster.models retrain` reads."""
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.png").write_bytes(png(image))
    return root


def split(labels: np.ndarray, per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` indices of each digit for training, the rest held out (index arrays)."""
    rng = np.random.default_rng(seed)
    train = np.concatenate([rng.permutation(np.flatnonzero(labels == d))[:per_class] for d in range(10)])
    held = np.setdiff1d(np.arange(len(labels)), train)
    return np.sort(train), held


def sklearn_onnx(path: Path, images: np.ndarray, labels: np.ndarray):
    """A scikit-learn pipeline (scaler + logistic regression) fitted on the 8x8 digits in
    their own 0-16 scale, exported with skl2onnx to `path`; returns the pipeline."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = features(images)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, labels)
    onx = to_onnx(pipeline, x[:1], options={id(pipeline.steps[-1][1]): {"zipmap": False}})
    path.write_bytes(onx.SerializeToString())
    return pipeline


def features(images: np.ndarray) -> np.ndarray:
    """uint8 digits -> scikit-learn's own 0-16 float features, flat."""
    return (images.reshape(len(images), -1).astype(np.float32) * np.float32(16 / 255))


# serving.json for the scikit-learn digits model: flat 8x8 grayscale, back to the 0-16 scale;
# and the same as `python -m image_cluster.models import` flags.
DIGITS_SPEC = {"layout": "flat", "size": 8, "channels": "L", "scale": 16 / 255, "crop_fraction": 1.0}
DIGIT_FLAGS = ["--layout", "flat", "--size", "8", "--channels", "L", "--scale", str(16 / 255), "--crop-fraction", "1"]
DIGIT_LABELS = [str(d) for d in range(10)]
