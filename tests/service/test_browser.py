"""The page at / and the offline /docs in a real headless Chromium (Debian's chromium + chromium-driver).

Everything but the service is unreachable from the browser (every other host resolves to nothing and a
dead proxy takes all other traffic), so a page that needed a CDN would fail here. Screenshots go into
the test's tmp output folder (printed; kept by pytest under its basetemp).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.conftest import API_KEY, Server

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or shutil.which("chromium-browser") or "")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", shutil.which("chromedriver") or "")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
                allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 "--disable-sync", "--disable-extensions", "--window-size=1280,900",
                 # offline: every host but loopback resolves to nothing, everything else hits a dead proxy
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                 "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>;127.0.0.1"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def only_loaded_from(driver: Any, origin: str) -> list[str]:
    """URLs the page fetched from anywhere but ``origin`` (should be none)."""
    urls = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    return [u for u in urls if not u.startswith(origin) and not u.startswith(("blob:", "data:"))]


def test_page_classifies_a_photo(browser: Any, server: Server, photos: dict[str, bytes], tmp_path: Path) -> None:
    photo = tmp_path / "chelsea.jpg"
    photo.write_bytes(photos["chelsea.jpg"])
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a png")
    wait = WebDriverWait(browser, 60)

    browser.get(server.url + "/")
    assert browser.title.startswith("imgserve")
    key = browser.find_element(By.ID, "api_key")  # the server in this test needs an API key
    key.send_keys(API_KEY)
    browser.find_element(By.ID, "top_k").click()  # blur: the page stores the key and lists the models
    wait.until(lambda d: "resnet18" in d.find_element(By.ID, "model").text)
    assert "random weights" in browser.find_element(By.ID, "model").text
    top_k = browser.find_element(By.ID, "top_k")
    top_k.clear()
    top_k.send_keys("3")
    warning = browser.find_element(By.ID, "warning")
    assert warning.is_displayed() and "random weights" in warning.text

    browser.find_element(By.ID, "files").send_keys(str(photo))
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, '.card[data-filename="chelsea.jpg"] .pred')))
    card = browser.find_element(By.CSS_SELECTOR, '.card[data-filename="chelsea.jpg"]')
    rendered = [(p.find_element(By.CLASS_NAME, "label").text, p.find_element(By.CLASS_NAME, "score").text)
                for p in card.find_elements(By.CLASS_NAME, "pred")]
    with server.client() as c:
        expected = c.post("/classify", content=photos["chelsea.jpg"], params={"top_k": 3},
                          headers={"Content-Type": "image/jpeg"}).json()["results"][0]["predictions"]
    assert rendered == [(p["label"], f"{p['score'] * 100:.1f}%") for p in expected]
    timing = card.find_element(By.CLASS_NAME, "timing").text
    assert timing.startswith("resnet18 v1") and "queue" in timing and "infer" in timing and "ms" in timing
    thumb = card.find_element(By.TAG_NAME, "img")
    assert thumb.get_attribute("alt") == "thumbnail of chelsea.jpg"
    assert browser.execute_script("return arguments[0].naturalWidth", thumb) > 0

    browser.find_element(By.ID, "files").send_keys(str(bad))  # a bad file shows the service's reason
    err = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, '.card[data-filename="broken.png"] .error')))
    assert err.text.startswith("HTTP 400:") and "(bad_image)" in err.text
    assert only_loaded_from(browser, server.url) == []
    shot = tmp_path / "index.png"
    browser.save_screenshot(str(shot))
    print(f"screenshot: {shot}")


@pytest.mark.parametrize(("path", "ready"), [("/docs", ".swagger-ui .opblock"), ("/redoc", "[data-section-id]")])
def test_docs_render_offline(browser: Any, server: Server, tmp_path: Path, path: str, ready: str) -> None:
    browser.get(server.url + path)
    WebDriverWait(browser, 60).until(ec.presence_of_element_located((By.CSS_SELECTOR, ready)))
    text = browser.find_element(By.TAG_NAME, "body").text
    assert "imgserve" in text and "/classify" in text
    # ReDoc's "powered by" logo points at cdn.redoc.ly: a cosmetic image, refused by the page's CSP
    assert only_loaded_from(browser, server.url) in ([], ["https://cdn.redoc.ly/redoc/logo-mini.svg"])
    assert "img-src 'self'" in httpx.get(server.url + path).headers["content-security-policy"]
    assert httpx.get(server.url + "/openapi.json").status_code == 200  # open without the API key
    shot = tmp_path / f"{path.strip('/')}.png"
    browser.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
