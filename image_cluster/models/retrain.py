"""Retrain on your own photos: the default model's backbone, a new classifier head.

DATA_DIR has one sub-folder per class (its name is the label). Every photo goes through
the served preprocessing (edge/imaging.py, the default model's settings) and the
backbone's pooled 1280 features (image_cluster/models/efficientnet_lite.py, `embed`); a softmax head is
fitted on a stratified share of them and scored on the rest (held out, never seen in
fitting). The result is a complete servable model: backbone + new head exported to TFLite,
the class names as labels.txt, the default model's serving.json, written through the
repository's atomic path (worker/repository.py).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.config import EdgeConfig
from edge.imaging import ImageError, preprocess
from edge.preprocessing import Preprocessing
from worker.model import Model, load_version
from worker.repository import check_name, write_version
from worker.serving import ModelError

# The photo suffixes read (client/images.py has the same set; servers never import the client).
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


@dataclass
class Retrained:
    version_dir: Path
    model: Model
    labels: list[str]
    train_images: int
    holdout_images: int
    holdout_accuracy: float


def find_photos(data_dir: Path) -> tuple[list[str], list[Path], np.ndarray]:
    """Class names (sorted sub-folder names), photo paths, and each photo's class index."""
    if not data_dir.is_dir():
        raise ModelError(f"{data_dir}: no such directory")
    labels, paths, classes = [], [], []
    for folder in sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(photos) < 2:
            raise ModelError(f"{folder}: needs at least 2 photos, has {len(photos)}")
        labels.append(folder.name)
        paths += photos
        classes += [len(labels) - 1] * len(photos)
    if len(labels) < 2:
        raise ModelError(f"{data_dir}: needs one sub-folder per class, at least 2 classes; found {len(labels)}")
    return labels, paths, np.array(classes)


def load_photos(paths: list[Path], prep: Preprocessing) -> np.ndarray:
    images = []
    for path in paths:
        try:
            images.append(preprocess(path.read_bytes(), prep, EdgeConfig().max_pixels))
        except ImageError as exc:
            raise ModelError(f"{path}: {exc.message}") from None
    return np.stack(images)


def split(classes: np.ndarray, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified: `holdout` of each class (at least one photo) is kept apart for scoring."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(classes):
        members = rng.permutation(np.flatnonzero(classes == c))
        n = max(1, int(round(len(members) * holdout)))
        test += list(members[:n])
        train += list(members[n:])
    return np.array(sorted(train)), np.array(sorted(test))


def fit_softmax(x: np.ndarray, y: np.ndarray, classes: int, steps: int = 400, l2: float = 1e-4,
                lr: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression (a Keras softmax layer, full-batch Adam, zero start, so
    the same photos give the same head): (kernel features x classes, bias)."""
    import keras
    import tensorflow as tf

    head = keras.layers.Dense(classes, activation="softmax", kernel_initializer="zeros",
                              kernel_regularizer=keras.regularizers.L2(l2))
    model = keras.Sequential([keras.Input((x.shape[1],)), head])
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy")
    # All the steps in one Keras epoch: per-epoch overhead would cost 20x the fit itself.
    full_batch = tf.data.Dataset.from_tensors((x, y)).repeat()
    model.fit(full_batch, steps_per_epoch=steps, epochs=1, shuffle=False, verbose=0)
    kernel, bias = head.get_weights()
    return kernel, bias


def embed(module, images: np.ndarray, batch: int = 32) -> np.ndarray:
    import tensorflow as tf

    features = tf.function(module.embed)
    return np.concatenate([features(tf.constant(images[i:i + batch])).numpy() for i in range(0, len(images), batch)])


def retrain(data_dir: Path, name: str, repository: Path, *, holdout: float = 0.2, seed: int = 0) -> Retrained:
    """Fit a new head on DATA_DIR's photos and write the servable model; ModelError says why not."""
    from image_cluster.models.default_model import pretrained, save

    check_name(name)
    labels, paths, classes = find_photos(data_dir)
    images = load_photos(paths, Preprocessing())  # the default model's input: 224 px, its crop
    module = pretrained()
    features = embed(module, images)
    train, test = split(classes, holdout, seed)
    kernel, bias = fit_softmax(features[train], classes[train], len(labels))
    accuracy = float(np.mean((features[test] @ kernel + bias).argmax(axis=1) == classes[test]))
    module.replace_head(kernel, bias)
    kept: dict = {}

    def fill(staging: Path) -> None:
        with tempfile.TemporaryDirectory() as saved_model:
            save(module, Path(saved_model), staging, labels)
        model = load_version(staging, name=name)
        served = model.predict(images[test[:8]]).argmax(axis=1)
        fitted = (features[test[:8]] @ kernel + bias).argmax(axis=1)
        if not np.array_equal(served, fitted):
            raise ModelError("the exported model disagrees with the fitted head; nothing was written")
        kept["model"] = model

    version_dir = write_version(repository / name, fill)
    kept["model"].version = version_dir.name
    return Retrained(version_dir, kept["model"], labels, len(train), len(test), accuracy)
