"""The best peer measured here, as a baseline: mosec serving the same model file with our
preprocessing, in its idiomatic shape (a decode stage of 2 processes feeding a batched
inference stage), the interpreter with the same threads as our worker (all cores), raw
uint8 tensors between the stages (not mosec's default pickle). Requests are the raw
image bytes POSTed to /inference, mosec's own convention. With MOSEC_INFER_WORKERS=N
(N > 1) the inference stage is N processes of one-thread interpreters instead: mosec's
way to do what our worker's --batch-interpreters does. With MOSEC_FP16=1 the model runs
in half precision through ai-edge-litert's CompiledModel with XNNPACK's FORCE_FP16 flag,
as our worker does on a CPU with native fp16 (worker/model_host.py); mosec's inference
processes each have a GIL of their own, so that API holding the GIL costs it nothing.

    .venv/bin/python scripts/bench/mosec_baseline.py --port 8000
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
from mosec import Server, Worker

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from edge.imaging import configure_decoding, preprocess  # noqa: E402
from edge.preprocessing import Preprocessing  # noqa: E402

MODEL = ROOT / "models" / "efficientnet_lite0" / "1"
SHAPE = (224, 224, 3)
INFER_WORKERS = int(os.environ.get("MOSEC_INFER_WORKERS", "1"))
FP16 = os.environ.get("MOSEC_FP16") == "1"


class Decode(Worker):
    def __init__(self):
        super().__init__()
        configure_decoding()
        self.prep = Preprocessing()

    def deserialize(self, data: bytes) -> bytes:
        return data  # the raw image

    def forward(self, data: bytes) -> np.ndarray:
        return preprocess(data, self.prep, 40_000_000)

    def serialize_ipc(self, data: np.ndarray) -> bytes:
        return data.tobytes()


class Infer(Worker):
    def __init__(self):
        super().__init__()
        self.labels = (MODEL / "labels.txt").read_text().splitlines()
        threads = 1 if INFER_WORKERS > 1 else os.cpu_count()
        self.run_one = fp16_model(threads) if FP16 else fp32_model(threads)

    def deserialize_ipc(self, data: bytes) -> np.ndarray:
        return np.frombuffer(data, dtype=np.uint8).reshape(SHAPE)

    def forward(self, batch: list[np.ndarray]) -> list[dict]:
        answers = []
        for image in batch:  # one after another: what XNNPACK does fastest on CPU
            probs = self.run_one(image)
            best = np.argsort(-probs)[:5]
            answers.append({"predictions": [{"label": self.labels[i], "index": int(i), "score": float(probs[i])}
                                            for i in best]})
        return answers

    def serialize(self, data: dict) -> bytes:
        return json.dumps(data).encode()


def fp32_model(threads: int):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(MODEL / "model.tflite"), num_threads=threads)
    inp, out = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
    interpreter.allocate_tensors()

    def run_one(image: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(inp, image[None])
        interpreter.invoke()
        return interpreter.get_tensor(out)[0]
    return run_one


def fp16_model(threads: int):
    from worker.model_host import XNNPACK_FORCE_FP16, XNNPACK_QS8_QU8, compiled_model

    model = compiled_model(str(MODEL / "model.tflite"), threads, XNNPACK_QS8_QU8 | XNNPACK_FORCE_FP16)
    inputs, outputs = model.create_input_buffers(0), model.create_output_buffers(0)

    def run_one(image: np.ndarray) -> np.ndarray:
        inputs[0].write(image[None])
        model.run_by_index(0, inputs, outputs)
        return outputs[0].read(1000, np.float32)
    return run_one


if __name__ == "__main__":
    server = Server()
    server.append_worker(Decode, num=2)
    server.append_worker(Infer, num=INFER_WORKERS, max_batch_size=32, max_wait_time=2)
    server.run()
