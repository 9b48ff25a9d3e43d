"""The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`), on either tier.

ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata and ModelInfer (with
the classification extension), served by grpcio's asyncio server on the tier's own gRPC
port. The generated stubs are the ones `tritonclient[grpc]` ships (service_pb2,
service_pb2_grpc), so the server speaks exactly what Triton's client speaks. Admission
matches the HTTP fronts: the bearer token in the `authorization` metadata (health calls
are open), the request id from `x-request-id`, the body limit as the largest message,
and the tier's overload refusals; errors map to gRPC status codes.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from edge.auth import token_matches
from edge.config import EdgeConfig
from edge.errors import ApiError
from edge.inference import (
    INPUT_NAME,
    OUTPUT_NAME,
    SERVER_NAME,
    SERVER_VERSION,
    InferenceService,
    InferRequest,
    infer_within,
)
from edge.error_codes import GRPC_STATUS
from edge.metrics import LATENCY_BUCKETS
from edge.request_log import CLIENT_CLOSED, Answered, sane_request_id
from edge.tensors import bad, output_spec, output_tensor, read_images, serialize_bytes, timeout_parameter, wanted
from edge.v2_rest import EXTENSIONS, model_metadata

CODES = {status: getattr(grpc.StatusCode, name) for status, name in GRPC_STATUS.items()}
OPEN_METHODS = frozenset({"ServerLive", "ServerReady"})
INTERNAL = "the server failed to handle this request"

log = logging.getLogger(__name__)


def code_for(status: int) -> grpc.StatusCode:
    """The gRPC status code for an HTTP-like status."""
    if status == 200:
        return grpc.StatusCode.OK
    return CODES.get(status, grpc.StatusCode.INTERNAL)


class RpcMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.requests = Counter("imagecluster_grpc_requests_total", "gRPC calls by method and status code",
                                ["method", "code"], registry=registry)
        self.latency = Histogram("imagecluster_grpc_request_duration_seconds", "gRPC call latency", ["method"],
                                 buckets=LATENCY_BUCKETS, registry=registry)


def _image_input(request: pb.ModelInferRequest) -> tuple[str, list[int], bytes]:
    """(datatype, shape, raw bytes) of the one image input, from raw contents or typed ones."""
    if len(request.inputs) != 1:
        raise bad(f"the model takes exactly one input, {INPUT_NAME!r}")
    tensor = request.inputs[0]
    if tensor.name != INPUT_NAME:
        raise bad(f"unknown input {tensor.name!r}: the model's input is {INPUT_NAME!r}")
    if request.raw_input_contents:
        return tensor.datatype, list(tensor.shape), request.raw_input_contents[0]
    if tensor.datatype == "BYTES":
        return tensor.datatype, list(tensor.shape), serialize_bytes(list(tensor.contents.bytes_contents))
    values = np.array(tensor.contents.uint_contents, dtype=np.uint32)
    if tensor.datatype == "UINT8" and values.size and values.max() > 255:
        raise bad("UINT8 data must be integers from 0 to 255")
    return tensor.datatype, list(tensor.shape), values.astype(np.uint8).tobytes()


def _timeout(request: pb.ModelInferRequest) -> float | None:
    """The request's `timeout` parameter (microseconds; tritonclient sets int64_param)."""
    if "timeout" not in request.parameters:
        return None
    parameter = request.parameters["timeout"]
    return timeout_parameter(getattr(parameter, parameter.WhichOneof("parameter_choice") or "int64_param"))


def _tensors(specs: list[dict]) -> list:
    return [pb.ModelMetadataResponse.TensorMetadata(name=t["name"], datatype=t["datatype"], shape=t["shape"])
            for t in specs]


class V2Servicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: InferenceService, config: EdgeConfig, metrics: RpcMetrics,
                 answered: Answered | None = None):
        self.service, self.config, self.metrics, self.answered = service, config, metrics, answered
        self.unfinished = 0  # calls our handlers have, or whose ends grpcio is still sending

    async def _call(self, method: str, context, answer: Callable[[str], object]):
        """Admit the call, answer it (`answer(request_id)`, maybe a coroutine), count it. An
        unexpected error is logged and answered INTERNAL: its text never reaches the client
        (grpcio would send it as the details of an UNKNOWN)."""
        started, status, rid = time.perf_counter(), 500, ""
        self.unfinished += 1
        context.add_done_callback(self._finished)  # once grpcio has sent the call's end
        try:
            metadata = dict(context.invocation_metadata() or ())
            rid = sane_request_id(metadata.get("x-request-id", ""))
            token = self.config.auth_token
            if token and method not in OPEN_METHODS:
                scheme, _, value = metadata.get("authorization", "").partition(" ")
                if scheme.lower() != "bearer" or not token_matches(value.strip(), token):
                    raise ApiError(401, "unauthorized", "a valid bearer token is required")
            result = answer(rid)
            result = await result if inspect.isawaitable(result) else result
            status = 200
            return result
        except ApiError as exc:
            status = exc.status
            await context.abort(code_for(status), exc.message)
        except asyncio.CancelledError:  # the client cancelled, or its deadline passed
            status = CLIENT_CLOSED
            raise
        except Exception:
            log.exception("unhandled error in gRPC %s request_id=%s", method, rid)
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL)
        finally:
            seconds = time.perf_counter() - started
            self.metrics.requests.labels(method, code_for(status).name).inc()
            self.metrics.latency.labels(method).observe(seconds)
            if method == "ModelInfer" and self.answered:
                self.answered(status, seconds)

    def _finished(self, context) -> None:
        self.unfinished -= 1

    async def ServerLive(self, request, context):
        return await self._call("ServerLive", context, lambda rid: pb.ServerLiveResponse(live=True))

    async def ServerReady(self, request, context):
        return await self._call("ServerReady", context, lambda rid: pb.ServerReadyResponse(ready=self.service.ready()))

    async def ModelReady(self, request, context):
        def answer(rid):
            self.service.model(request.name, request.version or None)
            return pb.ModelReadyResponse(ready=self.service.ready())
        return await self._call("ModelReady", context, answer)

    async def ServerMetadata(self, request, context):
        return await self._call("ServerMetadata", context, lambda rid: pb.ServerMetadataResponse(
            name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS))

    async def ModelMetadata(self, request, context):
        def answer(rid):
            meta = model_metadata(self.service.model(request.name, request.version or None))
            return pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                                            inputs=_tensors(meta["inputs"]), outputs=_tensors(meta["outputs"]))
        return await self._call("ModelMetadata", context, answer)

    async def ModelInfer(self, request, context):
        return await self._call("ModelInfer", context, lambda rid: self._infer(request, rid, context))

    async def _infer(self, request: pb.ModelInferRequest, request_id: str, context) -> pb.ModelInferResponse:
        info = self.service.model(request.model_name, request.model_version or None)
        self.service.check_room(info)
        datatype, shape, raw = _image_input(request)
        inference = InferRequest(info.name, request.model_version or None, request_id=request_id)
        read_images(inference, datatype, shape, raw, None, info, self.config.max_body_bytes)
        # The call's deadline counts too: it travels to the worker, which refuses what it
        # could not answer in time.
        limits = [t for t in (_timeout(request), context.time_remaining()) if t is not None]
        inference.timeout_s = min(limits) if limits else None
        outputs = request.outputs or [pb.ModelInferRequest.InferRequestedOutputTensor(name=OUTPUT_NAME)]
        specs = [output_spec(o.name, o.parameters["classification"].int64_param if "classification" in o.parameters
                             else 0, True, info.num_classes) for o in outputs]
        wanted(inference, specs)
        results = await infer_within(self.service, inference)
        tensors = [output_tensor(spec, results) for spec in specs]
        return pb.ModelInferResponse(
            model_name=info.name, model_version=results[0].version, id=request.id,
            outputs=[pb.ModelInferResponse.InferOutputTensor(name=OUTPUT_NAME, datatype=t.datatype, shape=t.shape)
                     for t in tensors],
            raw_output_contents=[t.raw() for t in tensors])


@dataclass
class GrpcFront:
    """A started gRPC server and the port it listens on."""
    server: grpc.aio.Server
    port: int
    servicer: V2Servicer
    _stopping: asyncio.Future | None = field(default=None, init=False, repr=False)

    async def stop(self, grace: float) -> None:
        """Stop once (a second call waits for the first); see _stop."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop(grace))
        await self._stopping

    async def _stop(self, grace: float) -> None:
        """Take no new call, let the calls we have finish (for up to `grace` s), then stop at
        once. grpcio can accept a call in the instant it stops and never hand it to a
        handler; it would hold that call, and its client, for the whole grace (a proxy's
        restart once kept a client waiting out its 30 s deadline). Stopped at once, grpcio
        fails it at once, and a client may retry it elsewhere. We wait for a quiet moment,
        not the first idle one: a call sent before its client read the GOAWAY may still be
        on its way to our handler."""
        stopping = asyncio.ensure_future(self.server.stop(grace))
        now = asyncio.get_running_loop().time
        deadline, quiet_since = now() + grace, now()
        while now() < deadline:
            if self.servicer.unfinished:
                quiet_since = now()
            elif now() - quiet_since >= _QUIET_S:
                break
            await asyncio.sleep(0.02)
        await self.server.stop(None)  # the shortest grace given wins
        await stopping


_QUIET_S = 0.1  # seconds with no call unfinished, after which what grpcio still holds is held for good


async def start_grpc(service: InferenceService, config: EdgeConfig, host: str, port: int,
                     registry: CollectorRegistry, answered: Answered | None = None) -> GrpcFront:
    """A started gRPC front (`port` 0: any free one); `answered(status, seconds)` watches
    every ModelInfer, as edge's ANSWERED does POSTs."""
    limit = config.max_body_bytes
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                      ("grpc.max_send_message_length", limit)])
    servicer = V2Servicer(service, config, RpcMetrics(registry), answered)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host or '0.0.0.0'}:{port}")
    await server.start()
    return GrpcFront(server, bound, servicer)
