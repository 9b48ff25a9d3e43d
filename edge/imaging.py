"""Decode image bytes and turn them into the model's uint8 input.

Pillow reads only the header on open, so the pixel-count limit is enforced before any
pixel is decoded, and only an allow-list of formats is ever opened (an EPS upload must
not reach Pillow's EPS plugin, which runs Ghostscript). RGB and grayscale JPEGs are
then decoded by OpenCV, pixel for pixel as Pillow would, but without holding the GIL
(`opencv_decodes`); everything else by Pillow. The default path ("exact")
decodes in full and resizes as the model's reference does (edge/resize.py); the faster
approximations below trade some of the model's answers for decode time.
"""

from __future__ import annotations

import functools
import io
import logging

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from edge.memory import keep_freed_memory
from edge.preprocessing import PATHS, Preprocessing
from edge.resize import crop_and_resize, tf_centre_crop

log = logging.getLogger(__name__)

# The formats we decode; Pillow's plugin names.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# Signatures of those formats: matching one but failing to open means corrupt.
KNOWN_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")

RESAMPLE = {"bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR}
ORIENTATION = 0x0112  # the EXIF tag (Pillow's getexif also reads it from XMP)
# Each EXIF orientation's OpenCV operation that turns the stored pixels upright, as
# Pillow's ImageOps.exif_transpose does (tests/test_imaging.py checks all eight).
UPRIGHT = {
    2: lambda a: cv2.flip(a, 1),
    3: lambda a: cv2.rotate(a, cv2.ROTATE_180),
    4: lambda a: cv2.flip(a, 0),
    5: cv2.transpose,
    6: lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
    7: lambda a: cv2.rotate(cv2.transpose(a), cv2.ROTATE_180),
    8: lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE),
}

# The preprocessing paths (PATHS) and their settings (Preprocessing): edge/preprocessing.py.


@functools.cache  # once a process, however many fronts open a decode pool
def configure_decoding() -> None:
    """Process-wide decode settings, applied by each front when it opens its decode pool:
    the pool already uses every core, and OpenCV's own threads would only contend; freed
    image buffers stay in the process for the next image (edge/memory.py)."""
    cv2.setNumThreads(1)
    keep_freed_memory()


class ImageError(Exception):
    """The bytes are not a usable image; `code` names why."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        """The HTTP status to answer with."""
        return 413 if self.code == "image_too_large" else 400


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Open (header only) and validate size; raises ImageError."""
    if not data:
        raise ImageError("empty_image", "the image is empty (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        if data.startswith(KNOWN_SIGNATURES) or data[8:12] == b"WEBP":
            raise ImageError("corrupt_image", "the image is corrupt: its header could not be read") from None
        raise ImageError("not_an_image", f"the data is not an image in a format we read ({', '.join(FORMATS)})") from None
    except Image.DecompressionBombError:  # Pillow's own limit, above any sane --max-pixels
        raise ImageError("image_too_large", f"the image is over the limit of {max_pixels} pixels") from None
    except Exception as exc:  # Pillow raises many types on hostile headers
        log.info("unreadable image header: %r", exc)
        raise ImageError("corrupt_image", "the image header could not be read") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError("corrupt_image", "the image has no pixels")
    if width * height > max_pixels:
        raise ImageError(
            "image_too_large",
            f"the image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}",
        )
    return img


def preprocess(data: bytes, prep: Preprocessing, max_pixels: int) -> np.ndarray:
    """Bytes -> uint8 array (size, size, channels): RGB or grayscale, centre-cropped and resized."""
    img = open_image(data, max_pixels)
    try:
        array = RESIZERS[prep.path](decode(data, img, prep), prep)
    except ImageError:
        raise
    except Exception as exc:  # truncated or corrupt pixel data
        log.info("undecodable image: %r", exc)
        raise ImageError("corrupt_image", "the image could not be decoded") from None
    if array.shape != (prep.size, prep.size, 3):
        raise ImageError("corrupt_image", f"decoded to unexpected shape {array.shape}")
    return array if prep.channels == 3 else cv2.cvtColor(array, cv2.COLOR_RGB2GRAY)[..., None]


def decode(data: bytes, img: Image.Image, prep: Preprocessing) -> np.ndarray:
    """The image's pixels upright, uint8 RGB: decoded by OpenCV where `opencv_decodes`,
    else by Pillow (`rgb_pixels`), then turned by its orientation as Pillow reads it (EXIF,
    else XMP; OpenCV's own reading is off), one way for every format."""
    orientation = img.getexif().get(ORIENTATION, 1)
    pixels = None
    if prep.path == "draft":  # ask the JPEG decoder for a reduced size that still covers the crop
        need = int(np.ceil(prep.size / prep.crop_fraction))
        img.draft("RGB", (need, need))
    elif opencv_decodes(data, img):
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
    if pixels is None:
        pixels = rgb_pixels(img)
    upright = UPRIGHT.get(orientation)
    return upright(pixels) if upright else pixels


def opencv_decodes(data: bytes, img: Image.Image) -> bool:
    """Whether OpenCV decodes this image: a JPEG in RGB or grayscale whose data ends with
    the end-of-image marker. OpenCV uses the same libjpeg-turbo with the same settings as
    Pillow, so the pixels are identical (tests/test_imaging.py), but it decodes straight
    into the array with the GIL released throughout, where Pillow repacks its 4-byte
    pixels into 3 while holding the GIL: coffee (600x400) through the exact path on 2
    threads, 557 against 407 images/s; a 12-megapixel photo in 80 against 144-160 ms.
    Everything else stays with Pillow: CMYK (the two convert it differently) and a file
    that does not end where a JPEG ends (OpenCV would decode a truncated file, greyed
    where data is missing; Pillow refuses it)."""
    return img.format == "JPEG" and img.mode in ("RGB", "L") and data.endswith(b"\xff\xd9")


def rgb_pixels(img: Image.Image) -> np.ndarray:
    """The decoded image as stored (`decode` turns it upright), uint8 RGB; alpha over white."""
    if img.mode.startswith("I"):
        # 16/32-bit samples: Pillow's convert would clip everything above 255 to white.
        wide = np.asarray(img).astype(np.uint32)
        img = Image.fromarray((wide >> 8 if wide.max() > 255 else wide).astype(np.uint8))
    if img.mode != "RGB":
        # Palette/alpha/CMYK/grayscale all go through RGBA or straight to RGB.
        img = img.convert("RGBA" if "A" in img.getbands() or img.mode == "P" else "RGB")
        if img.mode == "RGBA":
            background = Image.new("RGB", img.size, (255, 255, 255))
            background.paste(img, mask=img.getchannel("A"))
            img = background
    return np.asarray(img, dtype=np.uint8)


def _reference_crop(pixels: np.ndarray, prep: Preprocessing) -> np.ndarray:
    # One pixel of offset moves top-5 probabilities by up to 0.2 (scripts/bench/fidelity.py).
    top, left, side = tf_centre_crop(*pixels.shape[:2], prep.size, prep.crop_fraction)
    return pixels[top:top + side, left:left + side]


def _exact(pixels: np.ndarray, prep: Preprocessing) -> np.ndarray:
    return crop_and_resize(pixels, *tf_centre_crop(*pixels.shape[:2], prep.size, prep.crop_fraction), prep.size)


def _opencv(pixels: np.ndarray, prep: Preprocessing) -> np.ndarray:
    return cv2.resize(_reference_crop(pixels, prep), (prep.size, prep.size), interpolation=RESAMPLE[prep.resample])


def _pillow(pixels: np.ndarray, prep: Preprocessing) -> np.ndarray:
    crop = Image.fromarray(np.ascontiguousarray(_reference_crop(pixels, prep)))
    return np.asarray(crop.resize((prep.size, prep.size), Image.Resampling.BICUBIC))


RESIZERS = {"exact": _exact, "opencv": _opencv, "draft": _opencv, "pillow": _pillow}
assert tuple(RESIZERS) == PATHS, "edge/preprocessing.py names every path"
