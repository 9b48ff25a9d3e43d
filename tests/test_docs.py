"""The documentation: the site builds with `mkdocs build --strict` (every link, anchor and
page in the nav), the README stays a front page, no page repeats another, and every
example on every page prints what the page shows, against a real cluster."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT
from tests.doc_examples import matches, page_examples, run_console, run_pycon
from tests.processes import ProxyProcess, WorkerProcess, serve_model

DOCS = PROJECT_ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))


@pytest.mark.unit
def test_the_site_builds_strictly(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert done.returncode == 0, done.stderr
    home = (tmp_path / "site" / "index.html").read_text()
    assert "scripts/cluster up" in home  # the front page is the README
    errors = (tmp_path / "site" / "operations" / "errors" / "index.html").read_text()
    assert "model_not_found" in errors and "generated:" not in errors  # the catalog was rendered
    performance = (tmp_path / "site" / "performance" / "index.html").read_text()
    assert "img/s over mosec" in performance and "generated:" not in performance


@pytest.mark.unit
def test_the_readme_is_a_front_page():
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert "scripts/cluster up" in readme and "scripts/test" in readme
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (PROJECT_ROOT / link).exists(), link


def paragraphs(text: str) -> set[str]:
    """Prose paragraphs long enough that a second copy is a repetition, not a phrase."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return {" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if len(p) > 160 and not p.startswith("|")}


@pytest.mark.unit
def test_no_page_repeats_another():
    seen: dict[str, str] = {}
    repeated = []
    for page in [PROJECT_ROOT / "README.md", *PAGES]:
        for paragraph in paragraphs(page.read_text()):
            if paragraph in seen:
                repeated.append((seen[paragraph], page.name, paragraph[:80]))
            seen.setdefault(paragraph, page.name)
    assert len(seen) > 100  # the pages were read
    assert repeated == []


@pytest.mark.unit
@pytest.mark.parametrize("want, got, same", [
    ("0.943  espresso", "0.946   espresso\n", True),  # fp16's scores, other spacing
    ("0.943  espresso", "0.843  espresso", False),
    ("index 967", "index 968", False),  # integers are exact
    ("answered 127.0.0.1:35135 ...", "answered 127.0.0.1:41000 in 3 ms", True),
    ("404 model_not_found: ...", "400 not_an_image: the data is not an image", False),
    ("", "something", False),
])
def test_the_example_checker(want, got, same):
    assert matches(want, got) is same


@pytest.fixture(scope="module")
def docs_cluster(consul_agent, artifacts_dir, built_model, tmp_path_factory):
    """A worker and a proxy on the default model, and a folder holding what the pages'
    examples name: photo.jpg (coffee), notes.txt."""
    worker = WorkerProcess(consul_agent.address, *serve_model(built_model),
                           log_path=artifacts_dir / "docs-worker.log").wait_ready()
    proxy = ProxyProcess(consul_agent.address, log_path=artifacts_dir / "docs-proxy.log").wait_live(1)
    here = tmp_path_factory.mktemp("docs")
    (here / "photo.jpg").write_bytes((PROJECT_ROOT / ".cache" / "photos" / "coffee.jpg").read_bytes())
    (here / "notes.txt").write_text("not a photo\n")
    try:
        yield worker, proxy, here
    finally:
        proxy.stop()
        worker.stop()


EXAMPLE_PAGES = [p for p in PAGES if page_examples(p, DOCS)]


@pytest.mark.unit
def test_some_pages_have_examples():
    assert len(EXAMPLE_PAGES) >= 3


@pytest.mark.system
@pytest.mark.parametrize("page", EXAMPLE_PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_the_pages_examples_print_what_they_show(docs_cluster, page):
    worker, proxy, here = docs_cluster
    grpc_port = proxy.grpc.rsplit(":", 1)[1]

    def substitute(source: str) -> str:
        source = source.replace("localhost:12481", f"127.0.0.1:{grpc_port}")
        return source.replace("localhost:12480", f"127.0.0.1:{proxy.port}")

    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               IMAGE_CLUSTER_PROXY=proxy.url, NO_COLOR="1")
    cwd = os.getcwd()
    os.chdir(here)  # the pycon examples open photo.jpg
    try:
        globs: dict = {}
        failures = [run_console(e, here, env, substitute) if e.kind == "console" else run_pycon(e, globs, substitute)
                    for e in page_examples(page, DOCS)]
    finally:
        os.chdir(cwd)
    failed = [f for f in failures if f]
    assert not failed, "\n\n".join(failed)
