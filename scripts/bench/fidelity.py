"""Preprocessing fidelity: how far each preprocessing path moves the model's answer from
the reference path ("exact": TensorFlow's eval preprocessing, edge/resize.py).

For every real photo we can ship or make offline (scikit-image's, darknet's, and
scikit-learn's when installed), and each re-encoded as JPEG at several qualities and
sizes, EXIF-rotated, as PNG and as WebP, every path in edge.imaging.PATHS preprocesses the
same bytes and the default model classifies the result. Per path: top-1 agreement with
the reference, mean top-5 overlap, the largest probability difference on the reference's
top-5 classes, and the median decode+preprocess time (one thread). A path is within the
bound when it keeps top-1 on every image and its largest top-5 difference is <= 0.02.

    .venv/bin/python scripts/bench/fidelity.py [--out run/bench] [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from edge.imaging import configure_decoding, preprocess  # noqa: E402
from edge.preprocessing import PATHS, Preprocessing  # noqa: E402
from worker.model import load_model  # noqa: E402

MODEL_DIR = ROOT / "models" / "efficientnet_lite0"
DARKNET = ROOT / ".cache" / "darknet" / "usr" / "share" / "darknet" / "data"
BOUND = 0.02


def photos() -> dict[str, Image.Image]:
    """Real photos available offline, by name (RGB)."""
    import skimage

    found = {}
    data = Path(skimage.__file__).parent / "data"
    for name in ("coffee.png", "chelsea.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png",
                 "hubble_deep_field.jpg", "retina.jpg"):
        found[Path(name).stem] = Image.open(data / name).convert("RGB")
    for path in sorted(DARKNET.glob("*.jpg")):
        found[path.stem] = Image.open(path).convert("RGB")
    try:
        from sklearn.datasets import load_sample_images
        for name, array in zip(("china", "flower"), load_sample_images().images):
            found[name] = Image.fromarray(array)
    except ImportError:
        pass
    return found


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def exif_rotated(img: Image.Image) -> bytes:
    """The photo stored sideways with EXIF orientation 6: upright once the tag is honoured."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(img.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=90, exif=exif.tobytes())


def variants(img: Image.Image) -> dict[str, bytes]:
    out = {"jpeg q95": encode(img, "JPEG", quality=95), "jpeg q75": encode(img, "JPEG", quality=75),
           "png": encode(img, "PNG"), "webp q90": encode(img, "WEBP", quality=90),
           "jpeg q90 exif-rotated": exif_rotated(img)}
    for side in (1024, 512):
        if max(img.size) > side:
            small = img.copy()
            small.thumbnail((side, side), Image.Resampling.LANCZOS)
            out[f"jpeg q90 {side}px"] = encode(small, "JPEG", quality=90)
    big = img.resize((img.width * 2, img.height * 2), Image.Resampling.LANCZOS)
    out["jpeg q90 2x upscaled"] = encode(big, "JPEG", quality=90)
    return out


def measure(path: str, prep: Preprocessing, images: list[bytes], repeat: int) -> tuple[np.ndarray, float]:
    """(inputs, median ms per image) for one path."""
    p = Preprocessing(prep.size, prep.crop_fraction, prep.resample, path)
    inputs, times = [], []
    for data in images:
        best = []
        for _ in range(repeat):
            t = time.perf_counter()
            array = preprocess(data, p, 10**9)
            best.append((time.perf_counter() - t) * 1000)
        inputs.append(array)
        times.append(min(best))
    return np.stack(inputs), float(np.median(times))


def compare(reference: np.ndarray, probs: np.ndarray) -> dict:
    ref_top5 = np.argsort(-reference, axis=1)[:, :5]
    top5 = np.argsort(-probs, axis=1)[:, :5]
    rows = np.arange(len(reference))[:, None]
    diffs = np.abs(probs[rows, ref_top5] - reference[rows, ref_top5]).max(axis=1)
    return {
        "top1_agree": int((ref_top5[:, 0] == top5[:, 0]).sum()),
        "top5_overlap": float(np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ref_top5, top5)])),
        "max_top5_diff": float(diffs.max()),
        "worst": int(diffs.argmax()),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "run" / "bench")
    p.add_argument("--repeat", type=int, default=3, help="timing runs per image (the fastest counts)")
    a = p.parse_args()
    configure_decoding()
    model = load_model(MODEL_DIR, fp32=True)  # fp32: only the preprocessing differs between rows
    names, images = [], []
    for name, img in photos().items():
        for variant, data in variants(img).items():
            names.append(f"{name} / {variant}")
            images.append(data)
    print(f"{len(images)} images ({len(photos())} photos x variants)", file=sys.stderr)
    results, reference = {}, None
    for path in PATHS:  # "exact" first: the reference
        inputs, ms = measure(path, model.preprocessing, images, a.repeat)
        probs = model.predict(inputs)
        reference = probs if reference is None else reference
        row = {"ms": round(ms, 3), **compare(reference, probs)}
        row["within_bound"] = row["top1_agree"] == len(images) and row["max_top5_diff"] <= BOUND
        row["worst"] = names[row["worst"]] if row["max_top5_diff"] > 0 else "-"
        results[path] = row
    print_table(results, len(images))
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "fidelity.json").write_text(json.dumps({"images": names, "paths": results}, indent=1))
    return 0


def print_table(results: dict, n: int) -> None:
    print(f"| path | top-1 agrees | mean top-5 overlap | largest top-5 prob. diff | within {BOUND} | "
          "decode+preprocess ms (median) | largest difference on |")
    print("|---|---:|---:|---:|---|---:|---|")
    for path, r in results.items():
        print(f"| {path} | {r['top1_agree']}/{n} | {r['top5_overlap']:.3f} | {r['max_top5_diff']:.4f} | "
              f"{'yes' if r['within_bound'] else 'no'} | {r['ms']:.2f} | {r['worst']} |")


if __name__ == "__main__":
    sys.exit(main())
