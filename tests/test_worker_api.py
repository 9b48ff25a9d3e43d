"""The worker's HTTP API end to end: a real worker process with the real default model."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from PIL import Image

from edge.imaging import preprocess
from edge.preprocessing import Preprocessing
from tests.conftest import DOMESTIC_CATS, ESPRESSO, SKIMAGE_DATA, roundtrip, scrape, stalled_upload, value, worker_stats
from tests.processes import child_pids
from worker.model_host import native_fp16
from worker.protocol import BatchRequest

pytestmark = pytest.mark.system


async def post_file(url: str, field: str, data: bytes, filename: str = "photo.jpg", **kw):
    form = aiohttp.FormData()
    form.add_field(field, data, filename=filename, content_type="application/octet-stream")
    async with aiohttp.ClientSession() as s:
        async with s.post(url, data=form, **kw) as r:
            return r.status, await r.json(), r.headers


async def post_raw(url: str, data: bytes, content_type: str | None):
    headers = {"Content-Type": content_type} if content_type else {}
    async with aiohttp.ClientSession(skip_auto_headers=["Content-Type"]) as s:
        async with s.post(url, data=data, headers=headers) as r:
            return r.status, await r.json()


def assert_error(status, body, expected_status, code=None):
    assert status == expected_status, body
    assert set(body) == {"error"} and body["error"]["message"]
    if code:
        assert body["error"]["code"] == code


async def in_flight(worker, n: int) -> bool:
    """Whether the worker reports `n` requests in flight within 5 s."""
    return (await worker_stats(worker.url, lambda stats: stats["in_flight"] == n))["in_flight"] == n


async def assert_still_serving(worker, coffee_jpeg):
    status, body, _ = await post_file(worker.url, "data", coffee_jpeg)
    assert status == 200 and body["predictions"][0]["index"] == ESPRESSO


async def test_coffee_is_espresso_with_full_response(worker, coffee_jpeg):
    status, body, _ = await post_file(worker.url, "data", coffee_jpeg)
    assert status == 200
    assert body["model"] == "efficientnet_lite0" and body["version"] == "1"
    assert body["worker"] == worker.worker_id
    preds = body["predictions"]
    assert len(preds) == 5
    assert preds[0] == {"label": "espresso", "index": ESPRESSO, "score": pytest.approx(0.95, abs=0.03)}
    scores = [p["score"] for p in preds]
    assert scores == sorted(scores, reverse=True)
    assert set(body["timings_ms"]) == {"decode", "queue", "inference", "total"}
    assert body["timings_ms"]["total"] >= body["timings_ms"]["inference"] > 0


def thread_nices(pid: int) -> dict[int, int]:
    """Each thread's nice value (field 19 of /proc/PID/task/TID/stat)."""
    nices = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            nices[int(task.name)] = int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])
    return nices


async def test_compute_threads_run_behind_the_event_loop(worker, coffee_jpeg):
    """Decoding, batches and the runtime's own threads yield the cores to the event loop
    (edge/priority.py); the loop's thread keeps the priority the worker started with."""
    await assert_still_serving(worker, coffee_jpeg)  # the decode and inference threads exist now
    nices = thread_nices(worker.proc.pid)
    loop = nices.pop(worker.proc.pid)
    assert loop == os.getpriority(os.PRIO_PROCESS, 0)  # inherited from this test process, unchanged
    behind = [n for n in nices.values() if n > loop]
    # 2 decode threads, the inference threads (one per interpreter lane) and XNNPACK's own;
    # in fp16, XNNPACK runs in child processes (worker/model_host.py), started from a lowered thread
    assert len(behind) >= (3 if native_fp16() else 4) and all(n == min(19, loop + 10) for n in behind), nices
    hosts = [n for child in child_pids(worker.proc.pid) for n in thread_nices(child).values()]
    assert len(hosts) >= (3 if native_fp16() else 0) and all(n == min(19, loop + 10) for n in hosts), hosts


@pytest.mark.skipif(not native_fp16(), reason="the model runs in process (fp32) on a CPU without native fp16")
async def test_model_hosts_killed_fail_no_request(worker, coffee_jpeg):
    """The OOM killer's choice, say: every request still gets its answer, each batch that
    finds its child dead running again on a new one (worker/model_host.py). Killed before
    the requests, so that batches meet dead children however fast this machine is."""
    hosts = child_pids(worker.proc.pid)
    assert hosts
    restarts = value(scrape(worker.url), "imagecluster_model_host_restarts_total")
    for pid in hosts:
        os.kill(pid, signal.SIGKILL)
    await asyncio.sleep(0.1)
    answers = await asyncio.gather(*[post_raw(worker.url, coffee_jpeg, "image/jpeg") for _ in range(24)])
    assert [status for status, _ in answers] == [200] * 24, answers
    assert all(body["predictions"][0]["index"] == ESPRESSO for _, body in answers)
    assert set(child_pids(worker.proc.pid)) - set(hosts)  # new children answered
    assert value(scrape(worker.url), "imagecluster_model_host_restarts_total") > restarts  # counted, for alerts


@pytest.mark.skipif(not native_fp16(), reason="the model runs in process (fp32) on a CPU without native fp16")
async def test_a_drain_that_runs_out_of_time_answers_every_request(start_worker, coffee_jpeg):
    """Model hosts hung (stopped here) when the worker is told to stop: once its drain
    timeout passes, each request still in flight, over HTTP or ZeroMQ, is answered 503
    `shutting_down` (over HTTP with Retry-After: send it again, elsewhere), and the worker
    exits, its children killed. Before, the HTTP requests were cut at exit, which waited
    out the hung hosts' time limit, and the ZeroMQ batch got no reply (its socket closed
    before the batchers answered)."""
    worker = start_worker("--drain-timeout", "1")
    hosts = child_pids(worker.proc.pid)
    for pid in hosts:
        os.kill(pid, signal.SIGSTOP)
    requests = [asyncio.ensure_future(post_file(worker.url, "data", coffee_jpeg)) for _ in range(3)]
    image = preprocess(coffee_jpeg, Preprocessing(), 10**8)
    batch = BatchRequest("drained", ["a", "b"], np.stack([image, image]), model="efficientnet_lite0")
    forwarded = asyncio.ensure_future(roundtrip(worker.ready["zmq"], batch.encode()))
    assert await in_flight(worker, 5)  # accepted: in the hosts' hands, or queued behind them
    worker.signal(signal.SIGTERM)
    answers = await asyncio.gather(*requests)
    assert [(status, body["error"]["code"]) for status, body, _ in answers] == [(503, "shutting_down")] * 3, answers
    assert all(headers["Retry-After"] for _, _, headers in answers)
    reply = await forwarded
    assert [(r["id"], r["error"]["status"], r["error"]["code"]) for r in reply["results"]] == [
        ("a", 503, "shutting_down"), ("b", 503, "shutting_down")], reply
    assert await asyncio.get_running_loop().run_in_executor(None, worker.wait, 20) == 0
    assert not [pid for pid in hosts if Path(f"/proc/{pid}").exists()]


@pytest.mark.parametrize("stuck", [False, True])
def test_a_thread_stuck_computing_does_not_hold_the_exit(stuck):
    """worker.__main__'s exit: Python joins its pools' threads at exit, so an fp32
    interpreter stuck in a batch would keep the process alive for ever (there is no hook
    to make the real one hang: a thread that never ends stands in for it). It exits with
    its status after the grace, saying which thread; threads that end in time are waited
    for, and the exit is a normal one."""
    code = ("import sys, threading, time; from worker.__main__ import exit_past_stuck_threads; "
            f"threading.Thread(target={'threading.Event().wait' if stuck else 'time.sleep'}, "
            f"args={'()' if stuck else '(0.2,)'}, name='inference_0').start(); "
            "sys.exit(exit_past_stuck_threads(3, grace_s=1.0))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).parents[1])
    assert done.returncode == 3, done.stderr
    assert ("inference_0" in done.stderr) == stuck, done.stderr


async def test_real_photos(worker, chelsea_png):
    status, body, _ = await post_file(worker.url, "data", chelsea_png, "chelsea.png")
    assert status == 200 and body["predictions"][0]["index"] in DOMESTIC_CATS
    rocket = (SKIMAGE_DATA / "rocket.jpg").read_bytes()
    status, body, _ = await post_file(worker.url, "data", rocket, "rocket.jpg")
    top5 = {p["label"] for p in body["predictions"]}
    assert status == 200 and top5 & {"missile", "projectile", "space shuttle"}


@pytest.mark.parametrize("field", ["data", "image", "file"])
async def test_accepted_fields_and_classify_route(worker, coffee_jpeg, field):
    for path in ("/", "/classify"):
        status, body, _ = await post_file(worker.url + path, field, coffee_jpeg)
        assert status == 200 and body["predictions"][0]["index"] == ESPRESSO


@pytest.mark.parametrize("ctype", ["image/jpeg", "image/anything", "application/octet-stream"])
async def test_raw_body(worker, coffee_jpeg, ctype):
    status, body = await post_raw(worker.url, coffee_jpeg, ctype)
    assert status == 200 and body["predictions"][0]["index"] == ESPRESSO


async def test_top_k(worker, coffee_jpeg):
    for k in (1, 10, 1000):
        status, body, _ = await post_file(f"{worker.url}/?k={k}", "data", coffee_jpeg)
        assert status == 200 and len(body["predictions"]) == k
    assert sum(p["score"] for p in body["predictions"]) == pytest.approx(1.0, abs=1e-3)
    assert len({p["index"] for p in body["predictions"]}) == 1000


def test_seed_curl_contract(worker, coffee_jpeg, tmp_path):
    """The original contract, with plain curl: curl -XPOST HOST:PORT -F data=@photo.jpg"""
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(coffee_jpeg)
    host_port = worker.url.removeprefix("http://")
    out = subprocess.run(["curl", "-s", "-XPOST", host_port, "-F", f"data=@{photo}"],
                         capture_output=True, check=True, timeout=30).stdout
    body = json.loads(out)
    assert body["predictions"][0]["label"] == "espresso" and len(body["predictions"]) == 5


async def test_health_ready_info(worker):
    async with aiohttp.ClientSession() as s:
        async with s.get(worker.url + "/healthz") as r:
            assert r.status == 200 and (await r.json())["status"] == "alive"
        async with s.get(worker.url + "/readyz") as r:
            assert r.status == 200 and (await r.json())["status"] == "ready"
        async with s.get(worker.url + "/info") as r:
            info = await r.json()
    model = info["models"]["efficientnet_lite0"]
    assert model["version"] == "1" and info["default_model"] == "efficientnet_lite0"
    assert model["input_shape"] == [224, 224, 3] and model["num_labels"] == 1000
    assert model["backend"] == "tflite"
    assert model["precision"] == ("fp16" if native_fp16() else "fp32")  # its serving.json allows fp16


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


async def test_bad_images_are_400_and_worker_keeps_serving(worker, coffee_jpeg):
    cases = {
        b"": "empty_image",
        b"hello, this is plain text and not an image": "not_an_image",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40: "corrupt_image",  # PNG magic, garbage after
        coffee_jpeg[: len(coffee_jpeg) // 2]: "corrupt_image",  # truncated mid-scan
        coffee_jpeg[:200]: "corrupt_image",  # truncated in the header
    }
    for data, code in cases.items():
        status, body, _ = await post_file(worker.url, "data", data)
        assert_error(status, body, 400, code)
    await assert_still_serving(worker, coffee_jpeg)


async def test_too_many_pixels_refused_without_decoding(worker, coffee_jpeg):
    # A 1-bit 8000x8000 PNG: ~8 KB on the wire, 64 Mpx (over the worker's 30 Mpx limit).
    bomb = _png(Image.new("1", (8000, 8000)))
    assert len(bomb) < 100_000
    status, body, _ = await post_file(worker.url, "data", bomb, "bomb.png")
    assert_error(status, body, 413, "image_too_large")
    assert "8000x8000" in body["error"]["message"]
    await assert_still_serving(worker, coffee_jpeg)


async def test_body_over_limit(worker, coffee_jpeg):
    big = np.random.default_rng(0).integers(0, 255, 5 * 1024 * 1024, dtype=np.uint8).tobytes()
    status, body, _ = await post_file(worker.url, "data", big)
    assert_error(status, body, 413, "payload_too_large")
    status, body = await post_raw(worker.url, big, "image/jpeg")
    assert_error(status, body, 413, "payload_too_large")
    await assert_still_serving(worker, coffee_jpeg)


async def test_oversized_declared_length_refused_before_body_is_read(worker, coffee_jpeg):
    """Headers announce 100 MB; the worker answers 413 without waiting for any of it."""
    host, port = worker.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {100 * 1024 * 1024}\r\n\r\n".encode() + b"\xff\xd8" * 100
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    writer.close()
    assert head.startswith(b"HTTP/1.1 413"), head
    await assert_still_serving(worker, coffee_jpeg)


async def test_wrong_field_type_and_method(worker, coffee_jpeg):
    status, body, _ = await post_file(worker.url, "photo", coffee_jpeg)
    assert_error(status, body, 400, "missing_image_field")
    assert "'data'" in body["error"]["message"]
    status, body = await post_raw(worker.url, b"k=v", "application/x-www-form-urlencoded")
    assert_error(status, body, 415, "unsupported_media_type")
    status, body = await post_raw(worker.url, b"{}", "application/json")
    assert_error(status, body, 415)
    async with aiohttp.ClientSession() as s:
        for method, path in [("GET", "/"), ("PUT", "/classify"), ("DELETE", "/")]:
            async with s.request(method, worker.url + path) as r:
                assert_error(r.status, await r.json(), 405, "method_not_allowed")
                assert "POST" in r.headers["Allow"]
        async with s.get(worker.url + "/nope") as r:
            assert_error(r.status, await r.json(), 404)
    await assert_still_serving(worker, coffee_jpeg)


@pytest.mark.parametrize("k", ["0", "-1", "1001", "abc", "2.5", ""])
async def test_bad_k_is_422(worker, coffee_jpeg, k):
    status, body, _ = await post_file(f"{worker.url}/?k={k}", "data", coffee_jpeg)
    assert_error(status, body, 422, "invalid_parameter")


async def test_concurrent_requests_all_answered(worker, coffee_jpeg):
    results = await asyncio.gather(*(post_file(worker.url, "data", coffee_jpeg) for _ in range(24)))
    assert all(s == 200 and b["predictions"][0]["index"] == ESPRESSO for s, b, _ in results)
    async with aiohttp.ClientSession() as s:
        async with s.get(worker.url + "/stats") as r:
            stats = await r.json()
    assert stats["in_flight"] == 0 and stats["batching"]["efficientnet_lite0"]["failed_batches"] == 0
    assert stats["batching"]["efficientnet_lite0"]["images"] >= 24


async def test_savedmodel_backend_agrees_with_tflite(worker, start_worker, coffee_jpeg, chelsea_png):
    savedmodel = start_worker("--backend", "savedmodel")
    rocket = (SKIMAGE_DATA / "rocket.jpg").read_bytes()
    bound = 0.02 if native_fp16() else 2e-3  # the shared worker runs the TFLite model in fp16 where it can
    for photo in (coffee_jpeg, chelsea_png, rocket):
        _, lite, _ = await post_file(worker.url, "data", photo)
        status, full, _ = await post_file(savedmodel.url, "data", photo)
        assert status == 200
        assert [p["index"] for p in full["predictions"][:1]] == [p["index"] for p in lite["predictions"][:1]]
        assert full["predictions"][0]["score"] == pytest.approx(lite["predictions"][0]["score"], abs=bound)
    async with aiohttp.ClientSession() as s:
        async with s.get(savedmodel.url + "/info") as r:
            assert (await r.json())["models"]["efficientnet_lite0"]["backend"] == "savedmodel"


async def test_client_that_stops_sending_gets_408(start_worker, coffee_jpeg):
    w = start_worker("--read-timeout", "1")
    answer = await stalled_upload(w.url, coffee_jpeg)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), head
    assert json.loads(body)["error"]["code"] == "request_timeout"
    await assert_still_serving(w, coffee_jpeg)


async def test_slow_uploads_hold_no_room_in_the_queue(start_worker, coffee_jpeg):
    """With room for 2 images and 4 clients still sending their photos, a client whose
    photo has arrived is answered, not refused: room is taken once a body is read. Then
    the slow ones finish and are answered too, one after another."""
    worker = start_worker("--max-queue", "2")
    host, port = worker.url.removeprefix("http://").split(":")
    slow = []
    for _ in range(4):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
                     f"Content-Length: {len(coffee_jpeg)}\r\n\r\n".encode() + coffee_jpeg[:1000])
        await writer.drain()
        slow.append((reader, writer))
    assert await in_flight(worker, 4)  # accepted, still arriving
    status, body = await post_raw(worker.url, coffee_jpeg, "image/jpeg")
    assert status == 200 and body["predictions"][0]["index"] == ESPRESSO
    for reader, writer in slow:
        writer.write(coffee_jpeg[1000:])
        await writer.drain()
        assert b" 200 " in await asyncio.wait_for(reader.readline(), 20)
        writer.close()
