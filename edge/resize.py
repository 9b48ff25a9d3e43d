"""TensorFlow's image resize and centre crop, reproduced without TensorFlow.

The default model's reference preprocessing is TensorFlow's evaluation path for
EfficientNet-Lite: a centre crop of image_size / (image_size + 32) of the short side
(0.875 at 224), then `tf.image.resize(..., method="bicubic")` without antialiasing. That
resize is TensorFlow's `ResizeBicubic` kernel with half-pixel centres: Keys' cubic with
a = -0.5, coefficients looked up in a 1024-step table, and taps that fall outside the
image weighted 0 with the remaining weights renormalised (resize_bicubic_op.cc).
tests/test_resize.py checks this against TensorFlow itself.

Separable: each output row is 4 weighted input rows, then each output column 4 weighted
columns. The loops are compiled ahead of time (edge/_resample.pyx, Cython) into one call
that releases the GIL for the whole image. A numpy version (a gather and a batched
product per pass, transposes, rounding) released and retook the GIL about ten times an
image, and under load each retake queued behind the event loop: one call instead gave a
no-op worker 1.35-1.53x the requests at 0.65-0.75x the CPU each, the default model
1.05-1.18x the images (docs/guide/preprocessing.md, "Decoding"). The same loops were first
compiled by numba at run time, which put a whole LLVM (~60-70 MB resident) in every
serving process for them (docs, "Memory").
"""

from __future__ import annotations

import functools

import numpy as np

try:
    from edge._resample import resample as _resample
    from edge._resample import resample_uint8 as _resample_uint8
except ImportError as exc:  # the optional extension was not built: no C compiler at install
    raise ImportError("edge/_resample.pyx was not compiled when this package was installed (it needs a C "
                      "compiler and Cython at install time: apt-get install gcc, then reinstall)") from exc

TABLE_SIZE = 1024
KEYS_A = -0.5


def _coefficient_table(a: float = KEYS_A) -> np.ndarray:
    """table[i] = (W(x), W(x + 1)) at x = i / TABLE_SIZE, in float32 like TensorFlow's."""
    x = np.arange(TABLE_SIZE + 1, dtype=np.float64) / TABLE_SIZE
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    x1 = x + 1.0
    far = ((a * x1 - 5 * a) * x1 + 8 * a) * x1 - 4 * a
    return np.stack([near, far], axis=1).astype(np.float32)


_TABLE = _coefficient_table()


@functools.lru_cache(maxsize=256)
def bicubic_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, weights), each (out_size, 4): the input samples of each output sample."""
    scale = np.float32(in_size / out_size)
    centre = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    base = np.floor(centre).astype(np.int64)
    offset = np.rint((centre - base) * TABLE_SIZE).astype(np.int64)  # lrintf: round half to even
    weights = np.stack([_TABLE[offset, 1], _TABLE[offset, 0],
                        _TABLE[TABLE_SIZE - offset, 0], _TABLE[TABLE_SIZE - offset, 1]], axis=1)
    wanted = base[:, None] + np.arange(-1, 3)
    indices = np.clip(wanted, 0, in_size - 1)
    weights = np.where(indices == wanted, weights, np.float32(0))  # outside the image: no weight
    total = weights.sum(axis=1, keepdims=True)
    weights = (weights / np.where(np.abs(total) > 0, total, np.float32(1))).astype(np.float32)
    indices.flags.writeable = weights.flags.writeable = False  # cached and shared
    return indices, weights


def resize_bicubic(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 or float32 RGB (H, W, 3) -> float32 (height, width, 3), as tf.image.resize
    bicubic (antialias=False). Values may overshoot [0, 255] as TensorFlow's do."""
    in_height, in_width = image.shape[:2]
    return _resample(_as_rows(image), 0, 0, in_width, *bicubic_taps(in_height, height),
                     *bicubic_taps(in_width, width)).reshape(height, width, 3)


def crop_and_resize(image: np.ndarray, top: int, left: int, side: int, size: int) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> uint8 (size, size, 3): the square crop at (top, left) resized
    as `resize_bicubic`, rounded half to even and clipped to [0, 255], in one call."""
    height, width = image.shape[:2]
    if not (0 <= top and 0 <= left and 0 < side and top + side <= height and left + side <= width):
        raise ValueError(f"crop {side}x{side} at ({top}, {left}) is outside the {width}x{height} image")
    taps = bicubic_taps(side, size)  # the compiled loops check no bounds: the crop is checked here
    return _resample_uint8(_as_rows(image), top, left, side, *taps, *taps).reshape(size, size, 3)


def _as_rows(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> C-contiguous (H, W * 3): the kernel reads whole rows."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {image.shape}")
    return np.ascontiguousarray(image).reshape(image.shape[0], -1)


def tf_centre_crop(height: int, width: int, image_size: int, crop_fraction: float) -> tuple[int, int, int]:
    """(top, left, side) as TensorFlow's EfficientNet eval code computes them: the side is
    truncated, the offsets round up."""
    side = max(1, int(np.float32(crop_fraction) * np.float32(min(height, width))))
    return (height - side + 1) // 2, (width - side + 1) // 2, side
