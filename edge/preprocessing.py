"""How a model wants its input, as plain data: the worker protocol's Consul Meta schema
carries it, so the proxy and the autoscaler read it without loading the decoders
(OpenCV and the compiled resize) that edge/imaging.py needs to compute it.

How pixels become the model's input. "exact" is the model's reference (TensorFlow's
eval path: full decode, its centre crop, its bicubic without antialiasing; see
edge/resize.py); the others are faster approximations, measured against it by
scripts/bench/fidelity.py (docs, "Preprocessing fidelity").
  opencv: full decode, the reference's crop, OpenCV's cubic (Keys a = -0.75, fixed point)
  draft:  JPEG DCT-domain downscaling to just above the crop, then as opencv
  pillow: full decode, the reference's crop, Pillow's antialiased bicubic
(edge/imaging.py's RESIZERS maps each path to its resize.)
"""

from __future__ import annotations

from dataclasses import dataclass

PATHS = ("exact", "opencv", "draft", "pillow")
DEFAULT_PATH = "exact"


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its input: square side, centre-crop fraction, resampling, and
    which path computes it. The one place the defaults live (the worker protocol's Meta
    schema uses them too)."""

    size: int = 224
    crop_fraction: float = 0.875
    resample: str = "bicubic"
    path: str = DEFAULT_PATH
    channels: int = 3  # 1: grayscale (ITU-R 601 luma, OpenCV's RGB2GRAY)
