"""Browser-test helpers: start the real app on a free loopback port with its own PREFLAB_HOME, and drive Debian's
chromium through Playwright."""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import pytest

from bench.app_process import free_port, running_app  # noqa: F401 - the tests start the app through these

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
# Every screenshot a browser test takes lands here (the README's pictures are taken this way).
SHOTS = Path(os.environ.get("PREFLAB_SCREENSHOTS", "/tmp/preflab-screenshots"))


def need_chromium():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("CI must have Debian chromium installed (.ci/run installs it).")
        pytest.skip("Debian chromium is not installed (apt-get install chromium chromium-driver).")


@contextlib.contextmanager
def browser_page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(20000)
        try:
            yield page
        except Exception:
            with contextlib.suppress(Exception):          # what the page showed when the test failed
                print(f"failure screenshot: {shot(page, f'failed-{int(time.time())}')}")
                print("page text at the failure:\n" + page.inner_text("body")[-3000:])
            raise
        finally:
            browser.close()


def shot(page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def doc_shot(page, name: str, top: str | None = None, bottom: str | None = None) -> Path | None:
    """The README's screenshots, into $PREFLAB_DOC_SHOTS when set (`PREFLAB_DOC_SHOTS=docs ./run.sh test -m
    browser` refreshes docs/*.png); otherwise nothing. What the window shows, or the page from element `top`
    down to the end of element `bottom`."""
    folder = os.environ.get("PREFLAB_DOC_SHOTS")
    if not folder:
        return None
    path = Path(folder) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    if top and bottom:
        y0, y1 = page.evaluate("([a, b]) => [a, b].map((s, i) => { const r = document.querySelector(s)"
                               ".getBoundingClientRect(); return window.scrollY + (i ? r.bottom : r.top); })",
                               [top, bottom])
        width = page.viewport_size["width"]
        page.screenshot(path=str(path), full_page=True, clip={"x": 0, "y": y0 - 8, "width": width,
                                                               "height": y1 - y0 + 16})
    else:
        page.screenshot(path=str(path))
    from PIL import Image     # small enough to commit: 900 px wide, 128 colours

    image = Image.open(path)
    image = image.resize((900, round(image.height * 900 / image.width)), Image.LANCZOS)
    image.quantize(colors=128).save(path, optimize=True)
    return path


def login(page, url: str, name: str, password: str) -> None:
    page.goto(url)
    page.get_by_label("username").fill(name)
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name="Login").click()
    page.wait_for_selector("#label-start")


def choose(page, dropdown: str, text: str, tries: int = 5) -> None:
    """Pick the option holding `text` in the Gradio dropdown `dropdown` (a CSS selector of its block), as a person
    does: type into it and click the option, until the box holds it. The box may already show a value (typing after
    it would search for both), so it is emptied first; and a page that refreshes itself on a timer may put back the
    value it had when its refresh began, so the pick is made again until it holds."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    box = page.locator(f"{dropdown} input")
    for _ in range(tries):
        box.click()
        box.fill(text)
        option = page.locator("ul[role=listbox] li", has_text=text).first
        option.wait_for()
        option.click()
        try:
            page.wait_for_function(f"() => document.querySelector('{dropdown} input').value.includes('{text}')",
                                   timeout=3000)
            page.wait_for_timeout(2500)          # one timer refresh later it still holds
            if text in box.input_value():
                return
        except PlaywrightTimeout:
            pass
    raise AssertionError(f"the dropdown {dropdown} would not keep {text!r}")
