"""Every backend serves a real model of its library, with the input adapted as its
serving.json says, and answers what the library itself answers in process."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.digits import DIGIT_LABELS, DIGITS_SPEC, digits, features, sklearn_onnx
from worker.model import load_model
from worker.serving import softmax

pytestmark = pytest.mark.unit


def version_dir(root, name, spec: dict, labels: list[str]):
    path = root / name / "1"
    path.mkdir(parents=True)
    (path / "serving.json").write_text(json.dumps(spec))
    (path / "labels.txt").write_text("\n".join(labels) + "\n")
    return path


def test_onnx_serves_a_scikit_learn_pipeline(tmp_path):
    images, labels = digits()
    path = version_dir(tmp_path, "digits", DIGITS_SPEC, DIGIT_LABELS)
    pipeline = sklearn_onnx(path / "model.onnx", images[:1000], labels[:1000])
    model = load_model(tmp_path / "digits")
    assert (model.backend, model.input_shape, model.labels) == ("onnx", (8, 8, 1), DIGIT_LABELS)
    assert model.preprocessing.channels == 1 and model.preprocessing.crop_fraction == 1.0
    served = model.predict(images[1000:, :, :, None])
    expected = pipeline.predict_proba(features(images[1000:]))
    assert np.allclose(served, expected, atol=1e-4)


@pytest.fixture(scope="module")
def tiny_keras():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


def test_tflite_float_input_with_scaling(tmp_path, tiny_keras):
    import tensorflow as tf

    path = version_dir(tmp_path, "tiny", {"scale": 1 / 255, "mean": [0.5, 0.5, 0.5], "std": 0.5}, ["a", "b", "c"])
    (path / "model.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(tiny_keras).convert())
    model = load_model(tmp_path / "tiny")
    batch = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    expected = tiny_keras((batch.astype(np.float32) / 255 - 0.5) / 0.5).numpy()
    assert model.backend == "tflite" and np.allclose(model.predict(batch), expected, atol=1e-5)


def test_tflite_batch_spread_over_one_thread_interpreters_keeps_its_order(tmp_path, tiny_keras):
    """A batch spread over 3 one-thread interpreters (image i on interpreter i mod 3)
    answers row for row what the model answers; a lone image takes the main interpreter."""
    import tensorflow as tf

    path = version_dir(tmp_path, "tiny", {"scale": 1 / 255}, ["a", "b", "c"])
    (path / "model.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(tiny_keras).convert())
    batch = np.random.default_rng(1).integers(0, 256, (7, 16, 16, 3), dtype=np.uint8)
    expected = tiny_keras(batch.astype(np.float32) / 255).numpy()
    spread = load_model(tmp_path / "tiny", batch_interpreters=3)
    assert len(spread._predict.keep.keep.interpreters) == 3
    assert np.allclose(spread.predict(batch), expected, atol=1e-5)
    assert np.allclose(spread.predict(batch[4:5]), expected[4:5], atol=1e-5)


def test_savedmodel_nchw_logits(tmp_path):
    import tensorflow as tf

    kernel = tf.constant(np.random.default_rng(1).normal(size=(3 * 8 * 8, 4)).astype(np.float32))

    class Logits(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3, 8, 8], tf.float32)])
        def serve(self, x):
            return {"logits": tf.matmul(tf.reshape(x, [-1, 3 * 8 * 8]), kernel)}

    path = version_dir(tmp_path, "nchw", {"layout": "NCHW", "output": "logits", "scale": 1 / 255}, list("wxyz"))
    module = Logits()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    model = load_model(tmp_path / "nchw")
    batch = np.random.default_rng(2).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    logits = module.serve(tf.constant(batch.transpose(0, 3, 1, 2).astype(np.float32) / 255))["logits"].numpy()
    assert model.backend == "savedmodel" and model.input_shape == (8, 8, 3)
    assert np.allclose(model.predict(batch), softmax(logits), atol=1e-5)


def test_noop_keeps_the_shape_and_skips_the_model(tmp_path):
    images, labels = digits()
    path = version_dir(tmp_path, "digits", DIGITS_SPEC, DIGIT_LABELS)
    sklearn_onnx(path / "model.onnx", images[:200], labels[:200])
    model = load_model(tmp_path / "digits", backend="noop")
    assert model.backend == "noop" and model.input_shape == (8, 8, 1)
    assert np.allclose(model.predict(images[:2, :, :, None]), 0.1)
