"""The worker's ZeroMQ endpoint, spoken to directly with the wire module."""

from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import pytest
import zmq
import zmq.asyncio

from edge.imaging import preprocess
from edge.preprocessing import Preprocessing
from tests.conftest import ESPRESSO, consul_get, roundtrip
from tests.consul_dev import PROJECT_ROOT
from worker.protocol import BatchRequest, Cancel, ProtocolError, decode_message


def zmq_endpoint(consul_agent, worker) -> str:
    (entry,) = [e for e in consul_get(consul_agent, "/v1/health/service/classifier?passing")
                if e["Service"]["ID"] == worker.worker_id]
    return f"tcp://{entry['Service']['Address']}:{entry['Service']['Meta']['zmq_port']}"


@pytest.mark.system
async def test_batch_of_images_classified(consul_agent, worker, coffee_jpeg, chelsea_png):
    coffee = preprocess(coffee_jpeg, Preprocessing(), 10**8)
    chelsea = preprocess(chelsea_png, Preprocessing(), 10**8)
    images = np.stack([coffee, chelsea, coffee])
    request = BatchRequest("b1", ["a", "b", "c"], images, model="efficientnet_lite0", k=3)
    reply = await roundtrip(zmq_endpoint(consul_agent, worker), request.encode())
    assert reply["batch"] == "b1" and reply["worker"] == worker.worker_id
    assert reply["model"] == "efficientnet_lite0"
    results = {r["id"]: r for r in reply["results"]}
    assert all(r["version"] == "1" for r in results.values())
    assert results["a"]["predictions"][0]["index"] == ESPRESSO
    assert results["c"]["predictions"][0]["index"] == ESPRESSO
    assert results["b"]["predictions"][0]["label"] in {"tabby", "tiger cat", "Egyptian cat"}
    assert all(len(r["predictions"]) == 3 for r in results.values())


@pytest.mark.system
async def test_malformed_messages_answered_or_dropped_and_worker_survives(consul_agent, worker, coffee_jpeg):
    endpoint = zmq_endpoint(consul_agent, worker)
    good_header = {"batch": "x", "ids": ["1"], "dtype": "uint8", "shape": [1, 224, 224, 3]}
    cases = [
        [json.dumps(good_header).encode(), b"\x00" * 10],  # wrong byte count
        [json.dumps({**good_header, "dtype": "float32"}).encode(), b"\x00" * (224 * 224 * 3)],
        [json.dumps({**good_header, "shape": [1, 10, 10, 3]}).encode(), b"\x00" * 300],  # wrong input shape
        [json.dumps({**good_header, "model": "resnet"}).encode(), b"\x00" * (224 * 224 * 3)],
    ]
    for frames in cases:
        reply = await roundtrip(endpoint, frames)
        assert reply["batch"] == "x" and reply["error"]["code"] and reply["error"]["status"] >= 400
    # No batch id: nothing to answer, the message is dropped (and logged).
    for frames in ([b"not json", b""], [b"{}"], [b"\xff" * 100, b"a", b"b"]):
        ctx = zmq.asyncio.Context()
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        await s.send_multipart(frames)
        assert not await s.poll(300)
        s.close()
        ctx.term()
    # Still serving over ZeroMQ and HTTP.
    image = preprocess(coffee_jpeg, Preprocessing(), 10**8)[None]
    reply = await roundtrip(endpoint, BatchRequest("ok", ["1"], image).encode())
    assert reply["results"][0]["predictions"][0]["index"] == ESPRESSO


@pytest.mark.unit
def test_wire_roundtrip_without_pickle():
    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    frames = BatchRequest("b", ["i", "j"], images, model="m", k=7).encode()
    assert frames[0].startswith(b"{")  # JSON, not pickle
    decoded = BatchRequest.decode([bytes(f) for f in frames])
    assert decoded.ids == ["i", "j"] and decoded.k == 7 and decoded.model == "m"
    np.testing.assert_array_equal(decoded.images, images)


@pytest.mark.unit
def test_cancel_messages_are_told_apart_from_batches():
    frames = Cancel(["p-1", "p-2"]).encode()
    assert decode_message([bytes(f) for f in frames]) == Cancel(["p-1", "p-2"])
    batch = BatchRequest("b", ["i"], np.zeros((1, 2, 2, 3), np.uint8)).encode()
    assert isinstance(decode_message([bytes(f) for f in batch]), BatchRequest)
    for bad in ([b'{"cancel": "p-1"}'], [b'{"cancel": [1]}'], [b"[]"], [b"not json"]):
        with pytest.raises(ProtocolError):
            decode_message(bad)


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on `port` (from `ss`)."""
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return {line.split()[3].rsplit(":", 1)[0] for line in out.splitlines()}


@pytest.mark.system
def test_zeromq_binds_only_the_configured_interface(consul_agent, worker):
    port = int(zmq_endpoint(consul_agent, worker).rsplit(":", 1)[1])
    assert listening_addresses(port) == {"127.0.0.1"}  # the worker was started with --host 127.0.0.1


@pytest.mark.unit
def test_nothing_on_the_wire_path_uses_pickle():
    """pickle is imported only by image_cluster/models/torch_legacy.py, the build-time weights reader,
    behind a restricted unpickler; nothing else imports it or uses pyzmq's pickle-based
    send_pyobj / recv_pyobj."""
    pattern = re.compile(r"^\s*(import|from)\s+(c?pickle|dill|marshal)\b|_pyobj\(", re.M)
    users = sorted(str(p.relative_to(PROJECT_ROOT)) for pkg in ("edge", "worker", "proxy", "client", "discovery", "image_cluster")
                   for p in (PROJECT_ROOT / pkg).rglob("*.py") if pattern.search(p.read_text()))
    assert users == ["image_cluster/models/torch_legacy.py"]
