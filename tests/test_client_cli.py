"""The client CLI against a real proxy and worker, and client-side downscaling."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid

import pytest
from PIL import Image

from client.api import parse_proxy_url
from client.images import downscale, expand_paths
from tests.consul_dev import PROJECT_ROOT
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


@pytest.mark.unit
def test_a_file_pillow_cannot_open_is_sent_as_it_is_for_the_server_to_judge():
    notes = b"a shopping list, not a photo"
    assert downscale(notes, 1024) == notes
    with pytest.raises(ValueError, match="at least 1"):
        downscale(notes, 0)


@pytest.mark.unit
@pytest.mark.parametrize("given, url", [("127.0.0.1:12480", "http://127.0.0.1:12480"), ("localhost", "http://localhost"),
                                        ("https://p.example:443/", "https://p.example:443"),
                                        ("http://[::1]:8", "http://[::1]:8")])
def test_proxy_urls_take_curls_forms(given, url):
    assert parse_proxy_url(given) == url


@pytest.mark.unit
@pytest.mark.parametrize("given", ["ftp://h:1", "http://", "h:port", "127.0.0.1:", "http://h:1/path", "http://h?x=1"])
def test_what_is_not_a_proxy_url_is_refused(given):
    with pytest.raises(ValueError, match="is not a proxy URL"):
        parse_proxy_url(given)


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


# Each ordinary mistake (issue 36's list), as the command a user types; what the one
# line on stderr must say. {photo}, {notes}, {empty} and {missing} are files of the test.
MISTAKES = [
    (["--proxy", "http://127.0.0.1:1", "classify", "{photo}"], "cannot reach the proxy at http://127.0.0.1:1"),
    (["classify", "{photo}", "--max-side", "-1"], "argument --max-side: must be at least 0, got '-1'"),
    (["classify", "{photo}", "--retries", "-1"], "argument --retries: must be at least 0, got '-1'"),
    (["classify", "{photo}", "--top-k", "0"], "k must be an integer from 1 to the model's number of classes, got '0'"),
    (["classify", "{photo}", "--proxy", "ftp://h:1"], "'ftp://h:1' is not a proxy URL"),
    (["lookup", "--model", "nosuch"], "404 model_not_found: model 'nosuch' is not served"),
    (["bench", "{missing}"], "cannot read {missing}: No such file or directory"),
    (["bench", "{notes}", "--count", "3"], "400 not_an_image"),
    (["bench", "{photo}", "--count", "0"], "argument --count: must be at least 1, got '0'"),
    (["bench", "{photo}", "--duration", "0"], "argument --duration: must be more than 0"),
    (["classify", "{notes}"], "{notes}: error: 400 not_an_image"),
    (["classify", "{empty}"], "no image files in {empty}"),
    (["classify", "{photo}", "--top-k", "5000"], "k must be an integer from 1 to 1000, got '5000'"),
]


@pytest.mark.system
def test_each_mistake_is_one_line_on_stderr_and_a_non_zero_exit(start_worker, start_proxy, coffee_jpeg, tmp_path):
    service = f"classifier-{uuid.uuid4().hex[:6]}"
    start_worker("--service-name", service)
    proxy = start_proxy("--service-name", service)
    wait_for(lambda: proxy.workers()["live"] == 1, what="live worker")
    files = {"photo": tmp_path / "coffee.jpg", "notes": tmp_path / "notes.txt", "empty": tmp_path / "empty",
             "missing": tmp_path / "missing.jpg"}
    files["photo"].write_bytes(coffee_jpeg)
    files["notes"].write_text("a shopping list, not a photo\n")
    files["empty"].mkdir()
    names = {k: str(v) for k, v in files.items()}
    for argv, said in MISTAKES:
        argv = [a.format(**names) for a in argv]
        if "--proxy" not in argv:
            argv = ["--proxy", proxy.url, *argv]
        done = subprocess.run([sys.executable, "-m", "client", *argv], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=60)
        lines = done.stderr.strip().splitlines()
        assert done.returncode != 0, (argv, done.stdout)
        assert len(lines) == 1 and "Traceback" not in done.stderr, (argv, done.stderr)
        assert said.format(**names) in lines[0], (argv, lines[0])


@pytest.mark.system
def test_the_proxy_may_be_given_without_a_scheme_as_curl_takes_it(start_worker, start_proxy, coffee_jpeg,
                                                                   tmp_path):
    service = f"classifier-{uuid.uuid4().hex[:6]}"
    start_worker("--service-name", service)
    proxy = start_proxy("--service-name", service)
    wait_for(lambda: proxy.workers()["live"] == 1, what="live worker")
    photo = tmp_path / "coffee.jpg"
    photo.write_bytes(coffee_jpeg)
    bare = proxy.url.removeprefix("http://")  # 127.0.0.1:PORT
    done = subprocess.run([sys.executable, "-m", "image_cluster", "classify", str(photo), "--proxy", bare,
                           "--top-k", "1"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "espresso" in done.stdout, done.stderr
