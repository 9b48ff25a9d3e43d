"""The runtimes a model version can be served by, behind one small interface.

Each `open_*` returns a `Runner`: the model input's declared shape (batch excluded, None
where dynamic) and dtype, and `run(x) -> 2-D float output` for one batch already in the
model's own input form (worker/serving.py adapts the uint8 images). The choice is made
by what the version directory holds (worker/serving.py, `backend_for`) or by --backend.
- tflite: ai-edge-litert's interpreter with XNNPACK; never imports TensorFlow, so a
  worker starts in well under a second and stays small. A model whose serving.json
  allows fp16 runs in half precision on a CPU that has it (worker/model_host.py).
- onnx: ONNX Runtime's CPU provider (an export from PyTorch, a scikit-learn pipeline...).
- savedmodel: TensorFlow; any signature with one input.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edge.cores import usable_cores
from worker.serving import ModelError


@dataclass
class Runner:
    input_shape: tuple  # batch excluded; None where dynamic
    input_dtype: np.dtype
    run: Callable[[np.ndarray], np.ndarray]
    prepare: Callable[[tuple], None] = lambda shape: None  # fix a dynamic input shape once known
    keep: object = None  # whatever `run` needs kept alive (a SavedModel's variables)
    concurrency: int = 1  # how many batches `run` may be given at once, from as many threads
    # Ends the processes `run` waits on (fp16 model hosts), so a batch still running fails
    # at once; in-process runtimes cannot be interrupted and finish their batch.
    stop: Callable[[], None] = lambda: None


def _float_or_uint8(dtype, where: str) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in (np.uint8, np.float32):
        raise ModelError(f"{where}: the model's input is {dtype}; served inputs are uint8 or float32")
    return dtype


def _pick_output(outputs: list[tuple[str, tuple]], wanted: str | None, where: str) -> str:
    """`wanted`, else the one output shaped (N, classes)."""
    names = [name for name, _ in outputs]
    if wanted:
        if wanted not in names:
            raise ModelError(f"{where}: field 'output_name' is {wanted!r}; the model's outputs are {names}")
        return wanted
    matrices = [name for name, shape in outputs if len(shape) == 2]
    if len(matrices) != 1:
        raise ModelError(f"{where}: cannot tell which output holds the scores ({names}): set 'output_name'")
    return matrices[0]


def lane_count(batch_interpreters: int) -> int:
    """How many one-thread interpreters run batches side by side: `batch_interpreters`
    (0: one per core), and none where that is one (the main interpreter runs them)."""
    count = batch_interpreters or usable_cores()
    return count if count > 1 else 0


def open_tflite(version_dir: Path, threads: int, output_name: str | None, batch_interpreters: int = 1,
                fp16: bool = False) -> Runner:
    """One interpreter on `threads` threads (0: every core) for a lone image that finds the
    model idle, and `batch_interpreters` interpreters of one thread each (0: one per core;
    1: none) that run that many batches at once (see _Interpreters). With `fp16`, each of
    them is a child process running the model in half precision (worker/model_host.py)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    path = version_dir / "model.tflite"
    # fp32: one copy of the model's bytes for every interpreter (each keeps a reference,
    # none copies it); with model_path each mapped the file again, and the RSS counted it
    # once an interpreter, 18.5 MB each for the default model (docs/performance/studies.md, "Memory").
    # fp16: this interpreter only reads the model's inputs and outputs (its child
    # processes run it), so the file is mapped, read in part, and XNNPACK is left out,
    # which would pack the weights for nothing.
    if fp16:
        source = {"model_path": str(path),
                  "experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    else:
        source = {"model_content": path.read_bytes()}
    try:
        interpreter = Interpreter(num_threads=threads or usable_cores(), **source)
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"{path}: not a TFLite model TFLite can load ({exc})") from None
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1:
        raise ModelError(f"{path}: the model takes {len(inputs)} inputs; an image model takes one")
    inp = inputs[0]
    out_names = [(o["name"], tuple(o["shape_signature"])) for o in outputs]
    out = outputs[[n for n, _ in out_names].index(_pick_output(out_names, output_name, str(path)))]
    signature = tuple(None if d < 0 else int(d) for d in inp["shape_signature"][1:])
    dtype = _float_or_uint8(inp["dtype"], str(path))
    if fp16:
        return _fp16_runner(path, threads, lane_count(batch_interpreters), out["name"], signature, dtype)
    lanes = [Interpreter(num_threads=1, **source) for _ in range(lane_count(batch_interpreters))]
    pool = _Interpreters(interpreter, lanes)

    def prepare(shape: tuple) -> None:
        for it in (interpreter, *lanes):
            it.resize_tensor_input(inp["index"], [1, *shape])
            it.allocate_tensors()

    def run(batch: np.ndarray) -> np.ndarray:
        # With XNNPACK on CPU, images one after another are as fast as one big batch
        # (measured: 344 img/s at batch 1, 293 at batch 32), and the interpreter never
        # has to re-allocate for a new batch size.
        with pool.interpreter(len(batch)) as it:
            rows = []
            for image in batch:
                it.set_tensor(inp["index"], image[None])
                it.invoke()
                rows.append(it.get_tensor(out["index"])[0].copy())
        return np.stack(rows)

    return Runner(signature, dtype, run, prepare, keep=pool, concurrency=max(1, len(lanes)))


def _fp16_runner(path: Path, threads: int, lanes: int, output_name: str, signature: tuple,
                 dtype: np.dtype) -> Runner:
    """The same pool of a main model and one-thread lanes, each a ModelHost: its child
    process starts once the input shape is known (`prepare`)."""
    from worker.model_host import ModelHost

    holder: dict = {}

    def prepare(shape: tuple) -> None:
        def host(n: int) -> ModelHost:
            return ModelHost(path, n, output_name, shape, dtype)

        # Side by side: each child takes ~0.4 s to import its runtime and load the model.
        with ThreadPoolExecutor(1 + lanes) as starting:
            main, *lane_hosts = starting.map(host, [threads or usable_cores(), *[1] * lanes])
        holder["pool"] = _Interpreters(main, lane_hosts)

    def run(batch: np.ndarray) -> np.ndarray:
        with holder["pool"].interpreter(len(batch)) as host:
            return host.run(batch)

    def stop() -> None:
        if "pool" in holder:
            for host in (holder["pool"].main, *holder["pool"].lanes):
                host.stop()

    return Runner(signature, dtype, run, prepare, keep=holder, concurrency=max(1, lanes), stop=stop)


class _Interpreters:
    """Which interpreter a batch runs on. A lone image that finds nothing else running
    takes the main interpreter, on every core's threads (the lowest latency when idle).
    Anything else takes one of the one-thread interpreters, one batch each, so that
    several batches run at once and none waits for another: XNNPACK's threads wait for
    each other inside every layer, and a batch split in equal parts waits for its slowest
    part (two one-thread interpreters did 136-155 img/s in process where one on two
    threads did 115-139; batches split over both left 8% of the CPU idle at c=32)."""

    def __init__(self, main, lanes: list):
        self.main = main
        self.lanes = lanes
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for lane in lanes:
            self._free.put(lane)
        self._lock = threading.Lock()
        self._busy = 0  # batches running

    @contextmanager
    def interpreter(self, images: int):
        with self._lock:
            alone = self._busy == 0  # while this batch runs on main, _busy > 0: main is never shared
            self._busy += 1
        # The caller (the batcher) runs at most len(lanes) batches at once: a lane is free.
        it = self.main if not self.lanes or (alone and images == 1) else self._free.get()
        try:
            yield it
        finally:
            if it is not self.main:
                self._free.put(it)
            with self._lock:
                self._busy -= 1


ONNX_TYPES = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32}


def open_onnx(version_dir: Path, threads: int, output_name: str | None) -> Runner:
    import onnxruntime as ort

    path = version_dir / "model.onnx"
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or usable_cores()
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ModelError(f"{path}: not an ONNX model ONNX Runtime can load ({exc})") from None
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelError(f"{path}: the model takes {len(inputs)} inputs; an image model takes one")
    inp = inputs[0]
    if inp.type not in ONNX_TYPES:
        raise ModelError(f"{path}: the model's input is {inp.type}; served inputs are uint8 or float")
    name = _pick_output([(o.name, tuple(o.shape)) for o in session.get_outputs()], output_name, str(path))
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in inp.shape[1:])

    def run(batch: np.ndarray) -> np.ndarray:
        return session.run([name], {inp.name: batch})[0]

    return Runner(shape, np.dtype(ONNX_TYPES[inp.type]), run)


def open_savedmodel(version_dir: Path, threads: int, output_name: str | None, inter_op_threads: int = 0) -> Runner:
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    if inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
    try:
        loaded = tf.saved_model.load(str(version_dir))
        fn = loaded.signatures["serving_default"]
    except (OSError, KeyError, ValueError) as exc:
        raise ModelError(f"{version_dir}: no SavedModel with a serving_default signature ({exc!r})") from None
    specs = fn.structured_input_signature[1]
    if len(specs) != 1:
        raise ModelError(f"{version_dir}: serving_default takes {len(specs)} inputs; an image model takes one")
    (input_name, spec), = specs.items()
    outputs = [(k, tuple(v.shape)) for k, v in fn.structured_outputs.items()]
    name = _pick_output(outputs, output_name, str(version_dir))
    dtype = _float_or_uint8(spec.dtype.as_numpy_dtype, str(version_dir))

    def run(batch: np.ndarray) -> np.ndarray:
        return fn(**{input_name: tf.constant(batch)})[name].numpy()

    return Runner(tuple(spec.shape[1:]), dtype, run, keep=loaded)  # the function needs `loaded` alive


def noop(runner: Runner, classes: int) -> Runner:
    """Benchmark-only: the real model's input, but no inference (uniform scores)."""
    def run(batch: np.ndarray) -> np.ndarray:
        return np.full((len(batch), classes), 1.0 / classes, dtype=np.float32)

    return replace(runner, run=run)
