"""The default model: weights read safely without torch, a deterministic build, the
right labels, and SavedModel and TFLite exports that agree on real photos."""

from __future__ import annotations

import hashlib
import pickle
import subprocess
import sys

import numpy as np
import pytest

from edge.imaging import preprocess
from image_cluster.models import default_model
from image_cluster.models.torch_legacy import (
    MAGIC_NUMBER,
    PROTOCOL_VERSION,
    UnsafePickleError,
    load_state_dict,
)
from tests.conftest import DOMESTIC_CATS, ESPRESSO, MODEL_DIR, SKIMAGE_DATA, jpeg_bytes
from worker.model import load_model

VERSION_DIR = MODEL_DIR / "1"


@pytest.fixture(scope="module")
def model():
    return load_model(MODEL_DIR, backend="savedmodel")


@pytest.fixture(scope="module")
def photos(model):
    prep = model.preprocessing
    return {
        "coffee": preprocess(jpeg_bytes(SKIMAGE_DATA / "coffee.png"), prep, 10**8),
        "chelsea": preprocess((SKIMAGE_DATA / "chelsea.png").read_bytes(), prep, 10**8),
    }


@pytest.mark.unit
def test_weights_verified_and_complete():
    state = load_state_dict(str(default_model.weights_path()))  # weights_path checks the sha256
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert sum(k.endswith("_depthwise_conv.weight") for k in state) == 16
    assert all(v.flags.c_contiguous for v in state.values())


def _legacy_file(path, state_pickle: bytes):
    with open(path, "wb") as f:
        for obj in (MAGIC_NUMBER, PROTOCOL_VERSION, {"little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        f.write(state_pickle)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.unit
def test_reader_refuses_code_execution(tmp_path):
    marker = tmp_path / "pwned"
    _legacy_file(tmp_path / "evil.pth", pickle.dumps({"w": _Exploit(marker)}, protocol=2))
    with pytest.raises(UnsafePickleError, match="system"):
        load_state_dict(str(tmp_path / "evil.pth"))
    assert not marker.exists()


@pytest.mark.unit
def test_reader_refuses_non_torch_file(tmp_path):
    (tmp_path / "x.pth").write_bytes(pickle.dumps(123, protocol=2))
    with pytest.raises(ValueError, match="magic"):
        load_state_dict(str(tmp_path / "x.pth"))


@pytest.mark.unit
def test_layout_and_labels():
    for name in ("saved_model.pb", "variables", "model.tflite", "labels.txt", "serving.json"):
        assert (VERSION_DIR / name).exists(), name
    labels = (VERSION_DIR / "labels.txt").read_text().splitlines()
    assert len(labels) == 1000
    expected = {0: "tench", 207: "golden retriever", 281: "tabby", 504: "coffee mug",
                967: "espresso", 999: "toilet tissue"}
    assert {i: labels[i] for i in expected} == expected


@pytest.mark.unit
def test_savedmodel_classifies_real_photos(model, photos):
    assert model.name == "efficientnet_lite0" and model.version == "1"
    assert model.input_shape == (224, 224, 3)
    probs = model.predict(np.stack([photos["coffee"], photos["chelsea"]]))
    assert probs.shape == (2, 1000)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert probs[0].argmax() == ESPRESSO and probs[0, ESPRESSO] > 0.9
    assert probs[1].argmax() in DOMESTIC_CATS


@pytest.mark.unit
def test_tflite_backend_agrees_with_savedmodel(model, photos):
    lite = load_model(MODEL_DIR, backend="tflite", fp32=True)  # the export itself; fp16: test_model_host.py
    assert lite.backend == "tflite" and lite.input_shape == model.input_shape and lite.labels == model.labels
    batch = np.stack(list(photos.values()))
    lite_probs, full_probs = lite.predict(batch), model.predict(batch)
    assert (lite_probs.argmax(axis=1) == full_probs.argmax(axis=1)).all()
    np.testing.assert_allclose(lite_probs, full_probs, atol=2e-3)


@pytest.mark.system
def test_tflite_worker_never_imports_tensorflow():
    """Everything a TFLite worker imports and loads, in a fresh interpreter."""
    code = (
        "import sys; import worker.server, worker.http_api, worker.zmq_endpoint;"
        "from worker.model import load_model;"
        f"m = load_model({str(MODEL_DIR)!r}, backend='tflite');"
        "assert m.predict(__import__('numpy').zeros((2, 224, 224, 3), 'uint8')).shape == (2, 1000);"
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _build(models_dir) -> str:
    """Run the build as users do, in a fresh process (graph names depend on process state)."""
    return subprocess.run([sys.executable, "-m", "image_cluster.models", "build", "--models-dir", str(models_dir)],
                          capture_output=True, text=True, check=True, timeout=300).stdout


@pytest.mark.system
def test_build_is_deterministic_and_skips_when_present(tmp_path):
    assert "built" in _build(tmp_path)
    built = tmp_path / "efficientnet_lite0" / "1"
    for name in ("model.tflite", "labels.txt", "serving.json", "saved_model.pb",
                 "variables/variables.data-00000-of-00001"):
        assert _digest(built / name) == _digest(VERSION_DIR / name), name
    assert "skipping" in _build(tmp_path)
