"""The proxy's /status page in a real headless browser (Debian's Chromium, driven by
Selenium through Debian's chromedriver; nothing is downloaded). The page must list the
live workers, pick up a new one by itself, and classify an uploaded photo. A screenshot is
kept in test-artifacts/status-page.png."""

from __future__ import annotations

import shutil
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

    def worker_rows():
        return {row.get_attribute("data-worker") for row in browser.find_elements(By.CSS_SELECTOR, "#workers tbody tr")}

    browser.get(proxy.url + "/status")
    wait.until(lambda b: worker_rows() == {first.worker_id})
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-worker="{first.worker_id}"]')
    assert "live" in row.text and "efficientnet_lite0" in row.text

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
    browser.save_screenshot(str(artifacts_dir / "status-page.png"))
