"""Example data for docs/guide/own-models.md: scikit-learn's 1,797 real 8x8
handwritten digits, written to run/digits/ (or the directory given):

    digits.onnx     a scikit-learn pipeline (scaler + logistic regression) exported by skl2onnx
    labels.txt      0..9
    photos/D/*.png  60 photos per digit (upscaled to 64 px): a folder per class, for retrain
    held-out/*.png  digits neither model was fitted on, named <index>-<digit>.png
    seven.png       one held-out 7

    .venv/bin/python scripts/example_digits.py [DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from tests.digits import DIGIT_LABELS, digits, features, png, sklearn_onnx, split, write_folders  # noqa: E402


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "run" / "digits"
    out.mkdir(parents=True, exist_ok=True)
    images, labels = digits()
    train, held = split(labels, per_class=60)
    held = held[:200]
    fit = np.setdiff1d(np.arange(len(labels)), held)
    pipeline = sklearn_onnx(out / "digits.onnx", images[fit], labels[fit])
    (out / "labels.txt").write_text("\n".join(DIGIT_LABELS) + "\n")
    write_folders(out / "photos", images[train], labels[train])
    (out / "held-out").mkdir(exist_ok=True)
    for i in held:
        (out / "held-out" / f"{i}-{labels[i]}.png").write_bytes(png(images[i]))
    seven = next(i for i in held if labels[i] == 7)
    (out / "seven.png").write_bytes(png(images[seven]))
    score = pipeline.score(features(images[held]), labels[held])
    print(f"wrote {out}: digits.onnx (held-out accuracy in scikit-learn {score:.3f}), labels.txt, "
          f"photos/ ({len(train)} photos), held-out/ ({len(held)}), seven.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
