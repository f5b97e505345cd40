"""The Telegram bot (aiogram 3) on the same ChatService as the CLI and the web app.

Each chat has its own settings in memory (category, decoding, the turns so far); answers go
through the web app's `Batcher`, so decoding runs in a worker thread and the bot keeps taking
commands from other chats meanwhile. The token comes from TELEGRAM_BOT_TOKEN and is scrubbed from
every log line and error message (`Redact`). Flood control, retries and the bounds on what it keeps
in memory are in chitchat.serve.flood.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from aiogram import Dispatcher, F, Router
from aiogram.enums import ChatAction
from aiogram.exceptions import TelegramAPIError, TelegramNetworkError, TelegramUnauthorizedError
from aiogram.filters import Command, CommandObject, CommandStart, ExceptionTypeFilter
from aiogram.types import (BotCommand, ErrorEvent, KeyboardButton, Message, ReplyKeyboardMarkup, ReplyKeyboardRemove,
                           TelegramObject)
from aiogram.utils.token import TokenValidationError, validate_token

from chitchat.answering.decoding import OPTION_TYPES, STRATEGIES, DecodingConfig, parse_option_value
from chitchat.answering.service import ChatService, RequestError
from chitchat.core.errors import InputError
from chitchat.serve import limits
from chitchat.serve.batcher import Batcher
from chitchat.serve.flood import (IDLE_SECONDS, MAX_CHATS, RATE_LIMIT, RATE_WINDOW, BoundedStore, Clock, RateLimiter,
                                  make_bot)

log = logging.getLogger(__name__)

TOKEN_VARIABLE = "TELEGRAM_BOT_TOKEN"
NO_CATEGORY = "— no category —"
COMMANDS = {  # name -> the line in Telegram's command menu
    "start": "greeting and help",
    "help": "what the bot understands",
    "category": "answer in a category (pick from a keyboard)",
    "strategy": "decoding: greedy, beam or nucleus",
    "reset": "forget this conversation and its settings",
}
HELP = """Write a question (in Russian) and I answer it.

/category NAME  answer in this category (/category alone shows a keyboard, /category - clears it)
/strategy NAME [KEY=VALUE ...]  greedy | beam | nucleus, e.g. /strategy nucleus top_p=0.9 n=3
/strategy  shows the decoding options now in use
/reset  forget this conversation and go back to the defaults
/help  this text"""


@dataclass
class ChatState:
    """One chat's settings and conversation."""

    category: str | None = None
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    history: list[str] = field(default_factory=list)  # question, answer, ... newest last (the model reads max_history)
    choosing_category: bool = False  # the category keyboard is showing: a category name picks it


def check_bot_options(rate_limit: int = RATE_LIMIT, rate_window: float = RATE_WINDOW, max_chats: int = MAX_CHATS,
                      idle_seconds: float = IDLE_SECONDS) -> None:
    """ValueError naming the first option out of range (the ChatBot arguments of the same names)."""
    if rate_limit < 0:
        raise ValueError(f"rate limit must be >= 0 messages (0: no limit), got {rate_limit}")
    if not rate_window > 0:
        raise ValueError(f"rate window must be > 0 seconds, got {rate_window}")
    if max_chats < 1:
        raise ValueError(f"max chats must be >= 1, got {max_chats}")
    if not idle_seconds > 0:
        raise ValueError(f"idle time must be > 0 seconds, got {idle_seconds}")


def parse_option(assignment: str) -> tuple[str, object]:
    """`key=value` as (decoding option, value of its type); ValueError names the problem."""
    key, eq, text = assignment.partition("=")
    key = key.strip().replace("-", "_")
    if not eq or key not in OPTION_TYPES or key == "strategy":
        options = ", ".join(k for k in OPTION_TYPES if k != "strategy")
        raise RequestError(f"{assignment!r} is not KEY=VALUE with KEY one of {options}")
    try:
        return key, parse_option_value(key, text.strip())
    except ValueError as exc:
        raise RequestError(str(exc)) from None


def format_answers(reply) -> str:
    answers = reply.answers
    if len(answers) == 1:
        text = answers[0].text or "(empty answer)"
    else:
        text = "\n".join(f"{i}. {a.text or '(empty answer)'}  [{a.score:.3f}]" for i, a in enumerate(answers, 1))
    return text + ("\n(the question was cut to the model's length)" if reply.truncated else "")


class ChatBot:
    """The handlers and the per-chat state; `dispatcher()` wires them into aiogram.

    Every message from a user counts against the rate limit, commands (/help, /reset, ...) and stickers
    included, since each one costs a reply: `rate_limit` messages at once, then `rate_limit` per
    `rate_window` seconds (0: no limit). The user is the sender (`from_user`), or the chat when Telegram
    names no sender. Over the limit, the first message gets one "slow down" reply and the others none.

    At most `max_chats` chat states are kept, the least recently used dropped first, and a chat silent for
    `idle_seconds` is forgotten. A forgotten chat starts again from the defaults (no category, greedy,
    no history) without a word: /help shows the settings in use. `clock` (seconds) drives both.
    """

    def __init__(self, service: ChatService, max_batch: int = 16, rate_limit: int = RATE_LIMIT,
                 rate_window: float = RATE_WINDOW, max_chats: int = MAX_CHATS, idle_seconds: float = IDLE_SECONDS,
                 clock: Clock = time.monotonic):
        check_bot_options(rate_limit, rate_window, max_chats, idle_seconds)
        self.service = service
        self.batcher = Batcher(service, max_batch)
        self.chats: BoundedStore[int, ChatState] = BoundedStore(max_chats, idle_seconds, clock)
        self.limiter = RateLimiter(rate_limit, rate_window, max_chats, clock) if rate_limit else None

    def state(self, message: Message) -> ChatState:
        return self.chats.get_or_add(message.chat.id, ChatState)

    async def throttle(self, handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]], message: Message,
                       data: dict[str, Any]) -> Any:
        """Outer middleware on messages: the handler runs only while the sender is within the rate limit."""
        if self.limiter is None:
            return await handler(message, data)
        user = message.from_user.id if message.from_user else message.chat.id
        verdict, wait = self.limiter.take(user)
        if verdict == "answer":
            return await handler(message, data)
        if verdict == "warn":
            log.info("user %s is over the rate limit; their messages are dropped for a while", user)
            await message.answer(f"Slow down a little: I answer at most {self.limiter.limit} messages per "
                                 f"{self.limiter.window:g} s. Try again in {math.ceil(wait)} s.")
        return None

    async def undelivered(self, event: ErrorEvent) -> None:
        """A Bot API error in a handler (RetryRequests gave up, the user blocked the bot, ...): one log line."""
        exc, message = event.exception, event.update.message
        chat = message.chat.id if message else None
        log.warning("update %d (chat %s) not answered: %s: %s", event.update.update_id, chat, type(exc).__name__,
                    exc)

    def dispatcher(self) -> Dispatcher:
        router = Router(name="chitchat")
        router.message.outer_middleware(self.throttle)
        router.errors.register(self.undelivered, ExceptionTypeFilter(TelegramAPIError))
        router.message.register(self.start, CommandStart())
        router.message.register(self.help, Command("help"))
        router.message.register(self.category, Command("category"))
        router.message.register(self.strategy, Command("strategy"))
        router.message.register(self.reset, Command("reset"))
        router.message.register(self.unknown_command, F.text.startswith("/"))
        router.message.register(self.text, F.text)
        router.message.register(self.not_text)
        dp = Dispatcher()
        dp.include_router(router)
        return dp

    def category_keyboard(self) -> ReplyKeyboardMarkup:
        rows = [[KeyboardButton(text=name)] for name in self.service.categories]
        return ReplyKeyboardMarkup(keyboard=rows + [[KeyboardButton(text=NO_CATEGORY)]], resize_keyboard=True,
                                   one_time_keyboard=True, input_field_placeholder="category")

    # -- commands ----------------------------------------------------------------------------------
    async def start(self, message: Message) -> None:
        self.chats.pop(message.chat.id, None)
        note = "" if self.service.conditioned else "\n\n(This model ignores categories.)"
        if self.service.conditioned and self.service.condition_field == "speaker":
            note = "\n\n(The categories are characters: /category NAME makes me answer as NAME.)"
        await message.answer(f"Hi! I am a chit-chat model trained on Russian questions and answers.\n\n{HELP}{note}")

    async def help(self, message: Message) -> None:
        state = self.state(message)
        await message.answer(f"{HELP}\n\nnow: category {state.category or 'none'}, "
                             f"strategy {state.decoding.strategy}")

    async def category(self, message: Message, command: CommandObject) -> None:
        state = self.state(message)
        name = (command.args or "").strip()
        if not name:
            state.choosing_category = True
            await message.answer(f"Pick a category (now: {state.category or 'none'}):",
                                 reply_markup=self.category_keyboard())
            return
        await self._set_category(message, state, None if name in ("-", NO_CATEGORY) else name)

    async def _set_category(self, message: Message, state: ChatState, name: str | None) -> None:
        try:
            state.category = self.service.resolve_category(name)
        except RequestError as exc:
            await message.answer(f"error: {exc}")
            return
        state.choosing_category = False
        await message.answer(f"Category: {state.category or 'none'}", reply_markup=ReplyKeyboardRemove())

    async def strategy(self, message: Message, command: CommandObject) -> None:
        state = self.state(message)
        words = (command.args or "").split()
        if not words:
            options = "  ".join(f"{k}={v}" for k, v in vars(state.decoding).items() if k != "strategy")
            await message.answer(f"strategy: {state.decoding.strategy} (one of {', '.join(STRATEGIES)})\n{options}")
            return
        try:
            changes = dict(parse_option(word) for word in words[1:])
            decoding = replace(state.decoding, strategy=words[0], **changes)
            state.decoding = limits.check(self.service.check_decoding(decoding))
        except RequestError as exc:
            await message.answer(f"error: {exc}")
            return
        shown = "".join(f", {k}={getattr(state.decoding, k)}" for k in changes)
        await message.answer(f"Strategy: {state.decoding.strategy}{shown}")

    async def reset(self, message: Message) -> None:
        self.chats.pop(message.chat.id, None)
        await message.answer("Conversation and settings reset.", reply_markup=ReplyKeyboardRemove())

    async def unknown_command(self, message: Message) -> None:
        command = message.text.split()[0]
        await message.answer(f"unknown command {command}; /help lists them")

    async def not_text(self, message: Message) -> None:
        await message.answer("I only read text: write a question.")

    # -- questions ---------------------------------------------------------------------------------
    async def text(self, message: Message) -> None:
        state = self.state(message)
        text = message.text
        if state.choosing_category:
            if text == NO_CATEGORY:
                return await self._set_category(message, state, None)
            try:
                state.category = self.service.resolve_category(text)
            except RequestError:  # not a category: it was a question after all
                state.choosing_category = False
            else:
                return await self._set_category(message, state, state.category)
        await message.bot.send_chat_action(message.chat.id, ChatAction.TYPING)
        try:
            reply = await self.batcher.reply(text, state.category, state.decoding, state.history)
        except RequestError as exc:
            await message.answer(f"error: {exc}")
            return
        except InputError as exc:  # a model file read on first use (rerank_k's index) is damaged
            log.error("chat %s: %s", message.chat.id, exc)
            await message.answer("error: the server cannot answer with these options now (a model file is "
                                 "damaged); /reset goes back to the defaults")
            return
        state.history = (state.history + [text, reply.answers[0].text if reply.answers else ""])[-limits.MAX_HISTORY:]
        await message.answer(format_answers(reply))


class Redact(logging.Filter):
    """Replaces the token in every record that passes a handler: message, arguments and traceback."""

    def __init__(self, secret: str):
        super().__init__()
        self.secret = secret

    def scrub(self, text: str) -> str:
        return text.replace(self.secret, "<TELEGRAM_BOT_TOKEN>") if self.secret else text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self.scrub(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        return True


def check_token(token: str) -> None:
    """RequestError (without the token in it) unless `token` looks like a bot token."""
    try:
        validate_token(token)
    except TokenValidationError:
        raise RequestError(f"{TOKEN_VARIABLE} is not a bot token (expected digits:letters, as @BotFather gives)") \
            from None


def run_bot(service: ChatService, token: str, max_batch: int = 16, **options: Any) -> None:
    """Long-poll Telegram until Ctrl-C or SIGTERM; a refused token or no network is RequestError.

    `options`: ChatBot's rate_limit, rate_window, max_chats and idle_seconds."""
    check_token(token)
    chat_bot = ChatBot(service, max_batch, **options)
    redact = Redact(token)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(redact)
    try:
        asyncio.run(_poll(chat_bot, token))
    except TelegramUnauthorizedError:
        raise RequestError(f"Telegram refused {TOKEN_VARIABLE} (unauthorized): check the token") from None
    except (TelegramNetworkError, TelegramAPIError, OSError) as exc:
        raise RequestError(redact.scrub(f"cannot talk to Telegram: {type(exc).__name__}: {exc}")) from None


async def _poll(chat_bot: ChatBot, token: str) -> None:
    bot = make_bot(token)
    try:
        me = await bot.get_me()  # fails fast on a bad token, before polling retries for ever
        await bot.set_my_commands([BotCommand(command=c, description=d) for c, d in COMMANDS.items()])
        log.info("answering as @%s", me.username)
    except BaseException:
        await bot.session.close()
        raise
    await chat_bot.dispatcher().start_polling(bot)
