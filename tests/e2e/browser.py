"""Debian's chromium, driven headless by playwright, logged in to the embedded Airflow.

playwright's own browser downloads are not reachable here, so it is pointed at the
system browser that ``scripts/test_tools.sh`` installs. Screenshots go to
``results/test-artifacts/`` (or ``$RIVERDELTA_TEST_ARTIFACTS``) for CI to keep.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from riverdelta.config.settings import PROJECT_ROOT

ARTIFACTS = Path(
    os.environ.get("RIVERDELTA_TEST_ARTIFACTS", PROJECT_ROOT / "results" / "test-artifacts")
)
TIMEOUT_MS = 120_000  # a shared 2-core machine under a full test run is slow to paint


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        raise RuntimeError("chromium not found: `make setup-test` installs Debian's chromium")
    return found


@contextmanager
def logged_in(base_url: str, user: str, password: str, next_path: str) -> Iterator[Any]:
    """A page logged in through Airflow's own login form, then at ``next_path``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium(), headless=True, args=["--no-sandbox"]
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"{base_url}/auth/login?next={base_url}{next_path}")
            page.fill("input[name=username]", user)
            page.fill("input[name=password]", password)
            page.click("button[type=submit]")
            page.wait_for_url(re.compile(rf"^[^?]*{re.escape(next_path)}$"))
            yield page
        finally:
            browser.close()


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), timeout=TIMEOUT_MS)
    return path
