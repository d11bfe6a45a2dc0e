"""The licensing endpoints' calls that arrive together run as one batch, in one worker thread.

:class:`Batcher` hands each batch to one thread, inside one store group
(:meth:`vhw.server.store.Store.group`): with SQLite, one commit (one fsync) for all of them. With
PostgreSQL each call still commits on its own; the batch spares the process the switching: one
thread woken for a batch, instead of one per request contending for the interpreter's lock
(at 16 clients, in one sitting: 1-2 context switches an acquisition instead of 8-9, and a quarter
less of the server's CPU; in others, both the same within the noise: README, Performance).

A batch takes what is waiting when the thread is free (up to ``MAX``), so a lone request is not
delayed and a crowd shares its commits. Each call still succeeds or fails alone (a savepoint
each); every answer waits for its batch's commit.

``patience`` (PostgreSQL's): one thread must never hold the others up. A call that no batch took
within that time, and the calls of a batch still waiting when it has run for that long, are
handed back, and each runs in a thread of its own (``alone``), as every call did before batches:
a failover's timeouts then hold up each request once, in parallel, not one after the other.

The queue is bounded (``QUEUE``): past it the server is overloaded, and a request is answered at
once with 503 and ``Retry-After`` instead of waiting without end (back-pressure a console's retry
honours), so memory and latency stay bounded under any load.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
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
    taken: bool = False  # a batch took it
    alone: bool = False  # handed back: its caller runs it in a thread of its own
    ok: bool = False
    value: Any = None


class Batcher:
    MAX = 64  # calls in one batch (one commit)
    QUEUE = 1024  # calls waiting at most; more are answered 503 at once
    RETRY_AFTER = 1  # seconds a refused caller is told to wait

    def __init__(self, lic: Licensing, *, queue: int = QUEUE, patience: float | None = None):
        self.lic = lic
        self.running = False
        self.patience = patience  # seconds; None: every call waits for its batch (SQLite)
        self._send, self._receive = trio.open_memory_channel[_Job](queue)

    async def call(self, fn: Call, actor: str, msg: Any, alone: Callable[[], Awaitable[Any]]) -> Any:
        """``fn(lic, actor, msg)`` in the batch of the moment; ``alone()`` runs it by itself
        instead when it is handed back."""
        job = _Job(fn, actor, msg)
        try:
            self._send.send_nowait(job)
        except trio.WouldBlock:
            raise ApiError(
                503, "busy", "the licensing server is busy; try again shortly", retry_after=self.RETRY_AFTER
            ) from None
        if self.patience is not None:
            with trio.move_on_after(self.patience):
                await job.done.wait()
            if not job.taken:  # the batches are held up: not waiting behind them
                job.alone = True  # (a batch that receives it later leaves it)
                return await alone()
        await job.done.wait()
        if job.alone:
            return await alone()
        if not job.ok:
            raise job.value
        return job.value

    async def run(self) -> None:
        self.running = True
        try:
            while True:
                jobs = await self._next_batch()
                try:
                    await trio.to_thread.run_sync(self._run_batch, jobs)
                except Exception as exc:  # the commit failed: every call of the batch did
                    for job in jobs:
                        job.ok, job.value = False, exc
                for job in jobs:
                    job.done.set()
        finally:
            self.running = False

    async def _next_batch(self) -> list[_Job]:
        """What is waiting (at least one call), less the calls whose callers took them back."""
        jobs: list[_Job] = []
        while not jobs:
            jobs.append(await self._receive.receive())
            while len(jobs) < self.MAX:
                try:
                    jobs.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            jobs = [job for job in jobs if not job.alone]
        for job in jobs:
            job.taken = True
        return jobs

    def _run_batch(self, jobs: list[_Job]) -> None:
        started = time.monotonic()
        with self.lic.store.group():
            for job in jobs:
                if self.patience is not None and time.monotonic() - started > self.patience:
                    job.alone = True  # held up by the ones before it: handed back
                    continue
                try:
                    job.ok, job.value = True, job.fn(self.lic, job.actor, job.msg)
                except Exception as exc:
                    job.ok, job.value = False, exc
