"""Client-side image handling: find photos, and shrink big ones before sending.

A 12-megapixel photo is 3-5 MB; the model sees 224x224. Downscaling the long side to
1024 px (the CLI's default, from scripts/bench/formats.py) keeps what the model needs and
sends a small fraction of the bytes. EXIF orientation is applied first, since re-encoding drops
the EXIF tag that says how to rotate.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


def expand_paths(paths: list[str]) -> list[Path]:
    """Files as given; directories replaced by the image files inside them, sorted."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        else:
            found.append(p)
    return found


def downscale(data: bytes, max_side: int, quality: int = 90) -> bytes:
    """Re-encode as JPEG with the long side at most `max_side`; smaller images pass
    unchanged, and so does anything Pillow cannot open: the server judges it and says
    what is wrong in its own words (not_an_image, corrupt_image, ...)."""
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, not {max_side}")
    try:
        img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        return data
    if max(img.size) <= max_side:
        return data
    img.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale directly
    img = ImageOps.exif_transpose(img).convert("RGB")
    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()
