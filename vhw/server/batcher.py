"""Group commit for the licensing endpoints: the calls that arrive together run as one batch.

:class:`Batcher` runs them in one worker thread, inside one store group
(:meth:`vhw.server.store.Store.group`): with SQLite, one commit (one fsync) for all of them.

A batch takes what is waiting when the thread is free (up to ``MAX``), so a lone request is not
delayed and a crowd shares its commits. Each call still succeeds or fails alone (a savepoint
each); every answer waits for its batch's commit. One thread instead of one per request also
spares the interpreter's lock the switching between dozens of threads.

The queue is bounded (``QUEUE``): past it the server is overloaded, and a request is answered at
once with 503 and ``Retry-After`` instead of waiting without end (back-pressure a console's retry
honours), so memory and latency stay bounded under any load.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from ..httpapi import ApiError
from .licensing import Licensing

Call = Callable[[Licensing, str, Any], Any]


@dataclass
class _Job:
    fn: Call
    actor: str
    msg: Any
    done: trio.Event = field(default_factory=trio.Event)
    ok: bool = False
    value: Any = None


class Batcher:
    MAX = 64  # calls in one batch (one commit)
    QUEUE = 1024  # calls waiting at most; more are answered 503 at once
    RETRY_AFTER = 1  # seconds a refused caller is told to wait

    def __init__(self, lic: Licensing, *, queue: int = QUEUE):
        self.lic = lic
        self.running = False
        self._send, self._receive = trio.open_memory_channel[_Job](queue)

    async def call(self, fn: Call, actor: str, msg: Any) -> Any:
        job = _Job(fn, actor, msg)
        try:
            self._send.send_nowait(job)
        except trio.WouldBlock:
            raise ApiError(
                503, "busy", "the licensing server is busy; try again shortly", retry_after=self.RETRY_AFTER
            ) from None
        await job.done.wait()
        if not job.ok:
            raise job.value
        return job.value

    async def run(self) -> None:
        self.running = True
        try:
            while True:
                jobs = [await self._receive.receive()]
                while len(jobs) < self.MAX:
                    try:
                        jobs.append(self._receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                try:
                    await trio.to_thread.run_sync(self._run_batch, jobs)
                except Exception as exc:  # the commit failed: every call of the batch did
                    for job in jobs:
                        job.ok, job.value = False, exc
                for job in jobs:
                    job.done.set()
        finally:
            self.running = False

    def _run_batch(self, jobs: list[_Job]) -> None:
        with self.lic.store.group():
            for job in jobs:
                try:
                    job.ok, job.value = True, job.fn(self.lic, job.actor, job.msg)
                except Exception as exc:
                    job.ok, job.value = False, exc
