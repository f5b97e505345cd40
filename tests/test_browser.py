"""The chat page in a real browser: Debian's headless Chromium driven by Playwright.

The page streams its answers from /v1/chat/completions (SSE read with fetch + getReader), has a
Stop button while an answer streams, and asks for the API key when the server wants one.

No browser is downloaded (`playwright install` is never run): .ci/run installs `chromium` with
apt-get. Without it the test is skipped on a developer's machine and fails under CI=true.
Screenshots go to $CHITCHAT_SCREENSHOTS when set, else to the test's tmp_path.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from chitchat.serve.app import create_app, running_server
from test_inference import service, tiny_model  # noqa: F401  (module-scoped fixtures)
from test_openai_api import SlowService, metric

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
            answer = page.wait_for_selector(".bubble.bot.done", timeout=30_000)
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
            page.wait_for_function("document.querySelectorAll('.bubble.bot.done').length === 2",
                                   timeout=30_000)
            assert page.locator(".bubble.bot").nth(1).locator(".alts li").count() == 2

            # a value over a cap: the server's 400 is shown as one readable line, no answer bubble
            page.fill("#max_new_tokens", "500")
            page.fill("#question", "Как дела?")
            page.click("#send")
            error = page.wait_for_selector("#error:not([hidden])", timeout=30_000)
            assert "max_tokens" in error.inner_text() and "128" in error.inner_text()  # the /v1 field
            assert page.locator(".bubble.bot").count() == 2
            page.set_viewport_size({"width": 1024, "height": 760})
            page.screenshot(path=str(shots / "chat_desktop.png"))
            assert not errors, errors
        finally:
            browser.close()
    assert (shots / "chat_phone.png").stat().st_size > 5_000


@pytest.fixture(scope="module")
def chromium(sync_playwright):
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_chat(browser, url: str, ready: bool = True):
    """A fresh page (its own sessionStorage) on the chat; its uncaught errors in page.errors_seen,
    the JSON bodies it posts to /v1/chat/completions (with their headers) in page.sent."""
    page = browser.new_context(viewport={"width": 1024, "height": 760}).new_page()
    page.errors_seen, page.sent = [], []
    page.on("pageerror", lambda exc: page.errors_seen.append(str(exc)))
    page.on("request", lambda r: page.sent.append((r.post_data_json, r.headers))
            if r.url.endswith("/v1/chat/completions") else None)
    page.goto(url + "/")
    if ready:
        page.wait_for_selector("body[data-ready=true]", timeout=15_000)
    return page


def send(page, question: str) -> None:
    page.fill("#question", question)
    page.click("#send")


def bot_texts(page, nth: int = -1) -> list[str]:
    """The answers in one bot bubble: the best one, then each listed alternative."""
    return page.evaluate("""nth => {
        const all = document.querySelectorAll('.bubble.bot');
        const el = all[nth < 0 ? all.length + nth : nth];
        return [el.querySelector('.text').textContent, ...[...el.querySelectorAll('.alts li')].map(li => li.textContent)];
    }""", nth)


def test_streamed_answers_equal_the_api_answers(chromium, service):
    """Greedy: the streamed text is /api/answer's answer, history and category going as /v1 fields;
    nucleus with n = 2 shows both choices, equal to the same request answered whole."""
    with running_server(create_app(service)) as url:
        page = open_chat(chromium, url)
        page.select_option("#category", label="Юмор")
        send(page, "Как дела?")
        page.wait_for_selector(".bubble.bot.done", timeout=30_000)
        api = httpx.post(url + "/api/answer", json={"question": "Как дела?", "category": "Юмор"}, timeout=60).json()
        assert bot_texts(page) == [api["answers"][0]["text"]] == ["Нормально, а у тебя?"]
        body, _ = page.sent[-1]
        assert body["stream"] is True and body["category"] == "Юмор" and body["strategy"] == "greedy"
        assert body["messages"] == [{"role": "user", "content": "Как дела?"}]
        assert body["max_tokens"] == 40 and "n" not in body and "max_new_tokens" not in body

        # the second question carries the first turn as user/assistant messages
        send(page, "Как испечь блины?")
        page.wait_for_function("document.querySelectorAll('.bubble.bot.done').length === 2", timeout=30_000)
        history = ["Как дела?", "Нормально, а у тебя?"]
        api = httpx.post(url + "/api/answer", json={"question": "Как испечь блины?", "category": "Юмор",
                                                    "history": history}, timeout=60).json()
        assert bot_texts(page) == [api["answers"][0]["text"]]
        assert page.sent[-1][0]["messages"] == [{"role": "user", "content": history[0]},
                                                {"role": "assistant", "content": history[1]},
                                                {"role": "user", "content": "Как испечь блины?"}]

        # sampled, two choices streamed interleaved: each lands in its own place
        page.click("#settings summary")
        page.select_option("#strategy", "nucleus")
        page.fill("#n", "2")
        page.fill("#seed", "7")
        page.fill("#temperature", "1.5")
        page.fill("#max_new_tokens", "12")
        send(page, "Что приготовить на ужин?")
        page.wait_for_function("document.querySelectorAll('.bubble.bot.done').length === 3", timeout=30_000)
        body, _ = page.sent[-1]
        assert {k: body[k] for k in ("strategy", "n", "seed", "temperature", "max_tokens")} == {
            "strategy": "nucleus", "n": 2, "seed": 7, "temperature": 1.5, "max_tokens": 12}
        whole = httpx.post(url + "/v1/chat/completions", json={**body, "stream": False}, timeout=60).json()
        texts = [c["message"]["content"] or "(empty answer)" for c in whole["choices"]]
        assert bot_texts(page) == texts and len(texts) == 2
        assert not page.errors_seen, page.errors_seen


def test_answer_grows_and_stop_stops_it(chromium, service):
    """Each token pauses: the bubble shows a prefix that grows; Stop ends the generation on the
    server (one cancelled generation), keeps the partial text marked stopped, and the page goes on."""
    question = "Как испечь блины?"
    final = service.reply(question).answers[0].text
    assert len(final) > 20
    with running_server(create_app(SlowService(service, 0.2))) as url:
        page = open_chat(chromium, url)
        page.evaluate("""() => {
            window.seen = [];
            new MutationObserver(() => {
                const el = document.querySelector('.bubble.bot .text');
                const text = el ? el.textContent : '';
                if (text && window.seen[window.seen.length - 1] !== text) window.seen.push(text);
            }).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});
        }""")
        send(page, question)
        page.wait_for_selector("#stop:not([hidden])", timeout=5_000)
        assert page.locator("#send").is_hidden()
        page.wait_for_function("window.seen.length >= 2", timeout=30_000)  # two steps in, still going
        page.click("#stop")
        page.wait_for_selector(".bubble.bot.stopped", timeout=10_000)
        seen = page.evaluate("window.seen")
        assert len(seen) >= 2 and all(final.startswith(t) for t in seen), (seen, final)
        partial = bot_texts(page)[0]
        assert partial and len(partial) < len(final) and final.startswith(partial), (partial, final)
        time.sleep(1.0)  # five more tokens' time: nothing more arrives
        assert bot_texts(page)[0] == partial and page.evaluate("window.seen.length") == len(seen)
        assert "(stopped)" in page.locator(".bubble.bot").inner_text()
        assert page.locator("#stop").is_hidden() and page.locator("#send").is_enabled()
        assert page.locator("#error").is_hidden()
        deadline = time.monotonic() + 10
        while metric(url, "chitchat_generations_cancelled_total") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metric(url, "chitchat_generations_cancelled_total") == 1
        assert metric(url, "chitchat_generated_tokens_total") < 14  # far short of the whole answer
        assert httpx.get(url + "/health").json()["busy"] is False

        # the page goes on: the next answer streams whole, the stopped text as its history
        send(page, "Как дела?")
        page.wait_for_selector(".bubble.bot.done", timeout=30_000)
        assert bot_texts(page) == [service.reply("Как дела?", history=[question, partial]).answers[0].text]
        assert [m["content"] for m in page.sent[-1][0]["messages"]] == [question, partial, "Как дела?"]
        assert metric(url, "chitchat_generations_cancelled_total") == 1
        assert not page.errors_seen, page.errors_seen


def test_the_page_asks_for_the_key_keeps_it_for_the_tab_and_asks_again_when_wrong(chromium, service):
    with running_server(create_app(service, api_key="k1")) as url:
        page = open_chat(chromium, url, ready=False)
        page.wait_for_selector("#keyform:not([hidden])", timeout=15_000)
        assert "missing API key" in page.inner_text("#key-message")
        page.fill("#apikey", "wrong")
        page.press("#apikey", "Enter")
        page.wait_for_function("document.getElementById('key-message').textContent === 'wrong API key'"
                               " && !document.getElementById('keyform').hidden", timeout=15_000)
        page.fill("#apikey", "k1")
        page.press("#apikey", "Enter")
        page.wait_for_selector("body[data-ready=true]", timeout=15_000)
        assert page.locator("#keyform").is_hidden() and page.locator("#category option").count() == 4
        assert page.evaluate("sessionStorage.getItem('chitchat.api_key')") == "k1"
        assert page.evaluate("localStorage.length") == 0

        send(page, "Как дела?")
        page.wait_for_selector(".bubble.bot.done", timeout=30_000)
        assert bot_texts(page) == [service.reply("Как дела?").answers[0].text]
        assert page.sent[-1][1]["authorization"] == "Bearer k1"

        page.reload()  # the same tab: the key is still there, nothing is asked
        page.wait_for_selector("body[data-ready=true]", timeout=15_000)
        assert page.locator("#keyform").is_hidden()
        assert not page.errors_seen, page.errors_seen

        other = open_chat(chromium, url, ready=False)  # another tab asks; cancelling says why in one line
        other.wait_for_selector("#keyform:not([hidden])", timeout=15_000)
        other.click("#key-cancel")
        error = other.wait_for_selector("#error:not([hidden])", timeout=15_000)
        assert "missing API key" in error.inner_text() and other.locator("#keyform").is_hidden()


HOSTILE = '<img src=x onerror="window.pwned=1"><b>bold</b>'


class HostileService:
    """The real service, but every streamed answer starts with markup, split between two deltas."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def answer_batch(self, questions, categories=None, decoding=None, histories=None, streams=None):
        for stream in streams or ():
            if stream is not None and stream.sink is not None:
                stream.sink = self._hostile(stream.sink)
        return self.inner.answer_batch(questions, categories, decoding, histories, streams)

    @staticmethod
    def _hostile(sink):
        started = set()

        def wrapped(index, piece, finish):
            if index not in started:
                started.add(index)
                sink(index, HOSTILE[:14], None)
                sink(index, HOSTILE[14:], None)
            sink(index, piece, finish)
        return wrapped


def test_hostile_text_is_shown_as_text(chromium, service):
    with running_server(create_app(HostileService(service))) as url:
        page = open_chat(chromium, url)
        question = '<img src=y onerror="window.pwned=2">Как дела?'
        send(page, question)
        page.wait_for_selector(".bubble.bot.done", timeout=30_000)
        assert bot_texts(page) == [HOSTILE + service.reply(question).answers[0].text]
        assert page.locator(".bubble.user").inner_text() == question
        assert page.locator("#log img, #log b").count() == 0
        assert page.evaluate("window.pwned") is None
        assert not page.errors_seen, page.errors_seen


def test_an_error_inside_the_stream_is_one_line_and_the_partial_text_stays(chromium, service):
    """A canned SSE body (CRLF line ends, an event split over lines): the text before the error stays."""
    def chunk(choices):
        return "data: " + json.dumps({"object": "chat.completion.chunk", "choices": choices}, ensure_ascii=False)
    events = [chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]),
              chunk([{"index": 0, "delta": {"content": "При"}, "finish_reason": None}]),
              chunk([{"index": 0, "delta": {"content": "вет <i>"}, "finish_reason": None}]),
              'data: {"error":\ndata: {"message": "internal error (RuntimeError); see the server log"}}',
              "data: [DONE]"]
    with running_server(create_app(service)) as url:
        page = open_chat(chromium, url)
        page.route("**/v1/chat/completions", lambda route: route.fulfill(
            status=200, headers={"Content-Type": "text/event-stream"}, body="\r\n\r\n".join(events) + "\r\n\r\n"))
        send(page, "Как дела?")
        error = page.wait_for_selector("#error:not([hidden])", timeout=15_000)
        assert error.inner_text() == "internal error (RuntimeError); see the server log"
        assert bot_texts(page) == ["Привет <i>"] and page.locator(".bubble.bot.failed").count() == 1
        assert page.locator(".bubble.user.failed").count() == 1 and page.locator("#send").is_visible()
        assert not page.errors_seen, page.errors_seen
