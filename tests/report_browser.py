"""The HTML report opened in a real headless Chromium, driven by Selenium, as a reader clicks through it.

Chromium and its driver come from Debian's archive (installed by the test when missing); Selenium is given
the driver's path, so Selenium Manager never tries to download one (there is no network here).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from debian import apt_install

# No GPU, no sandbox (root in a container), and nothing that reaches for the network in the background.
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,1000",
]


def chromium_paths() -> tuple[str, str]:
    """The Chromium binary and chromedriver, installed from Debian's archive when missing."""
    if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
        apt_install(["chromium", "chromium-driver"], what="Chromium")
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert binary and driver, "chromium-driver installed no chromium/chromedriver on PATH"
    return binary, driver


def profile_processes(profile: Path) -> list[int]:
    """Pids of the processes whose command line names ``profile`` (a browser left behind)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(profile).encode() in cmdline:
                pids.append(int(entry.name))
    return pids


@contextmanager
def headless_chromium(profile: Path) -> Iterator:
    """A Selenium Chrome driver on a fresh profile directory, quit (browser and driver) on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never fetch a driver or browser
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


# The report's own result list and each result's content, as the page holds them (its `results` global).
RESULTS_JS = """return Object.fromEntries(Object.entries(results).map(
    ([path, r]) => [path, {mime: r.mime_type, uri: r.data_uri}]))"""
_SHOWN_JS = """const shown = [...document.querySelectorAll('#app img, #app iframe')]
    .filter(e => !e.closest('nav'));
return shown.map(e => [e.tagName, e.src, e.tagName === 'IMG' ? e.complete && e.naturalWidth : 0]);"""
_EYE = "nav table a[iconname='eye']"


def open_subcategory(browser, uri: str, category: str, subcategory: str, n_results: int) -> list:
    """Load the report, click a category and one of its subcategories; the result rows' view buttons."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(uri)
    browser.find_element(By.XPATH, f"//nav//li[normalize-space()='{category}']").click()
    browser.find_element(By.XPATH, f"//nav//li[normalize-space()='{subcategory}']").click()
    # React may render the list after the click returns: wait for the rows (a timeout fails the test)
    WebDriverWait(browser, 10).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, _EYE)) >= n_results)
    return browser.find_elements(By.CSS_SELECTOR, _EYE)


def shown_result(browser) -> tuple[str, str, int]:
    """(tag, src, natural width) of what the content pane shows once it has loaded (an iframe or image)."""
    from selenium.webdriver.support.ui import WebDriverWait

    def loaded(b) -> list:
        return [s for s in b.execute_script(_SHOWN_JS) if s[0] == "IFRAME" or s[2]]

    return tuple(WebDriverWait(browser, 10).until(loaded)[0])
