"""Decoding and preprocessing, in process: every input mode ends as 224x224 RGB uint8."""

from __future__ import annotations

import gc
import io
import resource

import numpy as np
import pytest
from PIL import Image, ImageOps

from edge.imaging import ImageError, decode, open_image, opencv_decodes, preprocess, rgb_pixels
from edge.memory import freeze_startup_objects, keep_freed_memory
from edge.preprocessing import Preprocessing

pytestmark = pytest.mark.unit

PREP = Preprocessing()


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    "img,fmt",
    [
        (Image.new("RGB", (640, 480), (200, 30, 30)), "JPEG"),
        (Image.new("L", (300, 500), 128), "PNG"),
        (Image.new("RGBA", (256, 256), (0, 0, 255, 128)), "PNG"),
        (Image.new("CMYK", (320, 240), (0, 255, 255, 0)), "JPEG"),
        (Image.new("I;16", (300, 300), 40000), "PNG"),
        (Image.new("P", (100, 80), 3), "GIF"),
        (Image.new("RGB", (50, 40), (1, 2, 3)), "BMP"),
    ],
    ids=["rgb-jpeg", "gray-png", "rgba-png", "cmyk-jpeg", "16bit-png", "palette-gif", "tiny-bmp"],
)
def test_every_mode_becomes_rgb_uint8(img, fmt):
    out = preprocess(encode(img, fmt), PREP, 10**8)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8


def test_centre_crop_keeps_the_middle():
    # Red centre square inside a wide blue frame: the 0.875 centre crop of the short
    # side sees red in the middle and blue only at the edges.
    img = Image.new("RGB", (800, 400), (0, 0, 255))
    img.paste((255, 0, 0), (250, 50, 550, 350))
    out = preprocess(encode(img, "PNG"), PREP, 10**8)
    assert tuple(out[112, 112]) == (255, 0, 0)
    assert out[112, 0, 2] > 200  # left edge of the crop is still frame


def test_exif_orientation_is_honoured():
    # Stored as 400 wide x 200 tall, top half red; EXIF 6 says "rotate 90 deg clockwise
    # to display", so the displayed image is 200x400 with the red half on the right.
    img = Image.new("RGB", (400, 200), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 400, 100))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = preprocess(encode(img, "JPEG", exif=exif.tobytes()), PREP, 10**8)
    assert out[112, 200, 0] > 200 and out[112, 200, 2] < 60  # right: red
    assert out[112, 20, 2] > 200 and out[112, 20, 0] < 60  # left: blue


def jpeg_variants(photo: Image.Image) -> dict[str, bytes]:
    return {"q90": encode(photo, "JPEG", quality=90), "q75": encode(photo, "JPEG", quality=75),
            "progressive": encode(photo, "JPEG", quality=90, progressive=True),
            "4:4:4": encode(photo, "JPEG", quality=90, subsampling=0),
            "grayscale": encode(photo.convert("L"), "JPEG", quality=90)}


def test_opencv_decodes_upright_jpegs_to_pillows_very_pixels(chelsea_png):
    """The OpenCV path must not change a single pixel: Pillow's decode is the reference
    the fidelity figures were measured with."""
    photo = Image.open(io.BytesIO(chelsea_png)).convert("RGB")
    for name, data in jpeg_variants(photo).items():
        assert opencv_decodes(data, Image.open(io.BytesIO(data))), name
        ours = decode(data, Image.open(io.BytesIO(data)), PREP)
        pillows = rgb_pixels(Image.open(io.BytesIO(data)))
        assert ours.dtype == np.uint8 and ours.shape == pillows.shape == (300, 451, 3), name
        assert np.array_equal(ours, pillows), name


def noise(width: int, height: int) -> Image.Image:
    """Random pixels: no symmetry hides a wrong rotation, and the data runs past the header."""
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_every_exif_orientation_turns_upright_as_pillows_exif_transpose_does():
    """JPEGs (decoded by OpenCV) and PNGs (by Pillow) are turned by the same table."""
    img = noise(64, 48)
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="8"/></rdf:RDF></x:xmpmeta>')
    cases = {"xmp 8": encode(img, "JPEG", xmp=xmp)}
    for orientation in range(1, 10):  # 9 is no orientation: left as stored, as Pillow does
        exif = Image.Exif()
        exif[0x0112] = orientation
        cases[f"exif {orientation}"] = encode(img, "JPEG", exif=exif.tobytes())
        cases[f"png exif {orientation}"] = encode(img, "PNG", exif=exif.tobytes())
    for name, data in cases.items():
        assert opencv_decodes(data, Image.open(io.BytesIO(data))) == (not name.startswith("png")), name
        ours = decode(data, Image.open(io.BytesIO(data)), PREP)
        pillows = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
        assert ours.shape == pillows.shape and np.array_equal(ours, pillows), name
    assert decode(cases["exif 6"], Image.open(io.BytesIO(cases["exif 6"])), PREP).shape == (64, 48, 3)


def test_pillow_keeps_cmyk_and_incomplete_jpegs():
    whole = encode(noise(64, 48), "JPEG")
    cases = {"cmyk": encode(noise(64, 48).convert("CMYK"), "JPEG"), "truncated": whole[: len(whole) * 2 // 3],
             "trailing bytes": whole + b"extra"}
    for name, data in cases.items():
        assert not opencv_decodes(data, Image.open(io.BytesIO(data))), name
    with pytest.raises(ImageError) as refused:  # what OpenCV would have decoded, greyed
        preprocess(cases["truncated"], PREP, 10**8)
    assert refused.value.code == "corrupt_image"


def test_pixel_limit_checked_from_the_header_alone():
    data = encode(Image.new("RGB", (3000, 2000)), "PNG")
    with pytest.raises(ImageError) as err:
        open_image(data[:200], max_pixels=5_000_000)  # only the header is there
    assert err.value.code == "image_too_large"


def test_animated_gif_uses_first_frame():
    frames = [Image.new("P", (64, 64), i) for i in range(3)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert preprocess(data, PREP, 10**8).shape == (224, 224, 3)


def test_only_allow_listed_formats_are_opened():
    """An EPS file would reach Pillow's EPS plugin (which runs Ghostscript): refused unopened."""
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n"
    assert Image.open(io.BytesIO(eps)).format == "EPS"  # what the allow-list guards against
    with pytest.raises(ImageError) as err:
        preprocess(eps, Preprocessing(), 10**6)
    assert err.value.code == "not_an_image" and err.value.status == 400


def test_decoding_reuses_freed_memory_instead_of_faulting_in_fresh_pages(coffee_jpeg):
    """configure_decoding keeps freed image buffers in the process (edge/memory.py): with
    glibc's defaults each 600x400 JPEG touched ~280 fresh pages from the kernel."""
    if not keep_freed_memory():
        pytest.skip("malloc here is not glibc's")
    for _ in range(5):  # the heap grows to its working size
        preprocess(coffee_jpeg, PREP, 10**8)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        preprocess(coffee_jpeg, PREP, 10**8)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20
    assert faults < 20, f"{faults:.0f} page faults an image"


def test_freed_memory_setting_is_skipped_where_malloc_is_not_glibcs(monkeypatch):
    class OtherLibc:  # musl or macOS: no mallopt to call
        pass

    monkeypatch.setattr("edge.memory.ctypes.CDLL", lambda name: OtherLibc())
    assert keep_freed_memory() is False


def test_startup_objects_are_left_out_of_later_collections():
    """What exists when serving starts goes to the permanent generation: a full collection
    then walks only the objects made since (docs/performance/history.md, "Start-up's objects are frozen")."""
    try:
        frozen = freeze_startup_objects()
        assert frozen == gc.get_freeze_count() and frozen > 10_000  # this process's imports
        left = len(gc.get_objects())  # what a collection still walks: next to nothing
        assert left < frozen / 100
        made_since = [[i] for i in range(1000)]
        assert len(gc.get_objects()) >= left + len(made_since)
    finally:
        gc.unfreeze()  # the rest of the test session collects as usual
