"""The chat page in a real browser: Debian's headless Chromium driven by Playwright.

No browser is downloaded (`playwright install` is never run): .ci/run installs `chromium` with
apt-get. Without it the test is skipped on a developer's machine and fails under CI=true.
Screenshots go to $CHITCHAT_SCREENSHOTS when set, else to the test's tmp_path.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from chitchat.serve.app import create_app, running_server
from test_inference import service, tiny_model  # noqa: F401  (module-scoped fixtures)

CHROMIUM = os.environ.get("CHITCHAT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def sync_playwright():
    """Playwright's sync API, or a skip (a failure in CI) saying what is missing; checked before the model is built."""
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append("playwright (pip install -e '.[dev]')")
    if missing:
        message = "the browser test needs " + " and ".join(missing)
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + "; CI must run it, so this fails instead of skipping", pytrace=False)
        pytest.skip(message + " (skipped outside CI)")
    return sync_playwright


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("CHITCHAT_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_chat_page_in_chromium(sync_playwright, service, shots):
    with running_server(create_app(service)) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 390, "height": 760}, device_scale_factor=1, is_mobile=True,
                                    has_touch=True)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url + "/")
            page.wait_for_selector("body[data-ready=true]", timeout=15_000)
            options = page.locator("#category option").all_inner_texts()
            assert options == ["any", "Авто, Мото", "Еда, Кулинария", "Юмор"]

            page.select_option("#category", label="Юмор")
            page.fill("#question", "Как дела?")
            page.click("#send")
            answer = page.wait_for_selector(".bubble.bot:not(.loading)", timeout=30_000)
            assert answer.evaluate("el => el.firstChild.textContent") == "Нормально, а у тебя?"
            assert page.locator(".bubble.user").inner_text() == "Как дела?"
            assert "Юмор" in answer.inner_text()  # the meta line names the category

            # a phone-sized screen: nothing sticks out sideways
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
            page.screenshot(path=str(shots / "chat_phone.png"))

            # decoding controls: beam search with 3 answers lists the other two under the best one
            page.click("#settings summary")
            page.select_option("#strategy", "beam")
            page.fill("#n", "3")
            page.fill("#question", "Что приготовить на ужин?")
            page.keyboard.press("Enter")  # Enter sends, Shift+Enter would add a line
            page.wait_for_function("document.querySelectorAll('.bubble.bot:not(.loading)').length === 2",
                                   timeout=30_000)
            assert page.locator(".bubble.bot").nth(1).locator(".alts li").count() == 2

            # a value over a cap: the server's 422 is shown as one readable line, no answer bubble
            page.fill("#max_new_tokens", "500")
            page.fill("#question", "Как дела?")
            page.click("#send")
            error = page.wait_for_selector("#error:not([hidden])", timeout=30_000)
            assert "max_new_tokens" in error.inner_text() and "128" in error.inner_text()
            assert page.locator(".bubble.bot").count() == 2
            page.set_viewport_size({"width": 1024, "height": 760})
            page.screenshot(path=str(shots / "chat_desktop.png"))
            assert not errors, errors
        finally:
            browser.close()
    assert (shots / "chat_phone.png").stat().st_size > 5_000
