"""`python -m image_cluster.models import`: what it accepts, what it refuses (with a message and
nothing written), and that versions are numbered and appear whole; the retrain command's
own steps (photo folders, stratified hold-out, the softmax fit)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from image_cluster.models.__main__ import main
from image_cluster.models.importer import import_model
from image_cluster.models.retrain import find_photos, fit_softmax, split
from tests.digits import DIGIT_FLAGS, DIGIT_LABELS, DIGITS_SPEC, digits, png, sklearn_onnx
from worker.serving import ModelError, parse_spec

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def digits_onnx(tmp_path_factory):
    root = tmp_path_factory.mktemp("source")
    images, labels = digits()
    sklearn_onnx(root / "digits.onnx", images[:500], labels[:500])
    (root / "labels.txt").write_text("\n".join(DIGIT_LABELS) + "\n")
    (root / "three.txt").write_text("a\nb\nc\n")
    (root / "garbage.onnx").write_bytes(b"\x00not a model" * 10)
    (root / "model.pt").write_bytes(b"torch")
    return root


def test_imports_numbered_versions_and_leaves_no_staging(tmp_path, digits_onnx, capsys):
    repo = tmp_path / "models"
    argv = ["import", str(digits_onnx / "digits.onnx"), "--name", "digits", "--repository", str(repo),
            "--labels", str(digits_onnx / "labels.txt"), *DIGIT_FLAGS, "--sample", "/dev/null"]
    assert main(argv) == 2 and "sample image" in capsys.readouterr().err  # an empty sample is refused too
    assert not repo.joinpath("digits").exists()
    argv = argv[:-2] + ["--sample", str(write(tmp_path / "seven.png", png(digits()[0][7])))]
    assert main(argv) == 0 and main(argv) == 0
    out = capsys.readouterr().out
    assert f"as {repo}/digits/1 (onnx, input 8x8x1, 10 classes)" in out and f"{repo}/digits/2" in out
    assert "sample image: 7 " in out  # digit 7, served back through the real decode path
    assert sorted(p.name for p in (repo / "digits").iterdir()) == ["1", "2"]
    assert (repo / "digits/2/serving.json").exists() and (repo / "digits/2/labels.txt").exists()


def test_an_import_may_allow_half_precision(tmp_path, tiny_keras, capsys):
    """--precision fp16 lands in serving.json, and the staged version is checked as a worker
    would serve it: in fp16 on a CPU with native half precision (worker/model_host.py)."""
    tiny_keras.save(tmp_path / "tiny.keras")
    repo = tmp_path / "models"
    argv = ["import", str(tmp_path / "tiny.keras"), "--name", "tiny", "--repository", str(repo),
            "--scale", "0.00392157", "--precision", "fp16"]
    assert main(argv) == 0
    assert "(tflite, input 16x16x3, 3 classes)" in capsys.readouterr().out
    assert json.loads((repo / "tiny" / "1" / "serving.json").read_text())["precision"] == "fp16"


@pytest.mark.parametrize("source, extra, message", [
    ("missing.onnx", [], "no such file"),
    ("model.pt", [], "unknown model file"),
    ("garbage.onnx", [], "ONNX Runtime can load"),
    ("digits.onnx", ["--labels", "three.txt"], "has 3 labels, the model 10 classes"),
    ("digits.onnx", ["--layout", "NHWC"], "no image input"),
    ("digits.onnx", ["--size", "8", "9"], "only square inputs"),
])
def test_refusals_say_why_and_write_nothing(tmp_path, digits_onnx, capsys, source, extra, message):
    repo = tmp_path / "models"
    (repo / "digits" / "1").mkdir(parents=True)  # an existing version stays as it is
    extra = [str(digits_onnx / e) if e.endswith(".txt") else e for e in extra]
    argv = ["import", str(digits_onnx / source), "--name", "digits", "--repository", str(repo), *DIGIT_FLAGS, *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and ".staging" not in err
    assert [p.name for p in (repo / "digits").iterdir()] == ["1"]


def test_bad_model_names_are_refused(tmp_path, digits_onnx):
    for name in ("../escape", "a b", "", "x" * 49):
        with pytest.raises(ModelError, match="model name"):
            import_model(digits_onnx / "digits.onnx", name, tmp_path, parse_spec(DIGITS_SPEC, "t"))
    assert not list(tmp_path.iterdir())


def test_photo_folders(tmp_path):
    with pytest.raises(ModelError, match="no such directory"):
        find_photos(tmp_path / "none")
    write(tmp_path / "cats" / "a.jpg", b"x")
    write(tmp_path / "cats" / "b.png", b"x")
    with pytest.raises(ModelError, match="at least 2 classes"):
        find_photos(tmp_path)
    write(tmp_path / "dogs" / "a.jpg", b"x")
    with pytest.raises(ModelError, match="dogs: needs at least 2 photos"):
        find_photos(tmp_path)
    write(tmp_path / "dogs" / "notes.txt", b"x")
    write(tmp_path / "dogs" / "b.JPEG", b"x")
    labels, paths, classes = find_photos(tmp_path)
    assert labels == ["cats", "dogs"] and len(paths) == 4 and list(classes) == [0, 0, 1, 1]


def test_holdout_is_stratified_and_disjoint():
    classes = np.repeat([0, 1, 2], [10, 5, 2])
    train, test = split(classes, 0.2, seed=0)
    assert not set(train) & set(test) and len(train) + len(test) == len(classes)
    assert sorted(np.bincount(classes[test])) == [1, 1, 2]  # at least one of each class held out


def test_softmax_head_fits_separable_data():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 3
    y = rng.integers(0, 3, 300)
    x = (centres[y] + rng.normal(size=(300, 16))).astype(np.float32)
    kernel, bias = fit_softmax(x[:200], y[:200], 3)
    assert kernel.shape == (16, 3) and np.mean((x[200:] @ kernel + bias).argmax(axis=1) == y[200:]) > 0.95


def write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
