"""End to end: the page of ``multibox serve`` in a real headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by Selenium) against the service on 127.0.0.1, with the zoo's real face and person
detectors on a real photo.

It uploads the photo through the page's file input, waits for the boxes, checks that the number of boxes drawn on
the canvas equals the number of JSON detections at the slider's threshold, moves the slider with the keyboard and
checks that the count changes as the JSON says (with no new request), switches the model, and saves a screenshot
to ``tests/artifacts/serve-page.png``. ``.ci/run`` installs Chromium; without it the test fails, unless
``MULTIBOX_SKIP_BROWSER_TEST=1`` says to skip it.
"""

import os
import shutil
import time
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).parent / "artifacts"


def _need(what: str, hint: str):
    message = f"{what} is missing: {hint}"
    if os.environ.get("MULTIBOX_SKIP_BROWSER_TEST") == "1":
        pytest.skip(message + " (skipped: MULTIBOX_SKIP_BROWSER_TEST=1)")
    pytest.fail(message + " (or set MULTIBOX_SKIP_BROWSER_TEST=1 to skip this test)")


def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        _need("Chromium", "apt-get install chromium chromium-driver (.ci/run does)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _need("selenium", "pip install -e '.[dev]'")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,860", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def _wait(driver, condition, timeout=60.0, what="the page"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    status = driver.find_element("id", "status").text
    raise AssertionError(f"timed out waiting for {what} (status: {status!r})")


def _drawn(driver) -> int:
    return int(driver.find_element("id", "view").get_attribute("data-drawn"))


def _json_count(result: dict, threshold: float) -> int:
    return sum(a["score"] >= threshold for a in result["annotations"])


def test_page_in_headless_chromium():
    try:
        import fastapi  # noqa: F401
        import httpx
    except ImportError:
        _need("FastAPI", "pip install -e '.[dev]'")
    from multibox.demo import default_photo
    from multibox.detector import Detector
    from multibox.serve.app import ServeSettings, create_app, serve_in_thread

    driver = _browser()
    try:
        settings = ServeSettings(models=["face-res10-300", "person-ssdlite-mbv2"], runtime="eager", max_batch=2)
        models = [(n, Detector.from_pretrained(n, runtime="eager", batch_size=2)) for n in settings.models]
        photo = default_photo()
        with serve_in_thread(create_app(models, settings)) as url:
            driver.get(url + "/")
            _wait(driver, lambda: driver.find_element("id", "status").get_attribute("data-state") == "idle"
                  and len(driver.find_elements("css selector", "#model option")) == 2, what="the model list")
            driver.find_element("id", "file").send_keys(str(photo))
            _wait(driver, lambda: driver.find_element("id", "status").get_attribute("data-state") == "done",
                  what="the detections")
            result = driver.execute_script("return window.multibox.result")
            assert result["model"] == "face-res10-300" and result["images"][0]["width"] == 512
            slider = driver.find_element("id", "conf")
            t1 = float(slider.get_attribute("value"))
            assert t1 == 0.5
            n1 = _json_count(result, t1)
            assert n1 >= 1 and _drawn(driver) == n1  # Grace Hopper's face
            assert driver.find_element("id", "count").get_attribute("data-boxes") == str(n1)
            ARTIFACTS.mkdir(exist_ok=True)
            driver.save_screenshot(str(ARTIFACTS / "serve-page.png"))
            print(f"screenshot: {ARTIFACTS / 'serve-page.png'}")

            requests_before = httpx.get(f"{url}/metrics").text.count("\n")
            detect_calls = _detect_calls(httpx.get(f"{url}/metrics").text)
            from selenium.webdriver.common.keys import Keys

            slider.send_keys(Keys.HOME)  # the lowest threshold the service allows
            t2 = float(slider.get_attribute("value"))
            assert t2 == 0.05
            n2 = _json_count(result, t2)
            assert n2 > n1, "the photo has low-scoring boxes too"
            _wait(driver, lambda: _drawn(driver) == n2, 10, "the redraw at the lower threshold")
            for _ in range(30):  # up by steps of 0.01 to 0.35
                slider.send_keys(Keys.ARROW_RIGHT)
            t3 = float(slider.get_attribute("value"))
            assert abs(t3 - 0.35) < 1e-9
            _wait(driver, lambda: _drawn(driver) == _json_count(result, t3), 10, "the redraw at 0.35")
            assert _detect_calls(httpx.get(f"{url}/metrics").text) == detect_calls  # redrawn, not asked again
            assert requests_before > 0
            assert driver.find_element("id", "download").is_enabled()

            from selenium.webdriver.support.ui import Select

            Select(driver.find_element("id", "model")).select_by_value("person-ssdlite-mbv2")
            _wait(driver, lambda: (driver.execute_script("return window.multibox.result") or {}).get("model")
                  == "person-ssdlite-mbv2" and driver.find_element("id", "status").get_attribute("data-state")
                  == "done", what="the person model's detections")
            person = driver.execute_script("return window.multibox.result")
            assert {a["category_name"] for a in person["annotations"]} <= {"person"}
            assert _drawn(driver) == _json_count(person, t3) >= 1
            driver.save_screenshot(str(ARTIFACTS / "serve-page-person.png"))
            logs = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
            assert not logs, logs  # no script errors, nothing blocked by the page's Content-Security-Policy
    finally:
        driver.quit()


def _detect_calls(metrics_text: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith('multibox_requests_total{path="/v1/detect",code="200"}'):
            return float(line.rpartition(" ")[2])
    return 0.0
