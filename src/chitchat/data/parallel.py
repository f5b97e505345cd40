"""Threads that keep the cores busy while results stay in order: `prefetch` runs an iterator ahead
on a thread of its own, `ordered_map` maps over items on several threads.

zlib, lzma and polars release the GIL, so decompressing the next block, parsing several chunks and
polars' own threads overlap; errors raised on a thread are raised to the consumer, in order.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

# threads that parse chunks at once (polars releases the GIL): with the decompressing thread and
# polars' own, every core has work; each chunk in flight holds some 100 MB of frames
PARSE_WORKERS = max(1, min(4, os.cpu_count() or 1))
T = TypeVar("T")
R = TypeVar("R")


def prefetch(items: Iterator[T], depth: int) -> Iterator[T]:
    """Run the iterator `items` in a thread up to `depth` items ahead.

    zlib, lzma and polars release the GIL, so decompressing the next block overlaps with parsing
    this one. Errors raised in the thread are raised here.
    """
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop, end = threading.Event(), object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            put((None, exc))
        finally:
            getattr(items, "close", lambda: None)()

    thread = threading.Thread(target=work, name="chitchat-reader", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = slots.get()
            if exc is not None:
                raise exc
            if item is end:
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int = 1) -> Iterator[R]:
    """fn over items on `workers` threads, the results in the order of the items; at most
    workers + 1 items are in flight, so memory holds a few chunks whatever the input's size. An
    error in fn is raised here, in order; when the consumer stops, pending items are cancelled."""
    if workers <= 1:
        yield from map(fn, items)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="chitchat-parse")
    pending: deque = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
