"""Flood control and bounds for the Telegram bot, so one user or a crowd cannot exhaust it or get it
throttled by Telegram:

- `RateLimiter`: a token bucket per user (`rate_limit` messages at once, refilled at `rate_limit` per
  `rate_window` seconds); the first message over it gets one "slow down" reply, the rest are dropped silently;
- `RetryRequests`: a Bot API call that Telegram throttles (TelegramRetryAfter) or that fails on the network
  is retried a few times with backoff;
- `BoundedStore`: the chat states and the rate buckets are capped (least recently used dropped first) and
  expire when idle.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from aiogram import Bot
from aiogram.client.session.base import BaseSession
from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.exceptions import TelegramEntityTooLarge, TelegramNetworkError, TelegramRetryAfter
from aiogram.methods import GetUpdates, TelegramMethod

log = logging.getLogger("chitchat.serve.bot")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[Any]]

RATE_LIMIT = 5  # messages one user may send at once ...
RATE_WINDOW = 10.0  # ... and per this many seconds after that (one every RATE_WINDOW / RATE_LIMIT seconds)
MAX_CHATS = 10_000  # chat states (and rate buckets) kept in memory at most
IDLE_SECONDS = 6 * 3600.0  # a chat state unused this long is forgotten


class BoundedStore(Generic[K, V]):
    """A dict of at most `max_items` values in which a value unused for `idle_seconds` is gone.

    Reading a value (`get`, `[]`, `get_or_add`) marks it used. The values are kept in order of last use,
    so the idle ones sit at the front and go on every access (lazily, O(1) amortized); adding one more than
    `max_items` drops the least recently used.
    """

    def __init__(self, max_items: int, idle_seconds: float, clock: Clock = time.monotonic):
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        if not idle_seconds > 0:
            raise ValueError(f"idle_seconds must be > 0, got {idle_seconds}")
        self.max_items, self.idle_seconds, self.clock = max_items, idle_seconds, clock
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()  # key -> (last used, value), oldest first

    def _expire(self) -> float:
        now = self.clock()
        while self._items:
            key, (used, _) = next(iter(self._items.items()))
            if now - used < self.idle_seconds:
                break
            del self._items[key]
        return now

    def get(self, key: K) -> V | None:
        now = self._expire()
        if key not in self._items:
            return None
        value = self._items[key][1]
        self._items[key] = (now, value)
        self._items.move_to_end(key)
        return value

    def get_or_add(self, key: K, factory: Callable[[], V]) -> V:
        """The value for `key`, marked used; a new `factory()` if there is none (or it expired)."""
        value = self.get(key)
        if value is None:
            while len(self._items) >= self.max_items:
                self._items.popitem(last=False)
            value = factory()
            self._items[key] = (self.clock(), value)
        return value

    def pop(self, key: K, default: V | None = None) -> V | None:
        self._expire()
        entry = self._items.pop(key, None)
        return default if entry is None else entry[1]

    def __getitem__(self, key: K) -> V:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        self._expire()
        return key in self._items

    def __len__(self) -> int:
        self._expire()
        return len(self._items)


@dataclass
class Bucket:
    """One user's tokens: one spent per message answered, refilled with time."""

    tokens: float
    stamp: float  # when `tokens` was last brought up to date
    warned: bool = False  # told to slow down since the bucket was last full


class RateLimiter:
    """A token bucket per user: `limit` messages at once, then `limit` per `window` seconds.

    `take(key)` spends a token and answers "answer"; with none left it answers "warn" the first time (the
    bot then replies once that the user should slow down) and "drop" after that (no reply at all: answering
    a flood would itself flood Telegram), until the bucket has refilled completely. Buckets live in a
    `BoundedStore` of `max_users` that forgets a bucket idle for `window` seconds: by then it would be full
    again, so forgetting it changes nothing.
    """

    def __init__(self, limit: int = RATE_LIMIT, window: float = RATE_WINDOW, max_users: int = MAX_CHATS,
                 clock: Clock = time.monotonic):
        if limit < 1:
            raise ValueError(f"rate limit must be >= 1 message, got {limit}")
        if not window > 0:
            raise ValueError(f"rate window must be > 0 seconds, got {window}")
        self.limit, self.window, self.clock = limit, window, clock
        self.rate = limit / window  # tokens per second
        self.buckets: BoundedStore[int, Bucket] = BoundedStore(max_users, window, clock)

    def take(self, key: int) -> tuple[Literal["answer", "warn", "drop"], float]:
        """The verdict on one message from `key` and the seconds until the next one would be answered."""
        now = self.clock()
        bucket = self.buckets.get_or_add(key, lambda: Bucket(float(self.limit), now))
        bucket.tokens = min(float(self.limit), bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens >= self.limit:
            bucket.warned = False
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return "answer", 0.0
        wait = (1 - bucket.tokens) / self.rate
        if bucket.warned:
            return "drop", wait
        bucket.warned = True
        return "warn", wait


class RetryRequests(BaseRequestMiddleware):
    """Retries a Bot API call that Telegram throttled or that failed on the network, with backoff.

    Registered on the bot's session (`make_bot`), so every call the handlers make (sendMessage,
    sendChatAction, ...) goes through it. On TelegramRetryAfter it waits what Telegram asks,
    `retry_after` seconds (at least `backoff * 2**attempt`); on TelegramNetworkError (a timeout, a dropped
    connection) `backoff`, `2 * backoff`, `4 * backoff`, ... seconds. Each wait is logged. After `retries`
    retries, or when Telegram asks for more than `max_wait` seconds (an answer that late is of no use and
    would hold its handler), it logs an error and raises the last error. getUpdates is passed through: the
    dispatcher's polling loop already retries it with its own backoff. A request too large is not retried.
    """

    def __init__(self, retries: int = 3, backoff: float = 1.0, max_wait: float = 60.0, sleep: Sleep = asyncio.sleep):
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.retries, self.backoff, self.max_wait, self.sleep = retries, backoff, max_wait, sleep

    async def __call__(self, make_request: NextRequestMiddlewareType, bot: Bot, method: TelegramMethod) -> Any:
        if isinstance(method, GetUpdates):
            return await make_request(bot, method)
        name, attempt = type(method).__name__, 0
        while True:
            try:
                return await make_request(bot, method)
            except TelegramEntityTooLarge:
                raise
            except (TelegramRetryAfter, TelegramNetworkError) as exc:
                wait = self.backoff * 2 ** attempt
                if isinstance(exc, TelegramRetryAfter):
                    wait = max(float(exc.retry_after), wait)
                if attempt >= self.retries or wait > self.max_wait:
                    why = f"after {attempt} retries" if attempt >= self.retries else f"(would wait {wait:g} s)"
                    log.error("%s gave up %s: %s: %s", name, why, type(exc).__name__, exc)
                    raise
                attempt += 1
                log.warning("%s: %s: %s; retry %d of %d in %g s", name, type(exc).__name__, exc, attempt,
                            self.retries, wait)
            await self.sleep(wait)


def make_bot(token: str, session: BaseSession | None = None, retry: RetryRequests | None = None) -> Bot:
    """A Bot whose every API call goes through `retry` (RetryRequests() by default)."""
    bot = Bot(token, session=session) if session is not None else Bot(token)
    bot.session.middleware(retry or RetryRequests())
    return bot
