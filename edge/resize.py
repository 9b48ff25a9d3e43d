"""TensorFlow's image resize and centre crop, reproduced with numpy (no TensorFlow import).

The default model's reference preprocessing is TensorFlow's evaluation path for
EfficientNet-Lite: a centre crop of image_size / (image_size + 32) of the short side
(0.875 at 224), then `tf.image.resize(..., method="bicubic")` without antialiasing. That
resize is TensorFlow's `ResizeBicubic` kernel with half-pixel centres: Keys' cubic with
a = -0.5, coefficients looked up in a 1024-step table, and taps that fall outside the
image weighted 0 with the remaining weights renormalised (resize_bicubic_op.cc).
tests/test_resize.py checks this against TensorFlow itself.

Separable and gather-based: each output row is 4 weighted input rows, then each output
column 4 weighted columns, so the cost is ~4 x out_h x in_w + 4 x out_h x out_w
multiply-adds per channel, not a dense matrix product (~0.5-0.9 ms for a 200-450 px crop
to 224 here, against ~0.3 ms for OpenCV's fixed-point cubic, which is not the same kernel).
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

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
    """uint8 or float (H, W, C) -> contiguous float32 (height, width, C), as tf.image.resize
    bicubic (antialias=False). Values may overshoot [0, 255] as TensorFlow's do."""
    tall = _resample_rows(image, *bicubic_taps(image.shape[0], height))  # (height, W, C)
    # Columns as rows of the transposed image: gathering whole rows is what numpy does fast.
    wide = _resample_rows(_transposed(tall), *bicubic_taps(image.shape[1], width))  # (width, height, C)
    return _transposed(wide)


def _transposed(image: np.ndarray) -> np.ndarray:
    """(H, W, C) -> contiguous (W, H, C). OpenCV's transpose moves whole pixels: ~10x
    numpy's strided copy for 3 channels (0.1 against 1.0 ms for a 224x420 float32 image,
    which was two thirds of this resize); it takes 2-4 channels."""
    if image.shape[2] in (2, 3, 4):
        return cv2.transpose(image)
    return np.ascontiguousarray(image.transpose(1, 0, 2))


def _resample_rows(image: np.ndarray, indices: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """out[i] = sum over k of weights[i, k] * image[indices[i, k]]: one gather of the 4
    source rows of every output row, then a batched (1x4) @ (4xN) product."""
    n = len(indices)
    taps = image[indices].reshape(n, 4, -1).astype(np.float32, copy=False)
    return np.matmul(weights[:, None, :], taps).reshape(n, *image.shape[1:])


def tf_centre_crop(height: int, width: int, image_size: int, crop_fraction: float) -> tuple[int, int, int]:
    """(top, left, side) as TensorFlow's EfficientNet eval code computes them: the side is
    truncated, the offsets round up."""
    side = max(1, int(np.float32(crop_fraction) * np.float32(min(height, width))))
    return (height - side + 1) // 2, (width - side + 1) // 2, side
