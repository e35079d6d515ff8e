"""Headless Chromium for the dashboard's tests and its screenshot script.

Debian's ``chromium`` and ``chromium-driver`` packages (``make deps`` installs them, like
mosquitto) driven by Selenium through the chromedriver on PATH: Selenium is given both
paths, so it never fetches a browser or a driver of its own. Chromium's background
services (updates, sync, metrics) are off: the page under test is the only thing that
makes requests, and the dashboard's Content Security Policy keeps those on the gateway.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

T = TypeVar("T")
ARGS = ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--no-default-browser-check", "--disable-extensions", "--disable-sync",
        "--disable-background-networking", "--disable-component-update",
        "--disable-default-apps", "--metrics-recording-only", "--mute-audio")


def chromium_paths() -> tuple[str, str]:
    """Return (chromium, chromedriver); raise RuntimeError saying how to install them."""
    browser = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        raise RuntimeError("headless Chromium not found; install it with: make deps "
                           "(or apt-get install chromium chromium-driver)")
    return browser, driver


@contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[webdriver.Chrome]:
    """A headless Chromium session (console messages kept for :func:`console_errors`)."""
    browser, driver = chromium_paths()
    options = Options()
    options.binary_location = browser
    for arg in ARGS:
        options.add_argument(arg)
    options.add_argument(f"--window-size={width},{height}")
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium refuses its sandbox as root
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    session = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    try:
        yield session
    finally:
        session.quit()


def table_rows(browser: webdriver.Remote, rows_selector: str) -> list[list[str]]:
    """The text of each ``td`` of the rows ``rows_selector`` matches, read in one script.

    The dashboard re-renders its tables on every poll: rows found first and read cell by
    cell afterwards can be gone by then (a stale element reference, seen under load)."""
    found = browser.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), row => "
        "Array.from(row.querySelectorAll('td'), cell => cell.innerText.trim()))",
        rows_selector)
    return [[str(text) for text in row] for row in found]


def console_errors(session: webdriver.Chrome) -> list[str]:
    """The browser console's errors since the last call (CSP violations, failed scripts)."""
    entries = session.get_log("browser")  # type: ignore[no-untyped-call]
    return [str(e["message"]) for e in entries if e.get("level") == "SEVERE"]


def wait_until(condition: Callable[[], T | None], timeout_s: float = 30.0,
               what: str = "condition") -> T:
    """Poll ``condition`` until it returns a truthy value; return it, or raise AssertionError.

    Exceptions from the page (an element not there yet) count as "not yet".
    """
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = condition()
        except (WebDriverException, KeyError, ValueError) as exc:
            value, last = None, exc
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}"
                         + (f" (last error: {last})" if last else ""))


def full_page_screenshot(session: webdriver.Chrome, path: Path, width: int = 1280) -> None:
    """Resize the window so the whole page fits, and save a PNG to ``path``."""
    for _ in range(3):  # a resize can reflow the page: measure again until it fits
        size = session.execute_script(
            "return [document.documentElement.scrollHeight, window.innerHeight,"
            " window.outerHeight]")
        page, inner, outer = (int(v) for v in size)
        if page <= inner:
            break
        session.set_window_size(width, page + max(0, outer - inner))
    path.parent.mkdir(parents=True, exist_ok=True)
    if not session.save_screenshot(str(path)):
        raise RuntimeError(f"could not write {path}")
