"""Answer requests off the event loop, batching the ones that wait together into one decoder call.

One decode runs at a time (the service has one model and a lock). While it runs, new requests
queue; the next decode takes up to `max_batch` of them that share the first one's decoding config
(frozen, so comparable) in one `ChatService.answer_batch` call, which the decoding benchmark
(docs/benchmarks.md) measures at 5-17x the answers/s of one question per call. Nucleus requests always go alone: a
sampled answer must depend on its seed, not on its batch-mates. The event loop only queues and
wakes; the decoding runs in a worker thread, so `/health` and the bot's commands never wait on it.

Back-pressure: at most `max_queue` requests wait; one more is refused at once with `QueueFull`
(the web app answers 429 with Retry-After) instead of queueing without bound. A streamed request
brings an AnswerStream that the decoder feeds token by token; it batches with the others all the same.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import anyio.to_thread

from chitchat.answering.decoding import DecodingConfig
from chitchat.answering.service import ChatService, Reply, RequestError
from chitchat.answering.streaming import AnswerStream


class QueueFull(RuntimeError):
    """More than max_queue requests would wait; `retry_after` is a fair guess in whole seconds."""

    def __init__(self, waiting: int, retry_after: int):
        super().__init__(f"the server is busy: {waiting} requests are waiting already; try again in {retry_after} s")
        self.retry_after = retry_after


@dataclass
class _Job:
    question: str
    category: str | None
    history: list[str]
    decoding: DecodingConfig
    future: asyncio.Future = field(repr=False)
    stream: AnswerStream | None = None


class Batcher:
    """`await batcher.reply(...)`: the service's Reply (or its RequestError), computed in a thread."""

    def __init__(self, service: ChatService, max_batch: int = 16, max_queue: int = 256):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.service = service
        self.max_batch = max_batch  # 1: every request decodes alone (a plain thread pool of one)
        self.max_queue = max_queue  # requests that may wait; one more gets QueueFull
        self.waiting: list[_Job] = []
        self.busy = False  # a decode is running in the worker thread
        self.calls = 0  # decoder calls made (tests and benchmarks read it)
        self._seconds = 0.5  # recent seconds per decoder call (Retry-After's guess)
        self._task: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        """Requests waiting for the decoder (not the one it is answering)."""
        return sum(not j.future.done() for j in self.waiting)

    async def reply(self, question: str, category: str | None = None, decoding: DecodingConfig | None = None,
                    history: Sequence[str] | None = None, stream: AnswerStream | None = None) -> Reply:
        """The Reply; QueueFull at once when max_queue requests wait already."""
        return await self.submit(question, category, decoding, history, stream)

    def submit(self, question: str, category: str | None = None, decoding: DecodingConfig | None = None,
               history: Sequence[str] | None = None, stream: AnswerStream | None = None) -> asyncio.Future:
        """Queue one request (call it on the event loop); its future holds the Reply. Cancelling
        the future drops a waiting request; QueueFull is raised here, before anything waits."""
        waiting = self.depth
        if waiting >= self.max_queue:
            batches = math.ceil((waiting + 1) / self.max_batch) + self.busy
            raise QueueFull(waiting, max(1, math.ceil(batches * self._seconds)))
        loop = asyncio.get_running_loop()
        job = _Job(question, category, list(history or ()), decoding or DecodingConfig(), loop.create_future(),
                   stream)
        self.waiting.append(job)
        task = self._task
        if task is None or task.done() or task.get_loop() is not loop:  # a test client may bring a new loop
            self._task = loop.create_task(self._drain())
        return job.future  # cancelled with the request: the drain skips it

    async def _drain(self) -> None:
        while self.waiting:
            batch = self._take()
            if not batch:
                continue
            self.busy = True
            start = time.perf_counter()
            try:
                outcomes = await anyio.to_thread.run_sync(self._answer, batch)
            except Exception as exc:  # noqa: BLE001  (reported to every waiting request, not lost)
                outcomes = [exc] * len(batch)
            finally:
                self.busy = False
                self._seconds = 0.8 * self._seconds + 0.2 * (time.perf_counter() - start)
            for job, outcome in zip(batch, outcomes):
                if job.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    job.future.set_exception(outcome)
                else:
                    job.future.set_result(outcome)

    def _take(self) -> list[_Job]:
        """The oldest live job and, unless it samples, the next ones with the same decoding."""
        self.waiting = [j for j in self.waiting if not j.future.done()]
        if not self.waiting:
            return []
        head = self.waiting[0]
        if head.decoding.strategy == "nucleus" or self.max_batch == 1:
            batch = [head]
        else:
            batch = [j for j in self.waiting if j.decoding == head.decoding][: self.max_batch]
        taken = {id(j) for j in batch}
        self.waiting = [j for j in self.waiting if id(j) not in taken]
        return batch

    def _answer(self, batch: list[_Job]) -> list[Reply | Exception]:
        """In the worker thread: one decoder call; if one question is bad, each alone for its own error."""
        self.calls += 1
        try:
            return list(self.service.answer_batch([j.question for j in batch], [j.category for j in batch],
                                                  batch[0].decoding, [j.history for j in batch],
                                                  [j.stream for j in batch]))
        except RequestError as exc:
            if len(batch) == 1:
                return [exc]
        outcomes: list[Reply | Exception] = []
        for job in batch:
            self.calls += 1
            try:
                outcomes.append(self.service.answer_batch([job.question], [job.category], job.decoding,
                                                          [job.history], [job.stream])[0])
            except RequestError as exc:
                outcomes.append(exc)
        return outcomes
