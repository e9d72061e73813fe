"""Headless Chromium for the explorer's tests (a helper module, not a test file), driven by Selenium.

``chromium()`` starts Debian's ``chromium`` through its ``chromium-driver`` with every background
network feature off and a fresh profile; ``open_page`` loads a file and returns the driver when the
page has set ``window.minivae``. Without Chromium or Selenium it fails with the line that installs them.

Run as a script it regenerates the README's screenshot from a run folder:
``python tests/browser.py RUN docs/explorer.png`` (it writes RUN/explorer.html first).
"""

import contextlib
import os
import pathlib
import shutil
import sys
import tempfile

INSTALL = ('headless Chromium and Selenium are needed: apt-get install -y chromium chromium-driver && '
           'pip install "selenium<4.45"')
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1560,880")
BINARIES = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)


class BrowserMissing(RuntimeError):
    """Chromium, its driver or Selenium is not installed."""


def _which(names):
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


@contextlib.contextmanager
def chromium():
    """A headless Chromium WebDriver with a fresh --user-data-dir, logging the console ("browser")
    and the network events ("performance"); quit and its profile removed on exit."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as error:
        raise BrowserMissing(f"{INSTALL} ({error})") from None
    binary, driver_path = _which(BINARIES), _which(DRIVERS)
    if binary is None or driver_path is None:
        raise BrowserMissing(f"{INSTALL} (found browser: {binary}, driver: {driver_path})")
    profile = tempfile.mkdtemp(prefix="minivae-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in FLAGS + (f"--user-data-dir={profile}",):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def open_page(driver, path):
    """Load the page at ``path`` (a file) and wait until its script has set ``window.minivae``."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(pathlib.Path(path).resolve().as_uri())
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return !!(window.minivae && window.minivae.decode)"))
    return driver


def console_errors(driver):
    """The console messages of level SEVERE (errors, uncaught exceptions, refused loads) so far."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def move_pointer(driver, element_id, dx, dy):
    """Move the pointer to (dx, dy) pixels from the centre of the element ``element_id``."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    element = driver.find_element(By.ID, element_id)
    ActionChains(driver).move_to_element_with_offset(element, dx, dy).perform()


def screenshot(run, target):
    """Write RUN's page, open it, move the pointer over the plane and save the window as ``target``."""
    from minivae.explore import main

    page = os.path.join(run, "explorer.html")
    if main([run, "--out", page, "--quiet"]) != 0:
        raise SystemExit(1)
    with chromium() as driver:
        open_page(driver, page)
        move_pointer(driver, "plane", 60, -40)
        driver.save_screenshot(os.fspath(target))
        errors = console_errors(driver)
    if errors:
        raise SystemExit(f"the page logged errors: {errors}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python tests/browser.py RUN PNG")
    screenshot(sys.argv[1], sys.argv[2])
