"""serving.json: every field checked with an error naming the file and the field, and the
adapter that turns uint8 images into each model's own input form."""

from __future__ import annotations

import json

import numpy as np
import pytest

from worker.serving import InputAdapter, ModelError, ServingSpec, image_shape, parse_spec, read_spec, softmax

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("raw, field", [
    ({"chanels": "RGB"}, "chanels"),  # a typo is refused, not ignored
    ({"channels": "RGBA"}, "channels"),
    ({"layout": "NWHC"}, "layout"),
    ({"dtype": "float16"}, "dtype"),
    ({"output": "scores"}, "output"),
    ({"resample": "lanczos"}, "resample"),
    ({"reference": "torchvision"}, "reference"),
    ({"size": 0}, "size"),
    ({"size": "224"}, "size"),
    ({"crop_fraction": 1.5}, "crop_fraction"),
    ({"scale": -1}, "scale"),
    ({"mean": [1, 2]}, "mean"),  # 2 values for 3 channels
    ({"std": [1, 0, 1]}, "std"),
    ({"labels": ""}, "labels"),
    ({"backend": "torchscript"}, "backend"),
    ({"precision": "fp8"}, "precision"),
])
def test_bad_fields_are_named(tmp_path, raw, field):
    (tmp_path / "serving.json").write_text(json.dumps(raw))
    with pytest.raises(ModelError) as exc:
        read_spec(tmp_path)
    assert str(tmp_path / "serving.json") in str(exc.value) and repr(field) in str(exc.value)


def test_not_json_and_defaults(tmp_path):
    assert read_spec(tmp_path) == ServingSpec()  # no serving.json: the defaults
    (tmp_path / "serving.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        read_spec(tmp_path)


def test_per_channel_values_and_round_trip():
    spec = parse_spec({"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": 0.25, "channels": "BGR",
                       "precision": "fp16"}, "x")
    assert spec.std == (0.25,) and len(spec.mean) == 3 and spec.scaled
    assert parse_spec(spec.to_json(), "again") == spec
    assert ServingSpec().to_json() == {}


@pytest.mark.parametrize("shape, raw, expected", [
    ((224, 224, 3), {}, (224, 224, 3)),
    ((None, None, 3), {"size": 96}, (96, 96, 3)),
    ((3, 32, 32), {"layout": "NCHW"}, (32, 32, 3)),
    ((64,), {"layout": "flat", "size": 8, "channels": "L"}, (8, 8, 1)),
    ((28, 28, 1), {"channels": "L"}, (28, 28, 1)),
])
def test_image_shape(shape, raw, expected):
    assert image_shape(shape, parse_spec(raw, "s"), "s") == expected


@pytest.mark.parametrize("shape, raw, message", [
    ((64,), {}, "no image input"),
    ((10, 64), {}, "no image input"),
    ((64,), {"layout": "flat"}, "needs field 'size'"),
    ((65,), {"layout": "flat", "size": 8, "channels": "L"}, "the model takes 65"),
    ((224, 224, 3), {"channels": "L"}, "'channels'"),
    ((224, 160, 3), {}, "square"),
    ((None, None, 3), {}, "set field 'size'"),
    ((224, 224, 3), {"size": 96}, "field 'size' is 96"),
])
def test_image_shape_refusals(shape, raw, message):
    with pytest.raises(ModelError, match=message):
        image_shape(shape, parse_spec(raw, "s"), "s")


def test_adapter_orders_scales_and_lays_out():
    batch = np.arange(2 * 2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 2, 3)
    same = InputAdapter(ServingSpec(), np.dtype(np.uint8))(batch)
    assert same.dtype == np.uint8 and np.array_equal(same, batch)
    spec = parse_spec({"channels": "BGR", "layout": "NCHW", "scale": 0.5, "mean": [1, 2, 3], "std": 2}, "s")
    x = InputAdapter(spec, np.dtype(np.float32))(batch)
    expected = ((batch[..., ::-1].astype(np.float32) * 0.5 - [1, 2, 3]) / 2).transpose(0, 3, 1, 2)
    assert x.dtype == np.float32 and x.shape == (2, 3, 2, 2) and np.allclose(x, expected)
    flat = InputAdapter(parse_spec({"layout": "flat", "size": 2}, "s"), np.dtype(np.float32))(batch)
    assert flat.shape == (2, 12) and flat.flags.c_contiguous


def test_softmax_rows():
    p = softmax(np.array([[1000.0, 1000.0], [0.0, np.log(3.0)]]))
    assert np.allclose(p, [[0.5, 0.5], [0.25, 0.75]])
