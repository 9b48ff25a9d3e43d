"""TensorFlow Serving's REST API, on either tier: model status, metadata, :predict and
:classify, by model name, `/versions/N` or `/labels/LABEL` (labels map to versions with
--version-labels, e.g. stable=1,canary=2: the A/B split's versions by name).

Images come as `{"b64": "..."}` (alone or as the one value of an object, e.g. `{"image":
{"b64": ...}}`), or as a uint8 array [H, W, C] at the model's input size. `instances`
(row format) answers `{"predictions": ...}`, `inputs` (columnar) `{"outputs": ...}`;
:classify answers `{"results": [[[label, score], ...]]}` with the `top_k` best (5).
Errors are `{"error": "..."}` with TF Serving's statuses (edge/errors.py).
"""

from __future__ import annotations

import numpy as np
from aiohttp import web

from edge.app import EDGE_CONFIG
from edge.errors import ApiError
from edge.inference import INPUT_NAME, OUTPUT_NAME, InferRequest, ModelInfo, check_tensor
from edge.jsonio import json_response, loads
from edge.request_log import REQUEST_ID
from edge.tensors import bad, from_base64
from edge.upload import read_body
from edge.v2_rest import SERVICE

NAME = "{name:[^/:]+}"
VERSION_LABELS = web.AppKey("version_labels", dict)
DEFAULT_TOP_K = 5


def requested_version(request: web.Request) -> str | None:
    label = request.match_info.get("label")
    if label is None:
        return request.match_info.get("version")
    version = request.app[VERSION_LABELS].get(label)
    if version is None:
        raise ApiError(404, "label_not_found", f"no version is labelled {label!r}")
    return version


def model_info(request: web.Request) -> ModelInfo:
    return request.app[SERVICE].model(request.match_info["name"], requested_version(request))


async def status(request: web.Request) -> web.Response:
    info = model_info(request)
    version = requested_version(request)
    versions = [version] if version else list(info.versions)
    state = "AVAILABLE" if request.app[SERVICE].ready() else "UNAVAILABLE"
    return json_response({"model_version_status": [
        {"version": v, "state": state, "status": {"error_code": "OK", "error_message": ""}} for v in versions]})


def _dims(*sizes: int) -> dict:
    return {"dim": [{"size": str(s)} for s in sizes]}


async def metadata(request: web.Request) -> web.Response:
    info = model_info(request)
    signature = {
        "inputs": {INPUT_NAME: {"dtype": "DT_STRING", "tensor_shape": _dims(-1), "name": INPUT_NAME}},
        "outputs": {OUTPUT_NAME: {"dtype": "DT_FLOAT", "tensor_shape": _dims(-1, info.num_classes),
                                  "name": OUTPUT_NAME}},
        "method_name": "tensorflow/serving/predict",
    }
    return json_response({
        "model_spec": {"name": info.name, "signature_name": "", "version": requested_version(request) or info.versions[-1]},
        "metadata": {"signature_def": {"signature_def": {"serving_default": signature}}},
    })


def _image(item: object) -> bytes | np.ndarray:
    """One instance: {"b64": ...}, {"<any name>": {"b64": ...}}, or a uint8 array [H, W, C]."""
    if isinstance(item, dict) and len(item) == 1 and "b64" not in item:
        item = next(iter(item.values()))
    if isinstance(item, dict) and set(item) == {"b64"}:
        return from_base64([item["b64"]])[0]
    if isinstance(item, list):
        try:
            array = np.array(item)
        except ValueError:
            array = None
        if array is not None and array.dtype.kind in "iu" and array.size and array.min() >= 0 and array.max() <= 255:
            return array.astype(np.uint8)
    raise bad('an image must be {"b64": "..."} or a uint8 array [height, width, channels]')


def parse_images(body: dict, info: ModelInfo) -> tuple[InferRequest, str]:
    """(request, "predictions" or "outputs") from a predict/classify body."""
    key = next((k for k in ("instances", "inputs", "examples") if k in body), None)
    items = body.get(key)
    if isinstance(items, dict):  # columnar with a named input
        items = next(iter(items.values())) if len(items) == 1 else None
    if not isinstance(items, list) or not items:
        raise bad('the body needs "instances" (or "inputs" / "examples"): a non-empty list of images')
    images = [_image(item) for item in items]
    request = InferRequest(info.name)
    if all(isinstance(i, bytes) for i in images):
        request.encoded = images
    elif all(isinstance(i, np.ndarray) for i in images) and len({i.shape for i in images}) == 1:
        request.tensor = np.stack(images)
        check_tensor(request.tensor, info)
    else:
        raise bad("all images of a request must be of one kind: b64 files, or arrays of one shape")
    return request, "outputs" if key == "inputs" else "predictions"


def parse_body(raw: bytes, info: ModelInfo) -> tuple[InferRequest, str]:
    """parse_images on the JSON body. The parsed JSON dies here: an image sent as nested
    lists is ~50,000 Python lists, and kept alive through the inference they made the
    garbage collector walk them, again and again, in every request's young collections
    and the full ones they led to (2.3x the img/s at c=32 once they were dropped)."""
    try:
        body = loads(raw)
    except ValueError:
        raise bad("the request is not JSON") from None
    if not isinstance(body, dict):
        raise bad("the request must be a JSON object")
    return parse_images(body, info)


async def _run(request: web.Request, *, classify: bool) -> tuple[list, str]:
    config = request.app[EDGE_CONFIG]
    info = model_info(request)
    request.app[SERVICE].check_room(info)
    inference, key = parse_body(await read_body(request, config.max_body_bytes, config.read_timeout), info)
    inference.version, inference.request_id = requested_version(request), request[REQUEST_ID]
    inference.top_k, inference.probabilities = (DEFAULT_TOP_K, False) if classify else (0, True)
    return await request.app[SERVICE].infer(inference), key


async def predict(request: web.Request) -> web.Response:
    verb = request.match_info["verb"]
    if verb == "classify":
        results, _ = await _run(request, classify=True)
        return json_response({"results": [[[p["label"], p["score"]] for p in r.top] for r in results]})
    if verb != "predict":
        raise ApiError(400, "unsupported", f":{verb} is not supported: this server classifies images")
    results, key = await _run(request, classify=False)
    return json_response({key: [r.probabilities for r in results]})


def add_tfserving_routes(app: web.Application, labels: dict[str, str]) -> None:
    app[VERSION_LABELS] = labels
    for base in (f"/v1/models/{NAME}", f"/v1/models/{NAME}/versions/{{version:\\d+}}",
                 f"/v1/models/{NAME}/labels/{{label:[^/:]+}}"):
        app.router.add_get(base, status)
        app.router.add_get(base + "/metadata", metadata)
        app.router.add_post(base + ":{verb}", predict)
