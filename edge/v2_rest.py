"""The Open Inference Protocol (KServe v2, Triton's HTTP API) over REST, on either tier.

Health, server and model metadata, model readiness, and inference with Triton's binary
tensor data extension (JSON header, then raw tensors; `Inference-Header-Content-Length`
gives the JSON's length) and classification extension (`"classification": k` on an
output -> BYTES "score:index:label"). No Content-Type is required: tritonclient sends
none. Errors are `{"error": "..."}` (edge/errors.py formats them by path).
"""

from __future__ import annotations

from aiohttp import web

from edge.app import EDGE_CONFIG
from edge.inference import INPUT_NAME, OUTPUT_NAME, SERVER_NAME, SERVER_VERSION, InferRequest, ModelInfo, infer_within
from edge.jsonio import dumps, json_response, loads
from edge.request_log import REQUEST_ID
from edge.tensors import OutputSpec, bad, output_spec, output_tensor, read_images, timeout_parameter, wanted
from edge.upload import read_body

SERVICE = web.AppKey("inference_service", object)  # the tier's edge.inference.InferenceService
HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data", "classification"]


def model_metadata(info: ModelInfo) -> dict:
    h, w, c = info.input_shape
    return {
        "name": info.name, "versions": list(info.versions), "platform": info.platform,
        "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1],
                    "parameters": {"also_accepts": {"datatype": "UINT8", "shape": [-1, h, w, c]}}}],
        "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, info.num_classes]}],
    }


async def live(request: web.Request) -> web.Response:
    return json_response({"live": True})


async def ready(request: web.Request) -> web.Response:
    is_ready = request.app[SERVICE].ready()
    return json_response({"ready": is_ready}, status=200 if is_ready else 503)


async def server_metadata(request: web.Request) -> web.Response:
    return json_response({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS})


async def metadata(request: web.Request) -> web.Response:
    info = request.app[SERVICE].model(request.match_info["model"], request.match_info.get("version"))
    return json_response(model_metadata(info))


async def model_ready(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    service.model(request.match_info["model"], request.match_info.get("version"))  # 404 when unknown
    is_ready = service.ready()
    return json_response({"ready": is_ready}, status=200 if is_ready else 503)


def split_body(request: web.Request, body: bytes) -> tuple[dict, memoryview]:
    """(JSON header, the binary tensors after it)."""
    length = request.headers.get(HEADER_LENGTH)
    if length is None:
        size = len(body)
    elif length.isdigit() and int(length) <= len(body):
        size = int(length)
    else:
        raise bad(f"{HEADER_LENGTH} must be a length within the body, got {length!r}")
    try:
        header = loads(memoryview(body)[:size])
    except ValueError:
        raise bad("the request is not JSON") from None
    if not isinstance(header, dict):
        raise bad("the request must be a JSON object")
    return header, memoryview(body)[size:]


def parse_request(header: dict, binary: memoryview, info: ModelInfo, limit: int) -> tuple[InferRequest, list]:
    inputs = header.get("inputs")
    if not (isinstance(inputs, list) and len(inputs) == 1 and isinstance(inputs[0], dict)):
        raise bad(f"the model takes exactly one input, {INPUT_NAME!r}")
    tensor = inputs[0]
    if tensor.get("name") != INPUT_NAME:
        raise bad(f"unknown input {tensor.get('name')!r}: the model's input is {INPUT_NAME!r}")
    params = tensor.get("parameters") or {}
    raw = None
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not (isinstance(size, int) and 0 <= size <= len(binary)):
            raise bad(f"binary_data_size {size!r} is past the end of the body ({len(binary)} bytes of tensors)")
        raw = binary[:size]
    request = InferRequest(info.name, None)
    read_images(request, tensor.get("datatype"), tensor.get("shape"), raw, tensor.get("data"), info, limit)
    request.timeout_s = timeout_parameter(_parameters(header).get("timeout"))
    return request, output_specs(header, info.num_classes)


def _parameters(header: dict) -> dict:
    parameters = header.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise bad("parameters must be a JSON object")
    return parameters


def output_specs(header: dict, num_classes: int) -> list[OutputSpec]:
    binary_default = bool(_parameters(header).get("binary_data_output", False))
    outputs = header.get("outputs") or [{"name": OUTPUT_NAME}]
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise bad("outputs must be a list of objects")
    specs = []
    for o in outputs:
        p = o.get("parameters") or {}
        specs.append(output_spec(o.get("name"), p.get("classification"), p.get("binary_data", binary_default),
                                 num_classes))
    return specs


def parse_body(request: web.Request, body: bytes, info: ModelInfo,
               limit: int) -> tuple[InferRequest, list[OutputSpec], dict]:
    """(the request, its outputs, {"id": ...} to echo). The parsed JSON dies here, as in
    edge/tfserving.py's parse_body: pixels sent as nested lists must not outlive parsing."""
    header, binary = split_body(request, body)
    inference, specs = parse_request(header, binary, info, limit)
    return inference, specs, {"id": header["id"]} if "id" in header else {}


def encode_response(echo: dict, info: ModelInfo, specs: list[OutputSpec], results) -> web.Response:
    outputs, chunks = [], []
    for spec in specs:
        tensor = output_tensor(spec, results)
        out = {"name": OUTPUT_NAME, "datatype": tensor.datatype, "shape": tensor.shape}
        if spec.binary:
            raw = tensor.raw()
            out["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            out["data"] = tensor.json_data()
        outputs.append(out)
    body = {"model_name": info.name, "model_version": results[0].version, "outputs": outputs, **echo}
    if not chunks:
        return json_response(body)
    encoded = dumps(body)
    return web.Response(body=b"".join([encoded, *chunks]), content_type="application/octet-stream",
                        headers={HEADER_LENGTH: str(len(encoded))})


async def infer(request: web.Request) -> web.Response:
    service, config = request.app[SERVICE], request.app[EDGE_CONFIG]
    info = service.model(request.match_info["model"], request.match_info.get("version"))
    service.check_room(info)
    body = await read_body(request, config.max_body_bytes, config.read_timeout)
    inference, specs, echo = parse_body(request, body, info, config.max_body_bytes)
    inference.version, inference.request_id = request.match_info.get("version"), request[REQUEST_ID]
    wanted(inference, specs)
    results = await infer_within(service, inference)
    return encode_response(echo, info, specs, results)


def add_v2_routes(app: web.Application) -> None:
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2", server_metadata)
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        app.router.add_get(base, metadata)
        app.router.add_get(base + "/ready", model_ready)
        app.router.add_post(base + "/infer", infer)
