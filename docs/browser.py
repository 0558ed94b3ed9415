"""Headless Chromium (Debian's `chromium` and `chromium-driver` packages) driven by
Selenium, for the demo page's test and the docs screenshot `docs/demo.png`.

    with chromium() as driver:
        open_demo(driver, url); ask_vqa(driver, "what colour is the circle ?", ["red", "blue"])
        driver.save_screenshot("demo.png")

Selenium is told where the browser and its driver are, so it never looks for (or
downloads) a browser of its own.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager

# Flags that work on these machines: no sandbox (root), no GPU, no network of Chromium's own.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]
WAIT_S = 60  # a model call on a busy 2-core machine can take seconds


def find() -> tuple[str, str] | None:
    """(browser, driver) paths, or None if either is missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@contextmanager
def chromium(width: int = 1280, height: int = 1100):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never download anything
    paths = find()
    if paths is None:
        raise RuntimeError("chromium and chromedriver are not installed (apt-get install -y chromium chromium-driver)")
    with tempfile.TemporaryDirectory(prefix="unitrans-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = paths[0]
        for flag in FLAGS + [f"--user-data-dir={profile}", f"--window-size={width},{height}"]:
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(executable_path=paths[1]))
        try:
            yield driver
        finally:
            driver.quit()


def wait(driver, condition, seconds: float = WAIT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.1).until(condition)


def open_demo(driver, url: str) -> None:
    """Load the page and wait until it has read /readyz, /adapters and the examples."""
    driver.get(url + "/")
    wait(driver, lambda d: d.execute_script("return document.body.dataset.ready") == "yes"
         and len(d.find_elements("css selector", "#examples .thumb")) > 0)


def choose(driver, task: str, image: str | None = None, adapters: list[str] | None = None) -> None:
    """Pick a task, an example image (its file name) and adapters ("" = task default)."""
    driver.find_element("id", f"task-{task}").click()
    if image is not None:
        driver.find_element("css selector", f'#examples .thumb[data-id="{image}"]').click()
    if adapters is not None:
        for box in driver.find_elements("css selector", "input[name=adapter]"):
            if box.is_selected() != (box.get_attribute("value") in adapters):
                box.click()


def run(driver) -> str:
    """Click Run, wait for the results, return their text (raises with the page's error)."""
    driver.find_element("id", "run").click()
    wait(driver, lambda d: d.find_element("id", "results").get_attribute("data-state") in ("done", "error"))
    results = driver.find_element("id", "results")
    if results.get_attribute("data-state") == "error":
        raise AssertionError(driver.find_element("id", "error").text)
    return results.text


def ask_vqa(driver, question: str, candidates: list[str] | None = None) -> str:
    for field, value in (("question", question), ("candidates", ", ".join(candidates or []))):
        box = driver.find_element("id", field)
        box.clear()
        box.send_keys(value)
    return run(driver)
