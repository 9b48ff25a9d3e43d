"""Every backend serves a real model of its library, with the input adapted as its
serving.json says, and answers what the library itself answers in process."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.digits import DIGIT_LABELS, DIGITS_SPEC, digits, features, sklearn_onnx
from worker.backends import _Interpreters
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


def test_tflite_float_input_with_scaling(tmp_path, tiny_keras):
    import tensorflow as tf

    path = version_dir(tmp_path, "tiny", {"scale": 1 / 255, "mean": [0.5, 0.5, 0.5], "std": 0.5}, ["a", "b", "c"])
    (path / "model.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(tiny_keras).convert())
    model = load_model(tmp_path / "tiny")
    batch = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    expected = tiny_keras((batch.astype(np.float32) / 255 - 0.5) / 0.5).numpy()
    assert model.backend == "tflite" and np.allclose(model.predict(batch), expected, atol=1e-5)


def test_tflite_one_thread_interpreters_run_batches_side_by_side(tmp_path, tiny_keras):
    """With 3 one-thread interpreters the model takes 3 batches at once, and batches run
    from 3 threads together answer row for row what the model answers."""
    import tensorflow as tf

    path = version_dir(tmp_path, "tiny", {"scale": 1 / 255}, ["a", "b", "c"])
    (path / "model.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(tiny_keras).convert())
    batches = np.random.default_rng(1).integers(0, 256, (6, 5, 16, 16, 3), dtype=np.uint8)
    expected = [tiny_keras(b.astype(np.float32) / 255).numpy() for b in batches]
    model = load_model(tmp_path / "tiny", batch_interpreters=3)
    assert model.concurrency == 3 and load_model(tmp_path / "tiny", batch_interpreters=1).concurrency == 1
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(model.predict, [*batches, *(b[:1] for b in batches)]))
    for i, batch_expected in enumerate(expected):
        assert np.allclose(answers[i], batch_expected, atol=1e-5)
        assert np.allclose(answers[len(expected) + i], batch_expected[:1], atol=1e-5)


def test_a_lone_image_on_an_idle_model_takes_the_main_interpreter():
    """The main interpreter (every core's threads) serves a lone image that finds nothing
    else running, and is never handed to two batches; everything else takes a free
    one-thread interpreter."""
    pool = _Interpreters("main", ["lane0", "lane1"])
    with pool.interpreter(1) as alone:
        with pool.interpreter(1) as beside, pool.interpreter(8) as third:
            assert alone == "main" and {beside, third} == {"lane0", "lane1"}
    with pool.interpreter(8) as batch:
        assert batch in ("lane0", "lane1")
    with pool.interpreter(1) as again:
        assert again == "main"  # idle again
    with _Interpreters("main", []).interpreter(8) as only:
        assert only == "main"  # no one-thread interpreters: everything runs on main


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
