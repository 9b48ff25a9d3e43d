"""The default model in half precision and the quantised variants, against the float
model in fp32: agreement and speed, in process and through a worker.

The default model runs in fp16 where the CPU has native half precision (its serving.json
allows it; worker/model_host.py); here it is also staged as efficientnet_lite0_fp32, the
same file kept in fp32, which is the reference. `python -m image_cluster.models build --quantise`
writes efficientnet_lite0_int8 (full integer) and efficientnet_lite0_dynamic (dynamic
range) beside the float model (image_cluster/models/quantise.py).
Agreement with the float model's answer, on images kept apart from calibration: every
real photo available offline as shipped (scripts/bench/fidelity.py's set) and 300
augmented crops of them made with another seed than calibration's. Speed: img/s of the
model alone on preprocessed images, at batch 1, 8 and 32, with 1 and 2 interpreter
threads. Then, with wrk installed, the issue's own measure: img/s and p99 through one
real worker serving every variant (a dev Consul agent; wrk POSTing the suite's photo
as the raw body, `?model=` picking the variant, the variants in turn, the order rotating
each round). Prints the tables; writes quantise.json.

    .venv/bin/python scripts/bench/quantise.py [--models models] [--seconds 3] [--rounds 3] [--out run/bench]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fidelity import compare, encode, photos  # noqa: E402  (beside this file)
from proxy_rate import POST_LUA, wrk_scratch  # noqa: E402
from suite import PHOTO  # noqa: E402
from versus import in_turn  # noqa: E402

from edge.imaging import preprocess  # noqa: E402
from edge.preprocessing import Preprocessing  # noqa: E402
from image_cluster.models.quantise import CALIBRATION_SEED, augmented  # noqa: E402
from tests.consul_dev import DevAgent  # noqa: E402
from tests.processes import WorkerProcess  # noqa: E402
from worker.model import load_model  # noqa: E402
from worker.model_host import native_fp16  # noqa: E402
from worker.serving import read_spec  # noqa: E402

NAME = "efficientnet_lite0"
VARIANTS = {"float": f"{NAME}_fp32", "fp16": NAME, "int8": f"{NAME}_int8", "dynamic": f"{NAME}_dynamic"}
EVAL_SEED = CALIBRATION_SEED + 1


def staged(models: Path, into: Path) -> Path:
    """A repository of every variant: links to the built ones, and the default model's file
    as efficientnet_lite0_fp32 with a serving.json that keeps it in fp32."""
    into.mkdir(parents=True, exist_ok=True)
    for name in VARIANTS.values():
        if name != VARIANTS["float"] and not (into / name).exists():
            (into / name).symlink_to((models / name).resolve())
    fp32 = into / VARIANTS["float"] / "1"
    fp32.mkdir(parents=True, exist_ok=True)
    for name in ("model.tflite", "labels.txt"):
        if not (fp32 / name).exists():
            (fp32 / name).symlink_to((models / NAME / "1" / name).resolve())
    (fp32 / "serving.json").write_text(json.dumps(replace(read_spec(models / NAME / "1"), precision="fp32").to_json()))
    return into


def evaluation_set(crops: int) -> np.ndarray:
    found = list(photos().values())
    prep = Preprocessing()
    images = [encode(img, "PNG") for img in found] + list(augmented(found, crops, EVAL_SEED))
    return np.stack([preprocess(data, prep, 10**9) for data in images])


def speed(model, images: np.ndarray, batch: int, seconds: float) -> float:
    model.predict(images[:batch])  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        start = done % (len(images) - batch)
        model.predict(images[start:start + batch])
        done += batch
    return done / (time.perf_counter() - started)


def through_worker(models: Path, rounds: int, seconds: float, out: Path) -> list[dict]:
    """wrk at c=1 and c=32 against one worker serving every variant, round after round."""
    tmp = wrk_scratch(out)
    (tmp / "post.lua").write_text(POST_LUA.format(content_type="image/jpeg", body=PHOTO))
    agent = DevAgent(log_path=out / "consul-quantise.log").start()
    rows = []
    try:
        worker = WorkerProcess(agent.address, "--model-repository", str(models), "--models",
                               ",".join(VARIANTS.values()), log_path=out / "worker-quantise.log").wait_ready()
        try:
            targets = {variant: f"{worker.url}/?model={name}" for variant, name in VARIANTS.items()}
            for r in range(1, rounds + 1):
                rows += in_turn(targets, [1, 32], r, seconds, tmp / "post.lua")
        finally:
            worker.stop()
    finally:
        agent.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def worker_table(rows: list[dict]) -> str:
    """Medians over the rounds, and each round's img/s over the float model's in that round."""
    lines = ["| c | variant | median img/s | median p99 ms | per-round img/s over float | median |",
             "|---:|---|---:|---:|---|---:|"]
    for c in (1, 32):
        at = [r for r in rows if r["connections"] == c]
        floats = {r["round"]: r["per_second"] for r in at if r["target"] == "float"}
        for variant in VARIANTS:
            mine = [r for r in at if r["target"] == variant]
            ratios = [r["per_second"] / floats[r["round"]] for r in mine]
            lines.append(f"| {c} | {variant} | {statistics.median(r['per_second'] for r in mine):.1f} | "
                         f"{statistics.median(r['p99_ms'] for r in mine):.1f} | "
                         f"{', '.join(f'{x:.2f}' for x in ratios)} | {statistics.median(ratios):.2f}x |")
    return "\n".join(lines)


def in_process(models: Path, images: np.ndarray, seconds: float) -> list[dict]:
    """Each variant's agreement with the float model, and its img/s alone."""
    reference = load_model(models / VARIANTS["float"]).predict(images)
    sure = reference.max(axis=1) >= 0.5  # the float model is confident: an ImageNet class is really there
    rows = []
    for variant, name in VARIANTS.items():
        probs = load_model(models / name).predict(images)
        agreement = compare(reference, probs)
        row = {"variant": variant, "top1": agreement["top1_agree"] / len(images),
               "top1_confident": compare(reference[sure], probs[sure])["top1_agree"] / sure.sum(),
               "confident": int(sure.sum()),
               "top5_overlap": agreement["top5_overlap"], "max_top5_diff": agreement["max_top5_diff"],
               "size_mb": (models / name / "1" / "model.tflite").stat().st_size / 2**20}
        for threads in (1, 2):
            model = load_model(models / name, intra_op_threads=threads)
            for batch in (1, 8, 32):
                row[f"t{threads}_b{batch}"] = speed(model, images, batch, seconds)
        rows.append(row)
        print(f"  {variant}: done", file=sys.stderr, flush=True)
    return rows


def in_process_table(rows: list[dict]) -> str:
    lines = ["| variant | file MB | top-1 agrees | top-1 agrees, confident | top-5 overlap | largest top-5 diff "
             "| img/s 1 thread, batch 1 / 8 / 32 | img/s 2 threads, batch 1 / 8 / 32 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        speeds = [" / ".join(f"{r[f't{t}_b{b}']:.1f}" for b in (1, 8, 32)) for t in (1, 2)]
        lines.append(f"| {r['variant']} | {r['size_mb']:.1f} | {r['top1']:.3f} | {r['top1_confident']:.3f} | "
                     f"{r['top5_overlap']:.3f} | {r['max_top5_diff']:.3f} | {speeds[0]} | {speeds[1]} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--crops", type=int, default=300)
    p.add_argument("--seconds", type=float, default=3.0, help="per in-process speed measurement")
    p.add_argument("--rounds", type=int, default=3, help="through the worker (0: skip)")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per wrk measurement")
    p.add_argument("--out", type=Path, default=ROOT / "run" / "bench")
    a = p.parse_args()
    missing = [name for name in VARIANTS.values() if name != VARIANTS["float"] and not (a.models / name).is_dir()]
    if missing:
        sys.exit(f"missing {missing} in {a.models}: run .venv/bin/python -m image_cluster.models build --quantise")
    if not native_fp16():
        print("note: this CPU has no native half precision: the fp16 row runs fp32 here")
    models = staged(a.models, a.out / "quantise-models")
    images = evaluation_set(a.crops)
    rows = in_process(models, images, a.seconds)
    print(f"{len(images)} images ({len(images) - a.crops} photos as shipped, {a.crops} crops); "
          f"the float model is confident (p >= 0.5) on {rows[0]['confident']}\n\n{in_process_table(rows)}")
    served = []
    if a.rounds and shutil.which("wrk"):
        served = through_worker(models, a.rounds, a.duration, a.out)
        print(f"\nThrough one worker serving all four ({PHOTO.name} as the raw body, wrk, {a.rounds} rounds "
              f"of {a.duration:g} s):\n\n{worker_table(served)}")
    elif a.rounds:
        print("\nwrk is not installed (apt-get install wrk): skipping the worker measurement")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "quantise.json").write_text(json.dumps({"images": len(images), "rows": rows, "worker": served},
                                                    indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
