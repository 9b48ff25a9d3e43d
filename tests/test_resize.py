"""The reference preprocessing, reproduced without TensorFlow, against TensorFlow itself."""

from __future__ import annotations

import numpy as np
import pytest

from edge.imaging import preprocess
from edge.preprocessing import Preprocessing
from edge.resize import crop_and_resize, resize_bicubic, tf_centre_crop

pytestmark = pytest.mark.unit

tf = pytest.importorskip("tensorflow")


@pytest.mark.parametrize("shape, out", [((400, 600, 3), (224, 224)), ((97, 131, 3), (224, 224)),
                                        ((1750, 1750, 3), (224, 224)), ((5, 3, 3), (7, 11)),
                                        ((224, 224, 3), (224, 224)), ((9, 7, 3), (4, 6))])
def test_bicubic_matches_tf_image_resize(shape, out):
    image = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    ours = resize_bicubic(image, *out)
    theirs = tf.image.resize(image[None].astype(np.float32), out, method="bicubic", antialias=False)[0].numpy()
    assert ours.dtype == np.float32 and ours.shape == theirs.shape and ours.flags.c_contiguous
    np.testing.assert_allclose(ours, theirs, atol=2e-3)


@pytest.mark.parametrize("height, width", [(400, 600), (427, 640), (7, 9), (2000, 1333)])
def test_centre_crop_matches_tensorflows_eval_code(height, width):
    # tensorflow/tpu models/official/efficientnet/preprocessing.py, _decode_and_center_crop
    size = tf.cast((224 / (224 + 32)) * tf.cast(tf.minimum(height, width), tf.float32), tf.int32).numpy()
    expected = ((height - size) + 1) // 2, ((width - size) + 1) // 2, int(size)
    assert tf_centre_crop(height, width, 224, 0.875) == expected


def test_exact_path_is_tensorflows_eval_path(coffee_jpeg):
    image = tf.io.decode_jpeg(coffee_jpeg, channels=3, dct_method="INTEGER_ACCURATE")  # Pillow's IDCT
    top, left, side = tf_centre_crop(image.shape[0], image.shape[1], 224, 0.875)
    crop = tf.image.crop_to_bounding_box(image, top, left, side, side)
    theirs = tf.image.resize(tf.cast(crop[None], tf.float32), (224, 224), method="bicubic")[0].numpy()
    theirs = np.clip(np.rint(theirs), 0, 255)
    ours = preprocess(coffee_jpeg, Preprocessing(path="exact"), 10**8)
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1  # float rounding at .5


@pytest.mark.parametrize("writeable", [True, False])  # OpenCV's arrays and Pillow's read-only ones
def test_crop_and_resize_rounds_the_resized_crop(writeable):
    image = np.random.default_rng(7).integers(0, 256, (300, 451, 3), dtype=np.uint8)
    image.flags.writeable = writeable
    top, left, side = tf_centre_crop(300, 451, 224, 0.875)
    resized = resize_bicubic(image[top:top + side, left:left + side], 224, 224)
    expected = np.clip(np.rint(resized), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(crop_and_resize(image, top, left, side, 224), expected)


def test_a_crop_outside_the_image_is_refused_before_the_compiled_loops():
    image = np.zeros((100, 80, 3), np.uint8)
    for top, left, side in ((0, 0, 101), (30, 0, 80), (0, 1, 80), (-1, 0, 10), (0, 0, 0)):
        with pytest.raises(ValueError, match="outside"):
            crop_and_resize(image, top, left, side, 224)
    assert crop_and_resize(image, 20, 0, 80, 224).shape == (224, 224, 3)


def test_only_rgb_images_are_resized():
    with pytest.raises(ValueError, match="RGB"):
        resize_bicubic(np.zeros((9, 7, 4), np.uint8), 4, 6)
