"""The standard protocols' JSON tensors (edge/tensors.py) and the JSON codec every server
answers with (edge/jsonio.py): what the binary path reads, the JSON path reads the same;
anything else is a 400 that says why."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from edge import jsonio
from edge.errors import ApiError
from edge.inference import InferRequest, ModelInfo
from edge.tensors import OutputSpec, output_tensor, read_images, timeout_parameter

pytestmark = pytest.mark.unit

INFO = ModelInfo("m", ("1",), "tflite", (4, 5, 3), 10)
LIMIT = 10**6


def read(data: object, shape: list, raw: bytes | None = None) -> np.ndarray:
    request = InferRequest("m")
    read_images(request, "UINT8", shape, raw, data, INFO, LIMIT)
    return request.tensor


def test_uint8_json_data_flat_or_nested_reads_as_the_binary_tensor():
    images = np.random.default_rng(0).integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)
    binary = read(None, [2, 4, 5, 3], images.tobytes())
    for data in (images.ravel().tolist(), images.tolist(), jsonio.loads(json.dumps(images.tolist()))):
        tensor = read(data, [2, 4, 5, 3])
        assert tensor.dtype == np.uint8 and tensor.shape == (2, 4, 5, 3)
        np.testing.assert_array_equal(tensor, binary)
        np.testing.assert_array_equal(tensor, images)


@pytest.mark.parametrize("data, says", [
    ([7] * 59, "has 59 elements, its shape declares 60"),
    ([7] * 59 + [256], "integers from 0 to 255"),
    ([7] * 59 + [-1], "integers from 0 to 255"),
    ([7] * 59 + [1.5], "integers from 0 to 255"),
    ([7] * 59 + ["7"], "integers from 0 to 255"),
    ([7] * 59 + [None], "integers from 0 to 255"),
    ([7] * 59 + [2**70], "integers from 0 to 255"),
    ([True] * 60, "integers from 0 to 255"),
    ([[7] * 30, [7] * 29 + [[7]]], "nested evenly"),
    ({"data": [7] * 60}, "JSON array"),
])
def test_bad_uint8_json_data_is_a_400_that_says_why(data, says):
    with pytest.raises(ApiError) as caught:
        read(data, [1, 4, 5, 3])
    assert caught.value.status == 400 and says in caught.value.message


def test_fp32_output_as_json_keeps_every_float32_exactly():
    probs = np.random.default_rng(1).random((2, 10), dtype=np.float32) / 7
    results = [SimpleNamespace(probabilities=row) for row in probs]
    tensor = output_tensor(OutputSpec(), results)
    written = jsonio.loads(jsonio.dumps({"data": tensor.json_data()}))["data"]
    assert len(written) == 20
    np.testing.assert_array_equal(np.array(written, dtype=np.float32), probs.ravel())


def test_jsonio_refuses_what_is_not_json_as_a_value_error():
    for raw in (b"\x00garbage", b'{"a": NaN}', b"[" * 2000 + b"]" * 2000, b"\xff\xfe", b'{"a": 1e400}'):
        with pytest.raises(ValueError):
            jsonio.loads(raw)
    assert jsonio.loads(memoryview(b'{"a": [1, 2]}xx')[:13]) == {"a": [1, 2]}


def test_json_response_is_utf8_json():
    response = jsonio.json_response({"label": "café", "score": np.float32(0.5)}, status=404, headers={"X-A": "1"})
    assert response.status == 404 and response.headers["X-A"] == "1"
    assert response.content_type == "application/json" and response.charset == "utf-8"
    assert json.loads(response.body.decode("utf-8")) == {"label": "café", "score": 0.5}


def test_jsonio_writes_numpy_as_it_lies_or_as_a_list():
    matrix = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert jsonio.loads(jsonio.dumps({"row": matrix[1], "column": matrix[:, 1], "half": np.float16(0.5)})) == {
        "row": [4.0, 5.0, 6.0, 7.0], "column": [1.0, 5.0, 9.0], "half": 0.5}
    with pytest.raises(TypeError):
        jsonio.dumps({"a": {1, 2}})


def test_the_timeout_parameter_is_whole_microseconds():
    assert timeout_parameter(None) is None and timeout_parameter(0) is None  # none: the tier's own limits
    assert timeout_parameter(250_000) == 0.25
    for value in (-1, 1.5, True, "100", [100]):
        with pytest.raises(ApiError) as caught:
            timeout_parameter(value)
        assert caught.value.status == 400 and "microseconds" in caught.value.message
