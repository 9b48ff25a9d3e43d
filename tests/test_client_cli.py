"""The client CLI against a real proxy and worker, and client-side downscaling."""

from __future__ import annotations

import io
import json
import uuid

import pytest
from PIL import Image

from client.images import downscale, expand_paths
from tests.processes import client_cli as cli
from tests.processes import wait_for


def big_coffee(coffee_jpeg: bytes) -> bytes:
    """The coffee photo upscaled to 2400x1600 (a camera-sized JPEG)."""
    img = Image.open(io.BytesIO(coffee_jpeg)).resize((2400, 1600), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=92)
    return out.getvalue()


@pytest.mark.unit
def test_downscale_shrinks_bytes_and_honours_orientation(coffee_jpeg):
    big = big_coffee(coffee_jpeg)
    small = downscale(big, 512)
    assert Image.open(io.BytesIO(small)).size == (512, 341)
    assert len(small) < len(big) / 5
    assert downscale(coffee_jpeg, 1024) == coffee_jpeg  # 600x400: already small enough
    # Stored landscape with EXIF "rotate 90": the downscaled photo is portrait, no EXIF needed.
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    Image.open(io.BytesIO(big)).save(out, "JPEG", exif=exif.tobytes())
    assert Image.open(io.BytesIO(downscale(out.getvalue(), 512))).size == (341, 512)


@pytest.mark.unit
def test_expand_paths(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.PNG").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    assert expand_paths([str(tmp_path)]) == [tmp_path / "a.jpg", tmp_path / "sub" / "b.PNG"]
    assert expand_paths([str(tmp_path / "notes.txt")]) == [tmp_path / "notes.txt"]


@pytest.mark.system
def test_cli_classify_lookup_bench(start_worker, start_proxy, coffee_jpeg, chelsea_png, tmp_path):
    service = f"classifier-{uuid.uuid4().hex[:6]}"
    worker = start_worker("--service-name", service)
    proxy = start_proxy("--service-name", service)
    wait_for(lambda: proxy.workers()["live"] == 1, what="live worker")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "coffee.jpg").write_bytes(coffee_jpeg)
    (photos / "chelsea.png").write_bytes(chelsea_png)
    (photos / "big.jpg").write_bytes(big_coffee(coffee_jpeg))

    for mode, concurrency in (("p2p", "1"), ("proxy", "3")):
        out = cli(proxy.url, "classify", str(photos), "--mode", mode, "--json", "--top-k", "3", "--max-side", "512",
                  "--concurrency", concurrency)
        assert out.returncode == 0, out.stderr
        results = {json.loads(line)["file"].rsplit("/", 1)[1]: json.loads(line) for line in out.stdout.splitlines()}
        assert list(results) == ["big.jpg", "chelsea.png", "coffee.jpg"]  # as found, whatever finished first
        assert results["big.jpg"]["predictions"][0]["label"] == "espresso"
        assert all(len(r["predictions"]) == 3 for r in results.values())

    out = cli(proxy.url, "classify", str(photos / "coffee.jpg"))
    assert out.returncode == 0 and "espresso" in out.stdout
    out = cli(proxy.url, "classify", str(tmp_path / "missing.jpg"))
    assert out.returncode == 1 and "missing.jpg" in out.stderr

    out = cli(proxy.url, "lookup")
    assert out.stdout.strip() == worker.url.removeprefix("http://")

    out = cli(proxy.url, "bench", str(photos / "coffee.jpg"), "--count", "12", "--concurrency", "3", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["ok"] == 12 and summary["errors"] == 0 and summary["per_second"] > 0
    assert summary["p50_ms"] <= summary["p90_ms"] <= summary["p99_ms"]
    out = cli(proxy.url, "bench", str(photos / "coffee.jpg"), "--duration", "1", "--mode", "proxy")
    assert out.returncode == 0 and "img/s" in out.stdout and "p99" in out.stdout
