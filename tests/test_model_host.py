"""Half precision (worker/model_host.py): the CPUs it runs on, the child process that
runs it (answering as the in-process interpreter does, started afresh after it dies,
gone once closed), and the default model's fp16 answers against its fp32 ones. (How
much faster it is, is scripts/bench/quantise.py's and versus.py's job: figures, not
assertions.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge.imaging import preprocess
from image_cluster.models.quantise import CALIBRATION_SEED, augmented
from tests.conftest import MODEL_DIR, SKIMAGE_DATA
from worker import model_host
from worker.model import load_model, uses_fp16
from worker.model_host import XNNPACK_QS8_QU8, ModelHost, ModelHostError, cpu_has_fp16, native_fp16
from worker.serving import ServingSpec

NO_FP16 = "this CPU has no native half precision (AVX512-FP16, Arm FP16): the worker runs fp32 here"


@pytest.mark.unit
@pytest.mark.parametrize("cpuinfo, native", [
    ("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_fp16 amx_tile\n", True),
    ("processor\t: 0\nFeatures\t: fp asimd evtstrm aes fphp asimdhp cpuid\n", True),
    ("processor\t: 0\nflags\t\t: fpu sse2 avx2 f16c avx512f avx512_bf16\n", False),  # conversions only
    ("", False),
])
def test_which_cpus_run_fp16(cpuinfo, native):
    assert cpu_has_fp16(cpuinfo) is native


@pytest.mark.unit
def test_fp16_only_where_allowed_and_for_tflite():
    allowed = ServingSpec(precision="fp16")
    assert uses_fp16(allowed, "tflite", fp32=False) is native_fp16()
    assert not uses_fp16(allowed, "tflite", fp32=True)  # the worker's --fp32
    assert not uses_fp16(allowed, "onnx", fp32=False)
    assert not uses_fp16(ServingSpec(), "tflite", fp32=False)  # a model's own serving.json decides


@pytest.fixture
def tiny_host_args(tmp_path, tiny_keras) -> tuple:
    """ModelHost's arguments for the tiny Keras model as a .tflite, in fp32 (XNNPACK's
    default flags: any CPU)."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    path = tmp_path / "model.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(tiny_keras).convert())
    output = Interpreter(model_path=str(path)).get_output_details()[0]["name"]
    return path, 1, output, (16, 16, 3), np.float32


@pytest.mark.loopback
def test_a_host_answers_as_the_library_and_outlives_its_child(tiny_host_args, tiny_keras):
    """The child answers what Keras does; killed, the next batch runs on a new child;
    closed, it exits."""
    batch = np.random.default_rng(0).random((5, 16, 16, 3), dtype=np.float32)
    expected = tiny_keras(batch).numpy()
    host = ModelHost(*tiny_host_args, flags=XNNPACK_QS8_QU8)
    np.testing.assert_allclose(host.run(batch), expected, atol=1e-5)
    if sys.platform == "linux":  # named for top and ps, beside the worker's threads
        assert Path(f"/proc/{host.proc.pid}/comm").read_text().strip() == "model_host"

    first = host.proc
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=5)
    np.testing.assert_allclose(host.run(batch[:2]), expected[:2], atol=1e-5)  # not failed: run again
    assert host.proc.pid != first.pid

    second = host.proc
    host.sock.close()  # as when the worker dies: its end of the socket closes with it
    assert second.wait(timeout=5) == 0  # the child read end-of-file and left: no orphan
    host.close()


@pytest.mark.loopback
def test_a_batch_whose_new_child_dies_too_fails_and_the_next_starts_afresh(tiny_host_args, tiny_keras, monkeypatch):
    """One retry, not a loop: a batch that (as far as the host can tell) kills every child
    it meets fails with ModelHostError; the batch after it gets a working child."""
    batch = np.random.default_rng(1).random((3, 16, 16, 3), dtype=np.float32)
    host = ModelHost(*tiny_host_args, flags=XNNPACK_QS8_QU8)
    started = ModelHost._start

    def start_then_die(self):
        started(self)
        self.proc.kill()
        self.proc.wait(timeout=5)

    host.proc.kill()
    host.proc.wait(timeout=5)
    monkeypatch.setattr(ModelHost, "_start", start_then_die)
    with pytest.raises(ModelHostError, match="failed twice"):
        host.run(batch)
    monkeypatch.undo()
    np.testing.assert_allclose(host.run(batch), tiny_keras(batch).numpy(), atol=1e-5)
    host.close()


@pytest.mark.loopback
def test_a_hung_child_is_replaced_and_its_batch_answered(tiny_host_args, tiny_keras, monkeypatch):
    """A child that stops answering (SIGSTOP here; a runtime stuck for good in life) is
    killed once its answer is late, and the batch runs again."""
    batch = np.random.default_rng(2).random((1, 16, 16, 3), dtype=np.float32)
    monkeypatch.setattr(model_host, "SECONDS_AN_IMAGE", 0.0)
    host = ModelHost(*tiny_host_args, flags=XNNPACK_QS8_QU8, hung_after=0.5)
    stuck = host.proc
    os.kill(stuck.pid, signal.SIGSTOP)
    np.testing.assert_allclose(host.run(batch), tiny_keras(batch).numpy(), atol=1e-5)
    assert host.proc.pid != stuck.pid and stuck.poll() == -signal.SIGKILL
    host.close()


@pytest.mark.loopback
def test_a_stopped_host_fails_its_waiting_batch_at_once(tiny_host_args):
    """The worker shutting down stops its hosts: a batch waiting on a hung child (here
    SIGSTOPped, with the default 30 s limit) fails now, and no new child starts."""
    host = ModelHost(*tiny_host_args, flags=XNNPACK_QS8_QU8)
    stuck = host.proc
    os.kill(stuck.pid, signal.SIGSTOP)
    restarts = model_host.restarts()
    with ThreadPoolExecutor(1) as lane:
        waiting = lane.submit(host.run, np.zeros((1, 16, 16, 3), np.float32))
        time.sleep(0.3)  # the batch is sent, or being sent, and waits
        assert not waiting.done()
        host.stop()
        with pytest.raises(ModelHostError, match="stopped"):
            waiting.result(timeout=10)
    assert stuck.wait(timeout=5) == -signal.SIGKILL
    with pytest.raises(ModelHostError, match="stopped"):
        host.run(np.zeros((1, 16, 16, 3), np.float32))
    assert host.proc is stuck and model_host.restarts() == restarts  # nothing started afresh


@pytest.mark.loopback
def test_a_child_that_never_says_ready_did_not_start(tiny_host_args, monkeypatch):
    """A child stuck while loading (stopped here) is killed at STARTUP_LIMIT: ModelHostError,
    which the worker answers by serving in fp32, or which fails the one batch that waited."""
    popen = subprocess.Popen
    started = []

    def stopped_at_once(*args, **kwargs):
        proc = popen(*args, **kwargs)
        os.kill(proc.pid, signal.SIGSTOP)
        started.append(proc)
        return proc

    monkeypatch.setattr(model_host, "STARTUP_LIMIT", 0.5)
    monkeypatch.setattr(model_host.subprocess, "Popen", stopped_at_once)
    with pytest.raises(ModelHostError, match="did not start"):
        ModelHost(*tiny_host_args, flags=XNNPACK_QS8_QU8)
    assert started[0].wait(timeout=5) == -signal.SIGKILL


@pytest.mark.unit
def test_a_model_whose_hosts_cannot_start_is_served_in_fp32(tmp_path, tiny_keras, monkeypatch):
    """A runtime that cannot run the model in fp16 (say, a build without fp16 kernels) costs
    speed, not the model: it is served in fp32, in process."""
    import tensorflow as tf

    from worker import model as model_module

    version = tmp_path / "tiny" / "1"
    version.mkdir(parents=True)
    (version / "model.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(tiny_keras).convert())
    (version / "serving.json").write_text(json.dumps({"precision": "fp16"}))

    def cannot_start(self):
        raise ModelHostError("no fp16 kernels in this build")

    monkeypatch.setattr(model_module, "native_fp16", lambda: True)
    monkeypatch.setattr(ModelHost, "_start", cannot_start)
    model = load_model(tmp_path / "tiny")
    batch = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    assert model.precision == "fp32"
    np.testing.assert_allclose(model.predict(batch), tiny_keras(batch.astype(np.float32)).numpy(), atol=1e-5)


@pytest.mark.loopback
def test_a_host_that_cannot_load_its_model_says_so(tmp_path):
    (tmp_path / "model.tflite").write_bytes(b"not a model")
    with pytest.raises(ModelHostError, match="did not start"):
        ModelHost(tmp_path / "model.tflite", 1, "scores", (8, 8, 3), np.uint8)


@pytest.mark.loopback
@pytest.mark.skipif(not native_fp16(), reason=NO_FP16)
def test_the_default_model_in_fp16_agrees_with_fp32():
    """The test photos and 60 augmented crops kept apart from calibration's seed: the same
    top-1 on at least 98% (99% measured on 316 images), the photos' scores within 0.02."""
    fp16, fp32 = load_model(MODEL_DIR), load_model(MODEL_DIR, fp32=True)
    assert (fp16.precision, fp32.precision) == ("fp16", "fp32")
    photos = [Image.open(SKIMAGE_DATA / name).convert("RGB") for name in ("coffee.png", "chelsea.png", "rocket.jpg")]
    prep = fp32.preprocessing
    shipped = np.stack([preprocess((SKIMAGE_DATA / name).read_bytes(), prep, 10**8)
                        for name in ("coffee.png", "chelsea.png", "rocket.jpg")])
    crops = np.stack([preprocess(data, prep, 10**8) for data in augmented(photos, 60, CALIBRATION_SEED + 2)])
    np.testing.assert_allclose(fp16.predict(shipped), fp32.predict(shipped), atol=0.02)
    half, full = fp16.predict(crops), fp32.predict(crops)
    assert (half.argmax(1) == full.argmax(1)).mean() >= 0.98
