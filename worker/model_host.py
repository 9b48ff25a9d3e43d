"""A float TFLite model run in half precision (fp16), in a child process of its own.

XNNPACK runs a float model in fp16 when asked by a flag, about twice as fast as fp32 on
a CPU with native half-precision arithmetic (x86 AVX512-FP16, Arm FP16): the default
model, one thread, 274 against 143 img/s on a Xeon with AVX512-FP16, top-1 the same on
99% of held-out images (docs/performance/studies.md, "Half precision"). The only Python API that passes
XNNPACK flags, ai-edge-litert's CompiledModel, holds the GIL while the model runs: in the
worker's process it would stall the event loop and every decode thread (two models on
two threads ran one after the other: 112 img/s against 135 for one alone). A child
process has a GIL of its own, and the worker waits on a socket with its GIL released:
two one-thread children did 482 img/s while a Python thread in the parent still ticked
~880 times a second.

Messages over a socketpair: the parent sends a batch as a 4-byte image count and the raw
input bytes, the child answers the scores as float32 rows. The parent kills the child
when it is done with it (a version retired, the worker stopping); a child whose parent
died reads end-of-file and exits.

    python -m worker.model_host MODEL_PATH THREADS OUTPUT_NAME SHAPE DTYPE FLAGS FD   (the child)
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import weakref
from pathlib import Path

import numpy as np

from edge.priority import name_os_thread

log = logging.getLogger(__name__)
_restarts = 0  # children found dead and started afresh, in this process
_restarts_lock = threading.Lock()

# XNNPACK delegate flags (tflite/delegates/xnnpack/xnnpack_delegate.h): the default
# QS8 | QU8, and FORCE_FP16.
XNNPACK_QS8_QU8 = 0x3
XNNPACK_FORCE_FP16 = 0x4
COUNT = struct.Struct("<I")
# A child's answer is late (hung) after ModelHost.hung_after seconds plus this per image:
# far beyond a large model's pace on one thread (the default model: ~4 ms an image).
SECONDS_AN_IMAGE = 5.0
# A child that has not said it is ready this long after it started did not start (loading
# the default model takes ~0.4 s; a large one, seconds): the worker serves in fp32 instead,
# or a batch waiting on a replacement fails rather than waiting for ever.
STARTUP_LIMIT = 120.0


def cpu_has_fp16(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo's text names native half-precision arithmetic, which
    XNNPACK's fp16 kernels need to be faster than fp32: x86 avx512_fp16, Arm asimdhp."""
    words = set()
    for line in re.findall(r"^(?:flags|Features)\s*:(.*)$", cpuinfo, re.M):
        words.update(line.split())
    return bool(words & {"avx512_fp16", "asimdhp"})


@functools.cache  # a fact of the machine: read once, not at every model load
def native_fp16() -> bool:
    """Whether this machine's CPU does half precision natively (Linux; False elsewhere)."""
    try:
        return cpu_has_fp16(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


class ModelHostError(RuntimeError):
    """The child process could not load the model, or died."""


class ModelHost:
    """One child process running the model on `threads` threads; `run` one batch at a
    time (the caller's pool hands a host to one batch at once). A child that died, or
    gave no answer within `hung_after` seconds plus SECONDS_AN_IMAGE an image (stopped,
    or stuck in its runtime), is started afresh by the batch that finds it so, until
    `stop()`."""

    def __init__(self, path: Path, threads: int, output_name: str, shape: tuple, dtype: np.dtype,
                 flags: int = XNNPACK_QS8_QU8 | XNNPACK_FORCE_FP16, hung_after: float = 30.0):
        self.args = [str(path), str(threads), output_name, ",".join(map(str, shape)), np.dtype(dtype).name, str(flags)]
        self.hung_after = hung_after
        self.sock: socket.socket | None = None
        self._stopped = False
        self._start()

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        with theirs:
            proc = subprocess.Popen([sys.executable, "-m", "worker.model_host", *self.args, str(theirs.fileno())],
                                    pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=_child_env())
        self.sock, self.proc = ours, proc
        self._finalizer = weakref.finalize(self, _stop, ours, proc)
        _give_up_after(ours, STARTUP_LIMIT)
        ready = _receive(ours, 1 + COUNT.size)
        if ready is None or ready[:1] != b"R":
            self.close()
            raise ModelHostError(f"the model host for {self.args[0]} did not start (its log above says why)")
        (self.classes,) = COUNT.unpack(ready[1:])

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 (len(batch), classes) for a batch in the model's input form. A child
        that died (the OOM killer's choice, say) or hung is replaced, and the batch is
        run once more on the new one: the requests in it do not fail for a fault they did
        not cause. A batch that fails that child too fails, as does one whose host was
        stopped."""
        batch = np.ascontiguousarray(batch)
        answer = self._exchange(batch)
        if answer is None and not self._stopped:
            log.warning("the model host for %s (pid %d) died or hung: running its batch on a new one",
                        self.args[0], self.proc.pid)
            _count_restart()
            self.close()
            answer = self._exchange(batch)
        if answer is None:
            self.close()
            raise ModelHostError(f"the model host for {self.args[0]} " + (
                "was stopped (the worker is shutting down)" if self._stopped
                else f"failed twice on one batch (pid {self.proc.pid}); the next batch starts a new one"))
        return np.frombuffer(answer, np.float32).reshape(len(batch), self.classes)

    def _exchange(self, batch: np.ndarray) -> bytearray | None:
        """The child's answer to `batch` (a child started first if there is none), or
        None if it died or hung before answering, or was stopped."""
        if self.sock is None and not self._stopped:
            self._start()
        sock = self.sock  # stop(), from another thread, may close it and set it to None
        if sock is None:
            return None
        try:
            _give_up_after(sock, self.hung_after + SECONDS_AN_IMAGE * len(batch))
            sock.sendall(COUNT.pack(len(batch)))
            sock.sendall(batch.data)
        except OSError:  # the child is gone (EPIPE), it stopped reading (BlockingIOError), or stop()
            return None
        return _receive(sock, len(batch) * self.classes * 4)

    def close(self) -> None:
        """Kill the child now and forget it; the next batch starts a new one."""
        self._finalizer()
        self.sock = None

    def stop(self) -> None:
        """Kill the child for good (the worker is shutting down): a batch waiting on it,
        in another thread, fails at once instead of waiting out a hung child's time limit,
        and no new child starts."""
        self._stopped = True
        self.close()


def _give_up_after(sock: socket.socket, seconds: float) -> None:
    """A receive on this blocking socket fails with BlockingIOError after `seconds`, and
    a send after half that: a batch larger than the socket's buffer is sent in parts, and
    a child that stops reading lets the part under way go out after one wait and fails
    the next after a second (the kernel's SO_RCVTIMEO and SO_SNDTIMEO). Python's own
    socket timeout polls before every call, taking the GIL back once more each time: with
    it the default model served 0.976x at c=32 (5 of 6 alternating rounds behind), with
    these 0.99x (the noise)."""
    for option, limit in ((socket.SO_RCVTIMEO, seconds), (socket.SO_SNDTIMEO, seconds / 2)):
        sock.setsockopt(socket.SOL_SOCKET, option, struct.pack("ll", int(limit), int(limit % 1 * 1_000_000)))


def restarts() -> int:
    """How many model host children this process found dead and started afresh (the
    worker's imagecluster_model_host_restarts_total): an OOM killer at work shows here."""
    return _restarts


def _count_restart() -> None:
    global _restarts
    with _restarts_lock:  # lanes' threads may find their children dead at once
        _restarts += 1


def _child_env() -> dict:
    """This environment, with the project on the module path: the worker may have been
    started from anywhere."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{path}" if path else root}


def _stop(sock: socket.socket, proc: subprocess.Popen) -> None:
    """Killed, not asked: the child holds no state, a hung one would not read the
    end-of-file, and one that exits by itself takes ~32 ms to, which a version swap spent
    on the event loop (3 hosts: /healthz stalled 94-97 ms at each swap, 5-8 ms killed)."""
    sock.close()
    proc.kill()
    proc.wait()  # ~2 ms; reaped, so no zombie is left behind


def _receive(sock: socket.socket, size: int) -> bytearray | None:
    """Exactly `size` bytes, or None at end-of-file, on an error, or once the socket's
    time limit (`_give_up_after`) passes."""
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:
        try:
            n = sock.recv_into(view[got:])
        except OSError:  # BlockingIOError when the kernel gave up waiting; a reset
            return None
        if n == 0:
            return None
        got += n
    return buf


# The child.

def compiled_model(path: str, threads: int, flags: int):
    """ai-edge-litert's CompiledModel on the CPU with these XNNPACK flags (it holds the GIL
    while it runs: use it in a process of its own)."""
    from ai_edge_litert.compiled_model import CompiledModel
    from ai_edge_litert.hardware_accelerator import HardwareAccelerator
    from ai_edge_litert.options import CpuOptions, Options

    options = Options(hardware_accelerators=HardwareAccelerator.CPU,
                      cpu_options=CpuOptions(num_threads=threads, xnnpack_flags=flags))
    return CompiledModel.from_file(path, options=options)


@contextlib.contextmanager
def _quiet_stderr():
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def serve(sock: socket.socket, path: str, threads: int, output_name: str, shape: tuple, dtype: np.dtype,
          flags: int) -> None:
    """Load the model, say ready with the number of classes, then answer batches until
    the parent hangs up."""
    with _quiet_stderr():  # LiteRT logs ~30 lines per model about accelerators it looks for
        model = compiled_model(path, threads, flags)
        signature = next(iter(model.get_signature_list()))
        if tuple(model.get_input_tensor_details(signature).popitem()[1]["shape"][1:]) != shape:
            model.resize_input_tensor(0, [1, *shape], strict=False)
        outputs = list(model.get_output_tensor_details(signature).values())
        index = [detail["name"] for detail in outputs].index(output_name)
        classes = int(np.prod(outputs[index]["shape"][1:]))
        inputs, results = model.create_input_buffers(0), model.create_output_buffers(0)
        inputs[0].write(np.zeros((1, *shape), dtype))
        model.run_by_index(0, inputs, results)  # the first run's set-up, quiet too
    image_bytes = int(np.prod(shape)) * dtype.itemsize
    sock.sendall(b"R" + COUNT.pack(classes))
    while (head := _receive(sock, COUNT.size)) is not None:
        (count,) = COUNT.unpack(head)
        data = _receive(sock, count * image_bytes)
        if data is None:
            return
        batch = np.frombuffer(data, dtype).reshape(count, 1, *shape)
        rows = []
        for image in batch:
            inputs[0].write(image)
            model.run_by_index(0, inputs, results)
            rows.append(results[index].read(classes, np.float32))
        sock.sendall(np.stack(rows).astype(np.float32, copy=False).tobytes())


def main(argv: list[str]) -> int:
    path, threads, output_name, shape, dtype, flags, fd = argv
    name_os_thread("model_host")  # `top` and `ps -L` show it beside the worker's threads; its runtime's inherit it
    # The worker drains on SIGTERM or Ctrl-C (which reaches the whole process group): the
    # child keeps answering until the worker closes its end or exits.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=int(fd))
    try:
        serve(sock, path, int(threads), output_name, tuple(int(d) for d in shape.split(",")), np.dtype(dtype),
              int(flags))
    except Exception as exc:  # the parent reads end-of-file; the reason goes to the shared log
        print(f"model host for {path}: {exc!r}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
