"""The model repository: which models a worker serves, and versions that appear whole."""

from __future__ import annotations

import pytest

from worker.repository import model_names, versions, write_version
from worker.serving import ModelError

pytestmark = pytest.mark.unit


def test_models_served(tmp_path):
    with pytest.raises(ModelError, match="holds no model"):
        model_names(tmp_path)
    for path in ("b/1", "a/2", "a/10", "empty", "c/.staging-x", "bad name/1"):
        (tmp_path / path).mkdir(parents=True)
    assert model_names(tmp_path) == ["a", "b"]  # numbered versions only; odd names left alone
    assert versions(tmp_path / "a") == [2, 10]
    assert model_names(tmp_path, ("b",)) == ["b"]
    with pytest.raises(ModelError, match="c has no numeric version"):
        model_names(tmp_path, ("a", "c"))
    with pytest.raises(ModelError, match="model name"):
        model_names(tmp_path, ("../a",))


def test_versions_are_numbered_and_a_failure_leaves_nothing(tmp_path):
    model = tmp_path / "m"
    assert write_version(model, lambda d: (d / "f").write_text("1")) == model / "1"
    (model / "7").mkdir()  # whatever is there, the next number is one above the highest
    assert write_version(model, lambda d: (d / "f").write_text("8")) == model / "8"
    assert (model / "8" / "f").read_text() == "8"

    def fail(d):
        (d / "half").write_text("x")
        raise ModelError("refused")

    with pytest.raises(ModelError):
        write_version(model, fail)
    assert sorted(p.name for p in model.iterdir()) == ["1", "7", "8"]  # no staging left
    with pytest.raises(ModelError):
        write_version(tmp_path / "new", fail)
    assert not (tmp_path / "new").exists()  # a model directory it created goes too
