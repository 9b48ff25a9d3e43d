"""The proxy's /status page in a real headless browser (Debian's Chromium, driven by
Selenium through Debian's chromedriver; nothing is downloaded). The page must list the
live workers, pick up a new one by itself, classify an uploaded photo, count a worker's p2p
answers (which this proxy never sees) apart from what it forwarded, and draw its charts. A
screenshot is kept in test-artifacts/status-page.png."""

from __future__ import annotations

import shutil
import urllib.request
import uuid

import pytest

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [pytest.mark.system, pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs Debian's chromium and chromium-driver (scripts/setup installs them as root)")]


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,900", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_status_page(browser, start_worker, start_proxy, tmp_path, coffee_jpeg, artifacts_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    service = f"classifier-{uuid.uuid4().hex[:6]}"
    first = start_worker("--service-name", service)
    proxy = start_proxy("--service-name", service).wait_live(1)
    wait = WebDriverWait(browser, 20)

    def table() -> dict[str, list[str]]:
        """The workers table, read in one script: the page rebuilds it every 2 s, and
        elements found one call and read the next may be gone by then."""
        return dict(browser.execute_script(
            "return [...document.querySelectorAll('#workers tbody tr')]"
            ".map(r => [r.dataset.worker, [...r.cells].map(c => c.textContent)])"))

    def worker_rows():
        return set(table())

    browser.get(proxy.url + "/status")
    wait.until(lambda b: worker_rows() == {first.worker_id})
    row = " ".join(table()[first.worker_id])
    assert "live" in row and "efficientnet_lite0" in row

    # A new worker appears by itself (the page refreshes; no reload).
    second = start_worker("--service-name", service)
    wait.until(lambda b: worker_rows() == {first.worker_id, second.worker_id})

    # Upload a photo through the form: top-5 and the worker that answered.
    photo = tmp_path / "coffee.jpg"
    photo.write_bytes(coffee_jpeg)
    browser.find_element(By.ID, "photo").send_keys(str(photo))
    browser.find_element(By.ID, "submit").click()
    top5 = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#top5 li"))
    assert len(top5) == 5 and top5[0].text.startswith("espresso")
    served_by = browser.find_element(By.ID, "served-by").text
    assert any(w.worker_id in served_by for w in (first, second))
    # Recent traffic reflects the upload.
    wait.until(lambda b: b.find_element(By.ID, "p50").text.endswith("ms"))

    # p2p answers (posted straight to a worker: this proxy never sees them) show in the
    # worker's own count, apart from what this proxy forwarded.
    for _ in range(P2P_POSTS):
        post_photo(first.url, coffee_jpeg)

    def counts(worker_id: str) -> tuple[int, int] | None:
        cells = table().get(worker_id, [])
        try:
            return int(cells[5]), int(cells[6])  # forwarded by this proxy, answered (all clients)
        except (IndexError, ValueError):  # not drawn yet, or "–" before the first answer
            return None

    forwarded, answered = wait.until(lambda b: (c := counts(first.worker_id)) and c[1] >= P2P_POSTS and c)
    assert answered >= forwarded + P2P_POSTS

    # The charts draw from the samples the page keeps: requests/s, latency, and each worker's load.
    def drawn(canvas_id: str) -> int:
        return int(browser.find_element(By.ID, canvas_id).get_attribute("data-points") or 0)

    wait.until(lambda b: min(drawn("chart-rate"), drawn("chart-latency"), drawn("chart-load")) >= 2)
    ink = browser.execute_script(
        "const c = document.getElementById('chart-rate');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n;")
    assert ink > 100  # pixels drawn, not just an attribute set
    legend = browser.find_element(By.ID, "load-legend").text
    assert first.worker_id in legend and second.worker_id in legend
    browser.save_screenshot(str(artifacts_dir / "status-page.png"))


P2P_POSTS = 6


def post_photo(worker_url: str, photo: bytes) -> None:
    """POST straight to a worker, as a p2p client does after its lookup."""
    request = urllib.request.Request(worker_url + "/", data=photo, headers={"Content-Type": "image/jpeg"})
    with urllib.request.urlopen(request, timeout=30) as r:
        assert r.status == 200
