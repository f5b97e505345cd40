"""The Telegram bot offline: fake updates into aiogram's dispatcher, a Bot whose API session is a fake."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from datetime import datetime, timezone
from typing import Any, AsyncGenerator, Callable

import pytest
from aiogram import Bot
from aiogram.client.session.base import BaseSession
from aiogram.exceptions import TelegramNetworkError, TelegramRetryAfter
from aiogram.methods import GetUpdates, SendChatAction, SendMessage, TelegramMethod
from aiogram.types import Chat, Message, ReplyKeyboardMarkup, ReplyKeyboardRemove, Sticker, Update, User
from typer.testing import CliRunner

from chitchat.serve.bot import NO_CATEGORY, ChatBot, Redact, parse_option
from chitchat.serve.flood import BoundedStore, RetryRequests, make_bot
from chitchat.cli import app as cli_app
from chitchat.answering.decoding import DecodingConfig
from test_inference import PAIRS, service, tiny_model  # noqa: F401  (module-scoped fixtures)

TOKEN = "123456:TEST-token-never-printed"
NOW = datetime(2024, 1, 1, tzinfo=timezone.utc)


class FakeSession(BaseSession):
    """Records every Bot API call and answers it as Telegram would, without a network."""

    def __init__(self):
        super().__init__()
        self.calls: list[TelegramMethod] = []  # the calls answered
        self.refused: list[Exception] = []  # what the calls that failed raised
        self.failures: list[Callable[[TelegramMethod], Exception]] = []  # the next calls fail with these

    async def make_request(self, bot: Bot, method: TelegramMethod, timeout: int | None = None) -> Any:
        if self.failures:
            self.refused.append(self.failures.pop(0)(method))
            raise self.refused[-1]
        self.calls.append(method)
        if isinstance(method, SendMessage):
            return Message(message_id=len(self.calls), date=NOW, text=method.text,
                           chat=Chat(id=method.chat_id, type="private"))
        return True  # sendChatAction and the like

    async def stream_content(self, *args, **kwargs) -> AsyncGenerator[bytes, None]:
        yield b""

    async def close(self) -> None:
        pass


class Harness:
    """One ChatBot, one dispatcher, one fake Telegram; `send` feeds a message and returns the replies.

    Time is `now`, moved on by `tick` seconds before each message (2 s: a user writing that often never
    meets the default rate limit); `sleeps` records what the bot's RetryRequests waited, without waiting."""

    def __init__(self, service, tick: float = 2.0, **options):
        self.now, self.tick = 1000.0, tick
        self.sleeps: list[float] = []
        self.chat_bot = ChatBot(service, clock=lambda: self.now, **options)
        self.dp = self.chat_bot.dispatcher()
        self.session = FakeSession()
        self.bot = make_bot(TOKEN, self.session, RetryRequests(sleep=self.sleep))
        self.updates = 0

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def update(self, text: str | None = None, chat_id: int = 1, **extra) -> Update:
        self.now += self.tick
        self.updates += 1
        message = Message(message_id=self.updates, date=NOW, chat=Chat(id=chat_id, type="private"),
                          from_user=User(id=chat_id, is_bot=False, first_name="Тест"), text=text, **extra)
        return Update(update_id=self.updates, message=message)

    async def feed(self, text: str | None = None, chat_id: int = 1, **extra) -> list[SendMessage]:
        before = len(self.session.calls)
        await self.dp.feed_update(self.bot, self.update(text, chat_id, **extra))
        return [m for m in self.session.calls[before:] if isinstance(m, SendMessage)]

    def send(self, text: str | None = None, chat_id: int = 1, **extra) -> list[SendMessage]:
        return asyncio.run(self.feed(text, chat_id, **extra))

    def say(self, text: str, chat_id: int = 1) -> str:
        """The text of the one reply to `text`."""
        replies = self.send(text, chat_id)
        assert len(replies) == 1, [r.text for r in replies]
        return replies[0].text


@pytest.fixture
def tg(service):
    return Harness(service)


def test_start_and_help(tg):
    text = tg.say("/start")
    assert text.startswith("Hi!") and "/category NAME" in text and "/strategy" in text and "/reset" in text
    assert "now: category none, strategy greedy" in tg.say("/help")


def test_a_question_gets_the_services_answer(tg, service):
    assert tg.say("/category юмор") == "Category: Юмор"
    assert tg.say("Как дела?") == "Нормально, а у тебя?"
    assert any(isinstance(c, SendChatAction) for c in tg.session.calls)  # "typing..." while it decodes
    assert tg.chat_bot.chats[1].history == ["Как дела?", "Нормально, а у тебя?"]
    for category, pairs in PAIRS.items():
        tg.say(f"/category {category}")
        assert tg.say(pairs[1][0]) == service.reply(pairs[1][0], category).answers[0].text


def test_category_without_a_name_shows_a_keyboard_and_a_button_picks_it(tg):
    [reply] = tg.send("/category")
    assert isinstance(reply.reply_markup, ReplyKeyboardMarkup)
    buttons = [row[0].text for row in reply.reply_markup.keyboard]
    assert buttons == sorted(PAIRS) + [NO_CATEGORY]
    [picked] = tg.send("Юмор")  # what pressing the button sends
    assert picked.text == "Category: Юмор" and isinstance(picked.reply_markup, ReplyKeyboardRemove)
    tg.send("/category")
    assert tg.say(NO_CATEGORY) == "Category: none"
    tg.send("/category")
    assert tg.say("Как дела?") != "Category: none"  # not a category: answered as a question
    assert tg.chat_bot.chats[1].choosing_category is False


def test_unknown_category_lists_the_known_ones(tg):
    assert tg.say("/category Спорт") == "error: unknown category 'Спорт'; known: Авто, Мото; Еда, Кулинария; Юмор"
    assert tg.say("/category -") == "Category: none"


def test_strategy_commands(tg):
    assert tg.say("/strategy beam") == "Strategy: beam"
    assert tg.chat_bot.chats[1].decoding.strategy == "beam"
    assert tg.say("/strategy nucleus top_p=0.9 n=2 seed=3") == "Strategy: nucleus, top_p=0.9, n=2, seed=3"
    lines = tg.say("Расскажи анекдот!").splitlines()
    assert [line[:3] for line in lines] == ["1. ", "2. "]
    shown = tg.say("/strategy")
    assert shown.startswith("strategy: nucleus (one of greedy, beam, nucleus)") and "top_p=0.9" in shown


@pytest.mark.parametrize("command, message", [
    ("/strategy sampling", "decoding.strategy must be one of"),
    ("/strategy beam beam_size=50", "decoding.beam_size must be in [1, 10] here, got 50"),
    ("/strategy beam max_new_tokens=1000", "decoding.max_new_tokens must be in [1, 128]"),
    ("/strategy nucleus n=9", "decoding.n must be in [1, 5] here"),
    ("/strategy nucleus top_p=2", "decoding.top_p must be in (0, 1]"),
    ("/strategy nucleus top_p=lots", "top_p must be float, got 'lots'"),
    ("/strategy beam early_stopping=maybe", "early_stopping must be true or false"),
    ("/strategy beam nope=1", "is not KEY=VALUE"),
])
def test_bad_strategy_is_one_error_line_and_changes_nothing(tg, command, message):
    text = tg.say(command)
    assert text.startswith("error: ") and message in text and "\n" not in text
    assert tg.chat_bot.chats[1].decoding == DecodingConfig()


def test_settings_are_per_chat_and_reset_forgets_them(tg):
    tg.say("/category юмор", chat_id=1)
    tg.say("/strategy beam", chat_id=1)
    assert "now: category none, strategy greedy" in tg.say("/help", chat_id=2)
    assert "now: category Юмор, strategy beam" in tg.say("/help", chat_id=1)
    tg.say("Как дела?", chat_id=1)
    assert tg.say("/reset", chat_id=1) == "Conversation and settings reset."
    assert 1 not in tg.chat_bot.chats
    assert "now: category none, strategy greedy" in tg.say("/help", chat_id=1)


def test_reset_clears_the_history(tg):
    tg.say("Как дела?")
    assert tg.chat_bot.chats[1].history == ["Как дела?", "Нормально, а у тебя?"]
    tg.say("/reset")
    tg.say("/help")
    assert tg.chat_bot.chats[1].history == []


def test_a_flood_gets_one_slow_down_reply_and_nothing_more(service):
    tg = Harness(service, tick=0.0)  # every message at the same instant; default limit: 5 at once, 5 per 10 s
    assert [len(tg.send("/help", chat_id=1)) for _ in range(5)] == [1] * 5
    [slow] = tg.send("/help", chat_id=1)
    assert slow.text == "Slow down a little: I answer at most 5 messages per 10 s. Try again in 2 s."
    assert all(tg.send("/help", chat_id=1) == [] for _ in range(10))  # silence, not a reply to each
    assert "now: category none" in tg.say("/help", chat_id=2)  # another user is not held back
    tg.now += 1.9
    assert tg.send("/help", chat_id=1) == []  # not yet
    tg.now += 0.1
    assert "now: category none" in tg.say("/help", chat_id=1)  # a token came back after 10 / 5 s
    assert tg.send("Как дела?", chat_id=1) == []  # and it was spent: still quiet, no second warning
    tg.now += 10
    assert tg.say("Как дела?", chat_id=1) == "Нормально, а у тебя?"  # questions count like commands


def test_the_rate_limit_counts_the_sender_and_is_configurable(service):
    tg = Harness(service, tick=0.0, rate_limit=2, rate_window=60)
    group = Chat(id=-100, type="group")
    for user, expected in [(7, 1), (7, 1), (7, 1), (7, 0), (8, 1)]:  # two users in one group chat
        message = Message(message_id=1, date=NOW, chat=group, from_user=User(id=user, is_bot=False, first_name="x"),
                          text="/help")
        before = len(tg.session.calls)
        asyncio.run(tg.dp.feed_update(tg.bot, Update(update_id=1, message=message)))
        assert len(tg.session.calls) - before == expected, user
    assert tg.session.calls[-2].text == "Slow down a little: I answer at most 2 messages per 60 s. Try again in 30 s."
    unlimited = Harness(service, tick=0.0, rate_limit=0)
    assert all(len(unlimited.send("/help")) == 1 for _ in range(20))


def test_a_flood_warning_comes_again_only_after_a_calm_window(service):
    tg = Harness(service, tick=0.0, rate_limit=1, rate_window=10)
    tg.say("/help")
    assert tg.say("/help").startswith("Slow down")
    tg.now += 10  # one token back, but the bucket (of one) is full again: a new flood may be warned
    tg.say("/help")
    assert tg.say("/help").startswith("Slow down")
    assert tg.send("/help") == []


def test_rate_buckets_are_bounded_and_forgotten_when_full_again(service):
    tg = Harness(service, tick=0.0, rate_limit=2, rate_window=10, max_chats=3)
    for chat in range(1, 5):
        tg.send("/help", chat_id=chat)
    buckets = tg.chat_bot.limiter.buckets
    assert len(buckets) == 3 and 1 not in buckets and 4 in buckets
    tg.now += 10
    assert len(buckets) == 0


def test_retry_after_is_waited_out_and_the_message_delivered(tg, caplog):
    tg.session.failures = [lambda method: TelegramRetryAfter(method, "Too Many Requests: retry after 7", 7)]
    with caplog.at_level(logging.WARNING, logger="chitchat.serve.bot"):
        [reply] = tg.send("/help")
    assert "now: category none" in reply.text and tg.sleeps == [7.0]
    assert len(tg.session.refused) == 1 and isinstance(tg.session.refused[0], TelegramRetryAfter)
    assert "SendMessage: TelegramRetryAfter" in caplog.text and "retry 1 of 3 in 7 s" in caplog.text


def test_network_errors_are_retried_with_exponential_backoff(tg):
    tg.session.failures = [lambda method: TelegramNetworkError(method, "Request timeout error")] * 3
    assert tg.say("Как дела?") == "Нормально, а у тебя?"  # the first call, sendChatAction, failed three times
    assert tg.sleeps == [1.0, 2.0, 4.0] and isinstance(tg.session.calls[0], SendChatAction)


def test_past_the_retries_it_gives_up_logs_and_keeps_working(tg, caplog):
    tg.session.failures = [lambda method: TelegramRetryAfter(method, "Too Many Requests: retry after 1", 1)] * 4
    with caplog.at_level(logging.WARNING, logger="chitchat.serve.bot"):
        assert tg.send("/help") == []  # no exception out of the dispatcher: the update is done
    assert tg.sleeps == [1.0, 2.0, 4.0] and len(tg.session.refused) == 4
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "SendMessage gave up after 3 retries: TelegramRetryAfter" in errors[0].getMessage()
    assert "update 1 (chat 1) not answered: TelegramRetryAfter" in caplog.text
    assert "now: category none" in tg.say("/help")  # the next message is answered as usual


def test_a_retry_after_too_long_is_not_waited(tg, caplog):
    tg.session.failures = [lambda method: TelegramRetryAfter(method, "Too Many Requests: retry after 3600", 3600)]
    with caplog.at_level(logging.ERROR, logger="chitchat.serve.bot"):
        assert tg.send("/help") == []
    assert tg.sleeps == [] and "SendMessage gave up (would wait 3600 s)" in caplog.text


def test_get_updates_is_left_to_the_polling_loop():
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def make_request(bot, method):
        raise TelegramNetworkError(method, "Request timeout error")

    with pytest.raises(TelegramNetworkError):
        asyncio.run(RetryRequests(sleep=sleep)(make_request, None, GetUpdates(timeout=30)))
    assert sleeps == []


def test_chat_states_are_capped_least_recently_used_first(service):
    tg = Harness(service, max_chats=3)
    for chat in (1, 2, 3):
        tg.say("/category юмор", chat_id=chat)
    tg.say("/help", chat_id=1)  # chat 1 used again: chat 2 is now the oldest
    tg.say("/help", chat_id=4)
    assert len(tg.chat_bot.chats) == 3 and 2 not in tg.chat_bot.chats
    assert all(chat in tg.chat_bot.chats for chat in (1, 3, 4))
    assert "now: category Юмор" in tg.say("/help", chat_id=1)
    assert "now: category none" in tg.say("/help", chat_id=2)  # evicted: back to the defaults


def test_an_idle_chat_is_forgotten(service):
    tg = Harness(service, idle_seconds=3600)
    tg.say("/category юмор", chat_id=1)
    tg.say("Как дела?", chat_id=1)
    tg.say("/strategy beam", chat_id=2)
    tg.now += 3000
    assert "now: category none, strategy beam" in tg.say("/help", chat_id=2)  # chat 2 used: its hour restarts
    tg.now += 600  # chat 1 silent for 3600 s and more
    assert 1 not in tg.chat_bot.chats and 2 in tg.chat_bot.chats
    assert "now: category none, strategy greedy" in tg.say("/help", chat_id=1)
    assert tg.chat_bot.chats[1].history == []


def test_bounded_store_directly():
    now = [0.0]
    store: BoundedStore[str, list] = BoundedStore(2, 10, clock=lambda: now[0])
    a = store.get_or_add("a", list)
    assert store.get_or_add("a", list) is a and store["a"] is a
    store.get_or_add("b", list)
    now[0] = 5
    store.get("a")
    store.get_or_add("c", list)
    assert "b" not in store and len(store) == 2
    now[0] = 14.9
    assert "a" in store and store.get("c") == []  # "c" used again at 14.9
    now[0] = 15  # "a" unused for 10 s
    assert "a" not in store and store.get("a") is None and "c" in store
    assert store.pop("c") == [] and len(store) == 0 and store.pop("c", "gone") == "gone"
    with pytest.raises(KeyError):
        store["c"]
    for bad in [dict(max_items=0, idle_seconds=1), dict(max_items=1, idle_seconds=0)]:
        with pytest.raises(ValueError):
            BoundedStore(**bad)


@pytest.mark.parametrize("options, message", [
    (["--rate-limit", "-1"], "rate limit must be >= 0 messages"),
    (["--rate-window", "0"], "rate window must be > 0 seconds"),
    (["--max-chats", "0"], "max chats must be >= 1"),
    (["--idle-hours", "-2"], "idle time must be > 0 seconds"),
])
def test_bot_options_out_of_range_are_one_line(tiny_model, options, message):
    result = CliRunner().invoke(cli_app, ["bot", "--model", str(tiny_model), *options],
                                env={"TELEGRAM_BOT_TOKEN": TOKEN})
    assert result.exit_code == 1 and result.stderr.count("\n") == 1 and message in result.stderr, result.output
    assert TOKEN not in result.output


def test_bad_questions_unknown_commands_and_stickers(tg):
    assert tg.say("а" * 1001) == "error: question is too long: 1001 characters, at most 1000"
    assert tg.say("/frobnicate now") == "unknown command /frobnicate; /help lists them"
    sticker = Sticker(file_id="x", file_unique_id="y", type="regular", width=1, height=1, is_animated=False,
                      is_video=False)
    assert tg.send(None, sticker=sticker)[0].text == "I only read text: write a question."


def test_history_is_capped(tg):
    for _ in range(15):
        tg.say("Как дела?")
    assert len(tg.chat_bot.chats[1].history) == 20


def test_answers_run_off_the_event_loop(service):
    """While one chat's answer is being decoded, another chat's command is answered."""
    gate, entered = threading.Event(), threading.Event()

    class Slow:
        def __getattr__(self, name):
            return getattr(service, name)

        def answer_batch(self, *args, **kwargs):
            entered.set()
            assert gate.wait(30)
            return service.answer_batch(*args, **kwargs)

    tg = Harness(Slow())

    async def scenario() -> tuple[str, bool]:
        slow = asyncio.create_task(tg.feed("Как дела?", chat_id=1))
        while not entered.is_set():
            await asyncio.sleep(0.01)
        help_reply = await asyncio.wait_for(tg.feed("/help", chat_id=2), timeout=5)
        still_decoding = not slow.done()
        gate.set()
        await slow
        return help_reply[0].text, still_decoding

    text, still_decoding = asyncio.run(scenario())
    assert "now: category none" in text and still_decoding


def test_parse_option_types():
    assert parse_option("top_p=0.5") == ("top_p", 0.5)
    assert parse_option("beam-size=3") == ("beam_size", 3)
    assert parse_option("early_stopping=off") == ("early_stopping", False)


def test_redact_scrubs_the_token_from_messages_args_and_tracebacks():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(Redact(TOKEN))
    log = logging.getLogger("test_bot.redact")
    log.addHandler(handler)
    try:
        log.error("url https://api.telegram.org/bot%s/getMe failed", TOKEN)
        try:
            raise RuntimeError(f"cannot reach /bot{TOKEN}/getUpdates")
        except RuntimeError:
            log.exception("polling")
    finally:
        log.removeHandler(handler)
    out = stream.getvalue()
    assert TOKEN not in out and out.count("<TELEGRAM_BOT_TOKEN>") == 2


def test_bot_without_a_token_is_one_line(tiny_model, monkeypatch):
    monkeypatch.delenv("TELEGRAM_BOT_TOKEN", raising=False)
    result = CliRunner().invoke(cli_app, ["bot", "--model", str(tiny_model)])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "TELEGRAM_BOT_TOKEN is not set" in result.stderr


def test_bot_with_a_malformed_token_never_prints_it(tiny_model):
    bad = "not-a-token secret"
    result = CliRunner().invoke(cli_app, ["bot", "--model", str(tiny_model)], env={"TELEGRAM_BOT_TOKEN": bad})
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "TELEGRAM_BOT_TOKEN is not a bot token" in result.stderr and "secret" not in result.output


def test_bot_refused_by_telegram_is_one_line_without_the_token(tiny_model, monkeypatch):
    """get_me answered 401 by the (fake) Bot API: one line, exit 1, the token nowhere."""
    from aiogram.exceptions import TelegramUnauthorizedError
    from aiogram.methods import GetMe

    async def unauthorized(self, bot, method, timeout=None):
        raise TelegramUnauthorizedError(method=GetMe(), message=f"Unauthorized for /bot{TOKEN}/getMe")

    from aiogram.client.session.aiohttp import AiohttpSession

    monkeypatch.setattr(AiohttpSession, "make_request", unauthorized)
    result = CliRunner().invoke(cli_app, ["bot", "--model", str(tiny_model)], env={"TELEGRAM_BOT_TOKEN": TOKEN})
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
    assert "Telegram refused TELEGRAM_BOT_TOKEN (unauthorized)" in result.stderr and TOKEN not in result.output
