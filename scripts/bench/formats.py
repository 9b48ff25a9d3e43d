"""The image format and size study: what sending a smaller or differently encoded photo
costs in answers, and what it saves in bytes and time.

Every real photo available offline (scripts/bench/fidelity.py's set: scikit-image's,
darknet's and scikit-learn's, 300 to 1411 px on the long side) at its full size and with
the long side capped at 1024, 512 and 224 px (Lanczos; a photo already within the cap is
sent as it is, as the client's --max-side does, so every cap holds the same photos), each as JPEG
q90, JPEG q75, PNG and WebP q80. Per size and format: mean bytes (and their share of the
full-size JPEG q90), decode+preprocess ms (the worker's default exact path, one thread,
median), end-to-end latency of a POST to a real worker (c=1, median), and the default
model's agreement with its answer on the full-size lossless (PNG) photo: top-1 (over all
photos, and over the "confident" ones whose full-size top-1 has p >= 0.5: a painting or a
galaxy has no ImageNet class, and its top-1 flips with any change) and mean top-5 overlap.
Prints a table, writes formats.json and formats.png.

    .venv/bin/python scripts/bench/formats.py [--out run/bench] [--posts 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fidelity import compare, encode, photos  # noqa: E402  (beside this file)
from machine import describe, label as machine_label  # noqa: E402  (beside this file)

from edge.imaging import configure_decoding, preprocess  # noqa: E402
from tests.consul_dev import DevAgent  # noqa: E402
from tests.processes import WorkerProcess, serve_model  # noqa: E402
from worker.model import load_model  # noqa: E402

MODEL_DIR = ROOT / "models" / "efficientnet_lite0"
SIZES = ("full", 1024, 512, 224)
FORMATS = {"jpeg q90": ("JPEG", {"quality": 90}), "jpeg q75": ("JPEG", {"quality": 75}),
           "png": ("PNG", {}), "webp q80": ("WEBP", {"quality": 80})}
CONFIDENT = 0.5  # photos whose full-size top-1 is at least this sure: an ImageNet class is really there


def variants(img: Image.Image) -> list[tuple[str, str, bytes]]:
    """(size, format, bytes) for each long-side cap and each format. A photo already within
    a cap is sent as it is, as the client's --max-side does, so every cap holds every photo."""
    out = []
    for size in SIZES:
        small = img.copy()
        if size != "full":
            small.thumbnail((size, size), Image.Resampling.LANCZOS)  # never enlarges
        out += [(str(size), name, encode(small, fmt, **options)) for name, (fmt, options) in FORMATS.items()]
    return out


def decode_ms(data: bytes, prep, repeat: int = 3) -> tuple[np.ndarray, float]:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        image = preprocess(data, prep, 10**9)
        best = min(best, (time.perf_counter() - started) * 1000)
    return image, best


async def post_ms(url: str, images: list[bytes], posts: int) -> list[float]:
    """Median end-to-end ms of `posts` sequential POSTs per image."""
    out = []
    async with aiohttp.ClientSession() as session:
        for data in images:
            times = []
            for _ in range(posts):
                form = aiohttp.FormData()
                form.add_field("data", data, filename="photo", content_type="application/octet-stream")
                started = time.perf_counter()
                async with session.post(url, data=form) as r:
                    await r.read()
                    assert r.status == 200, r.status
                times.append((time.perf_counter() - started) * 1000)
            out.append(statistics.median(times))
    return out


def study(posts: int, out: Path) -> list[dict]:
    configure_decoding()
    model = load_model(MODEL_DIR, fp32=True)  # fp32: only the format and size differ between rows
    rows: list[dict] = []
    for name, img in photos().items():
        reference = model.predict(preprocess(encode(img, "PNG"), model.preprocessing, 10**9)[None])
        full_jpeg = len(encode(img, "JPEG", quality=90))
        confident = bool(reference.max() >= CONFIDENT)
        for size, fmt, data in variants(img):
            image, ms = decode_ms(data, model.preprocessing)
            agreement = compare(reference, model.predict(image[None]))
            rows.append({"photo": name, "size": size, "format": fmt, "data": data, "bytes": len(data),
                         "share_of_full_jpeg": len(data) / full_jpeg, "decode_ms": ms,
                         "top1": agreement["top1_agree"], "top5_overlap": agreement["top5_overlap"],
                         "confident": confident})
    agent = DevAgent(log_path=out / "consul-formats.log").start()
    try:
        worker = WorkerProcess(agent.address, *serve_model(MODEL_DIR), log_path=out / "worker-formats.log")
        try:
            worker.wait_ready()
            latencies = asyncio.run(post_ms(worker.url, [r.pop("data") for r in rows], posts))
        finally:
            worker.stop()
    finally:
        agent.stop()
    for row, ms in zip(rows, latencies):
        row["e2e_ms"] = ms
    return rows


def summary(rows: list[dict]) -> list[dict]:
    groups = []
    for size in map(str, SIZES):
        for fmt in FORMATS:
            g = [r for r in rows if r["size"] == size and r["format"] == fmt]
            if g:
                groups.append({"size": size, "format": fmt, "photos": len(g),
                               "mean_kb": np.mean([r["bytes"] for r in g]) / 1024,
                               "share": np.mean([r["share_of_full_jpeg"] for r in g]),
                               "decode_ms": statistics.median(r["decode_ms"] for r in g),
                               "e2e_ms": statistics.median(r["e2e_ms"] for r in g),
                               "top1": np.mean([r["top1"] for r in g]),
                               "top1_confident": np.mean([r["top1"] for r in g if r["confident"]] or [np.nan]),
                               "confident": sum(r["confident"] for r in g),
                               "top5": np.mean([r["top5_overlap"] for r in g])})
    return groups


def table(groups: list[dict]) -> str:
    lines = ["| long side capped at | format | photos | mean KB | of full-size JPEG q90 | decode+preprocess ms | "
             "POST to a worker ms | top-1 agrees | top-1 agrees, confident photos (how many) | top-5 overlap |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for g in groups:
        lines.append(f"| {g['size']} | {g['format']} | {g['photos']} | {g['mean_kb']:.1f} | {g['share']:.2f} | "
                     f"{g['decode_ms']:.2f} | {g['e2e_ms']:.1f} | {g['top1']:.2f} | "
                     f"{g['top1_confident']:.2f} ({g['confident']}) | "
                     f"{g['top5']:.2f} |")
    return "\n".join(lines)


def plot(groups: list[dict], machine: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for fmt in FORMATS:
        g = [x for x in groups if x["format"] == fmt]
        left.plot([x["size"] for x in g], [x["mean_kb"] for x in g], "o-", label=fmt)
        right.plot([x["size"] for x in g], [x["top1"] for x in g], "o-", label=fmt)
    left.set_yscale("log")
    left.set_ylabel("mean KB per photo")
    right.set_ylabel("top-1 agreement with the full-size PNG")
    right.set_ylim(0, 1.02)
    fig.suptitle(f"the same {groups[0]['photos']} photos at every point; {machine_label(machine)}", fontsize=9)
    for ax in (left, right):
        ax.set_xlabel("long side capped at (px)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "run" / "bench")
    p.add_argument("--posts", type=int, default=3, help="POSTs per image (the median counts)")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    rows = study(a.posts, a.out)
    groups = summary(rows)
    machine = describe()
    (a.out / "formats.json").write_text(json.dumps({"machine": machine, "rows": rows, "groups": groups},
                                                   indent=1, default=float))
    plot(groups, machine, a.out / "formats.png")
    print(table(groups))
    print(f"\nwrote {a.out / 'formats.json'}, {a.out / 'formats.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
