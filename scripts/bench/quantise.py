"""The quantised variants against the float model: agreement and speed, in process.

`python -m worker.build_model --quantise` writes efficientnet_lite0_int8 (full integer)
and efficientnet_lite0_dynamic (dynamic range) beside the float model (worker/quantise.py).
Agreement with the float model's answer, on images kept apart from calibration: every
real photo available offline as shipped (scripts/bench/fidelity.py's set) and 300
augmented crops of them made with another seed than calibration's. Speed: img/s of the
model alone on preprocessed images, at batch 1, 8 and 32, with 1 and 2 interpreter
threads. Prints a table; writes quantise.json.

    .venv/bin/python scripts/bench/quantise.py [--models models] [--seconds 3] [--out run/bench]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fidelity import compare, encode, photos  # noqa: E402  (beside this file)

from edge.imaging import Preprocessing, preprocess  # noqa: E402
from worker.model import load_model  # noqa: E402
from worker.quantise import CALIBRATION_SEED, augmented  # noqa: E402

NAME = "efficientnet_lite0"
VARIANTS = {"float": NAME, "int8": f"{NAME}_int8", "dynamic": f"{NAME}_dynamic"}
EVAL_SEED = CALIBRATION_SEED + 1


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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--crops", type=int, default=300)
    p.add_argument("--seconds", type=float, default=3.0, help="per speed measurement")
    p.add_argument("--out", type=Path, default=ROOT / "run" / "bench")
    a = p.parse_args()
    missing = [name for name in VARIANTS.values() if not (a.models / name).is_dir()]
    if missing:
        sys.exit(f"missing {missing} in {a.models}: run .venv/bin/python -m worker.build_model --quantise")
    images = evaluation_set(a.crops)
    reference = load_model(a.models / NAME).predict(images)
    sure = reference.max(axis=1) >= 0.5  # the float model is confident: an ImageNet class is really there
    rows = []
    for variant, name in VARIANTS.items():
        probs = load_model(a.models / name).predict(images)
        agreement = compare(reference, probs)
        row = {"variant": variant, "top1": agreement["top1_agree"] / len(images),
               "top1_confident": compare(reference[sure], probs[sure])["top1_agree"] / sure.sum(),
               "top5_overlap": agreement["top5_overlap"], "max_top5_diff": agreement["max_top5_diff"],
               "size_mb": (a.models / name / "1" / "model.tflite").stat().st_size / 2**20}
        for threads in (1, 2):
            model = load_model(a.models / name, intra_op_threads=threads)
            for batch in (1, 8, 32):
                row[f"t{threads}_b{batch}"] = speed(model, images, batch, a.seconds)
        rows.append(row)
        print(f"  {variant}: done", file=sys.stderr, flush=True)
    print(f"{len(images)} images ({len(images) - a.crops} photos as shipped, {a.crops} crops); "
          f"the float model is confident (p >= 0.5) on {sure.sum()}\n")
    print("| variant | file MB | top-1 agrees | top-1 agrees, confident | top-5 overlap | largest top-5 diff "
          "| img/s 1 thread, batch 1 / 8 / 32 | img/s 2 threads, batch 1 / 8 / 32 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        speeds = [" / ".join(f"{r[f't{t}_b{b}']:.1f}" for b in (1, 8, 32)) for t in (1, 2)]
        print(f"| {r['variant']} | {r['size_mb']:.1f} | {r['top1']:.3f} | {r['top1_confident']:.3f} | "
              f"{r['top5_overlap']:.3f} | "
              f"{r['max_top5_diff']:.3f} | {speeds[0]} | {speeds[1]} |")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "quantise.json").write_text(json.dumps({"images": len(images), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
