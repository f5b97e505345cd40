"""Answer requests off the event loop, batching the ones that wait together into one decoder call.

One decode runs at a time (the service has one model and a lock). While it runs, new requests
queue; the next decode takes up to `max_batch` of them that share the first one's decoding config
(frozen, so comparable) in one `ChatService.answer_batch` call, which the decoding benchmark
(docs/benchmarks.md) measures at 5-17x the answers/s of one question per call. Nucleus requests always go alone: a
sampled answer must depend on its seed, not on its batch-mates. The event loop only queues and
wakes; the decoding runs in a worker thread, so `/health` and the bot's commands never wait on it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Sequence

import anyio.to_thread

from chitchat.answering.decoding import DecodingConfig
from chitchat.answering.service import ChatService, Reply, RequestError


@dataclass
class _Job:
    question: str
    category: str | None
    history: list[str]
    decoding: DecodingConfig
    future: asyncio.Future = field(repr=False)


class Batcher:
    """`await batcher.reply(...)`: the service's Reply (or its RequestError), computed in a thread."""

    def __init__(self, service: ChatService, max_batch: int = 16):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.service = service
        self.max_batch = max_batch  # 1: every request decodes alone (a plain thread pool of one)
        self.waiting: list[_Job] = []
        self.busy = False  # a decode is running in the worker thread
        self.calls = 0  # decoder calls made (tests and benchmarks read it)
        self._task: asyncio.Task | None = None

    async def reply(self, question: str, category: str | None = None, decoding: DecodingConfig | None = None,
                    history: Sequence[str] | None = None) -> Reply:
        loop = asyncio.get_running_loop()
        job = _Job(question, category, list(history or ()), decoding or DecodingConfig(), loop.create_future())
        self.waiting.append(job)
        task = self._task
        if task is None or task.done() or task.get_loop() is not loop:  # a test client may bring a new loop
            self._task = loop.create_task(self._drain())
        return await job.future  # cancelled with the request: the drain skips it

    async def _drain(self) -> None:
        while self.waiting:
            batch = self._take()
            if not batch:
                continue
            self.busy = True
            try:
                outcomes = await anyio.to_thread.run_sync(self._answer, batch)
            except Exception as exc:  # noqa: BLE001  (reported to every waiting request, not lost)
                outcomes = [exc] * len(batch)
            finally:
                self.busy = False
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
                                                  batch[0].decoding, [j.history for j in batch]))
        except RequestError as exc:
            if len(batch) == 1:
                return [exc]
        outcomes: list[Reply | Exception] = []
        for job in batch:
            self.calls += 1
            try:
                outcomes.append(self.service.reply(job.question, job.category, job.decoding, job.history))
            except RequestError as exc:
                outcomes.append(exc)
        return outcomes
