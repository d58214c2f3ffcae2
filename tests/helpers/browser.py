"""Headless Debian Chromium through Selenium for the browser tests (no browser is downloaded).

Needs ``apt-get install chromium chromium-driver``; without them a browser test fails with
that hint (deselect the browser tests with ``-m 'not browser'``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def chromium(tmp_path: Path, window: str = "1400,900") -> Iterator[Any]:
    """A headless Chromium WebDriver with its profile and driver log in ``tmp_path``."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail(
            "install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver), "
            "or deselect the browser tests with -m 'not browser'"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--no-proxy-server",
        f"--window-size={window}",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(
        service=Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")), options=options
    )
    try:
        yield driver
    finally:
        driver.quit()
