"""python -m image_cluster.models (or image-cluster models): build the default model, import a model
file, or retrain on your own photos. Needs the [tensorflow] install.

    python -m image_cluster.models build --labels-dir .cache/darknet/usr/share/darknet/data
    python -m image_cluster.models import dogcat.keras --name dogcat --labels labels.txt --scale 0.00392156862
    python -m image_cluster.models retrain photos/ --name flowers

Each prints the version directory it wrote; a running worker serving the repository picks
a new version of a model it serves up within --version-poll seconds (a new model needs a
worker restart, or a worker started with it).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from image_cluster.envflags import apply_environment
from image_cluster.models.default_model import add_build_parser, run_build
from worker.serving import CHANNELS, LAYOUTS, OUTPUTS, PRECISIONS, ModelError, parse_spec


def build_parser(prog: str = "python -m image_cluster.models") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    add_build_parser(sub)
    i = sub.add_parser("import", help="a .keras/.h5, .tflite, .onnx file or SavedModel directory")
    i.add_argument("path", type=Path)
    i.add_argument("--name", required=True, help="the model's name (letters, digits, _ and -)")
    i.add_argument("--repository", type=Path, default=Path("models"), help="default %(default)s")
    i.add_argument("--labels", type=Path, help="class names, one per line (default: classes named by index)")
    i.add_argument("--size", type=int, nargs="+", metavar="PX", help="input side (H W must be equal); "
                                                                    "default: the model's own")
    i.add_argument("--channels", choices=CHANNELS, help="RGB (default), BGR or L (grayscale)")
    i.add_argument("--layout", choices=LAYOUTS, help="NHWC (default), NCHW, or flat (N, H*W*C)")
    i.add_argument("--scale", type=float, help="float inputs: x * scale, then (x - mean) / std")
    i.add_argument("--mean", type=float, nargs="+", help="per channel, after --scale")
    i.add_argument("--std", type=float, nargs="+", help="per channel, after --scale")
    i.add_argument("--crop-fraction", type=float, help="centre crop before resizing (default 0.875; 1: none)")
    i.add_argument("--resample", choices=["bicubic", "bilinear"])
    i.add_argument("--output", choices=OUTPUTS, help="probabilities (default) or logits (softmax applied)")
    i.add_argument("--precision", choices=PRECISIONS,
                   help="fp16 lets a TFLite model run in half precision on a CPU that has it (docs/performance/studies.md, "
                        "\"Half precision\"): check first that it answers as fp32 on your images")
    i.add_argument("--sample", type=Path, help="an image to check the model with (default: a synthetic one)")
    r = sub.add_parser("retrain", help="a new head on the default model's backbone, from DATA_DIR/CLASS/*.jpg")
    r.add_argument("data_dir", type=Path)
    r.add_argument("--name", required=True)
    r.add_argument("--repository", type=Path, default=Path("models"), help="default %(default)s")
    r.add_argument("--holdout", type=float, default=0.2, help="share of each class kept apart for scoring")
    return p


def spec_from_args(args: argparse.Namespace):
    raw = {field: getattr(args, field) for field in ("channels", "layout", "scale", "mean", "std",
                                                      "crop_fraction", "resample", "output", "precision")}
    if args.size:
        if len(set(args.size)) != 1 or len(args.size) > 2:
            raise ModelError(f"--size {' '.join(map(str, args.size))}: only square inputs are served")
        raw["size"] = args.size[0]
    return parse_spec({k: v for k, v in raw.items() if v is not None}, "the flags")


def run_import(args: argparse.Namespace) -> None:
    from image_cluster.models.importer import import_model

    sample = args.sample.read_bytes() if args.sample else None
    done = import_model(args.path, args.name, args.repository, spec_from_args(args), labels=args.labels,
                        sample=sample)
    m = done.model
    print(f"imported {args.path} as {done.version_dir} ({m.backend}, input {'x'.join(map(str, m.input_shape))}, "
          f"{len(m.labels)} classes)")
    print("sample image: " + ", ".join(f"{label} {score:.3f}" for label, score in done.sample_top))


def run_retrain(args: argparse.Namespace) -> None:
    from image_cluster.models.retrain import retrain

    done = retrain(args.data_dir, args.name, args.repository, holdout=args.holdout)
    print(f"{len(done.labels)} classes, {done.train_images} photos fitted, {done.holdout_images} held out: "
          f"held-out accuracy {done.holdout_accuracy:.3f}")
    print(f"wrote {done.version_dir} (tflite, {len(done.labels)} classes)")


def main(argv: list[str] | None = None, prog: str = "python -m image_cluster.models") -> int:
    parser = build_parser(prog)
    apply_environment(parser)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter (Keras import, retrain)
    try:
        {"build": run_build, "import": run_import, "retrain": run_retrain}[args.command](args)
    except (ModelError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
