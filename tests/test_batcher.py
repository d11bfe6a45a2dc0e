"""The batcher: calls that arrive together share one worker thread (and on SQLite one commit);
on PostgreSQL a call held up past the batcher's patience runs in a thread of its own, so that one
call waiting out a failover holds up no other (``vhw.server.batcher``)."""

from __future__ import annotations

import contextlib
import threading

import trio
import trio.testing

from vhw.httpapi import ApiError
from vhw.server.batcher import Batcher


class _Store:
    """What the batcher asks of a store: a group around each batch (counted)."""

    def __init__(self) -> None:
        self.groups = 0

    @contextlib.contextmanager
    def group(self):
        self.groups += 1
        yield


class _Service:
    def __init__(self) -> None:
        self.store = _Store()


def _calls(log: list[str], stuck: threading.Event | None = None):
    """A call that notes its name and thread; "stuck" waits until released (a failover's timeout)."""

    def call(lic, actor, msg):
        if msg == "stuck":
            assert stuck is not None
            stuck.wait(10)
        log.append(f"{msg} in {threading.current_thread().name}")
        return msg.upper()

    return call


def _alone(batcher: Batcher, call, name: str):
    """How the server runs a call handed back: in a thread of its own (named, for the log)."""
    return lambda: trio.to_thread.run_sync(call, batcher.lic, "console", name, thread_name=f"alone {name}")


async def _run_all(batcher: Batcher, names: list[str], call, log: list[str], release=None) -> dict[str, float]:
    """Send ``names`` at once (in order); when each answered, relative to the start."""
    answered: dict[str, float] = {}
    started = trio.current_time()

    async def one(name: str) -> None:
        value = await batcher.call(call, "console", name, _alone(batcher, call, name))
        assert value == name.upper()
        answered[name] = trio.current_time() - started

    async with trio.open_nursery() as nursery:
        nursery.start_soon(batcher.run)
        for name in names:
            nursery.start_soon(one, name)
            await trio.testing.wait_all_tasks_blocked()  # (in this order)
        if release is not None:
            nursery.start_soon(release)
        while len(answered) < len(names):
            await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    return answered


async def test_calls_that_arrive_together_share_one_batch() -> None:
    lic, log = _Service(), []
    batcher = Batcher(lic)  # type: ignore[arg-type]
    call = _calls(log)
    answers: list[str] = []

    async def one(name: str) -> None:
        answers.append(await batcher.call(call, "console", name, _never_alone))

    async with trio.open_nursery() as nursery:
        for name in ("a", "b", "c", "d"):  # all waiting before the batcher takes any
            nursery.start_soon(one, name)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(batcher.run)
        while len(answers) < 4:
            await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert sorted(answers) == ["A", "B", "C", "D"]
    assert lic.store.groups == 1  # one batch: one group (on SQLite, one commit)
    assert len({line.split(" in ")[1] for line in log}) == 1  # in one thread


async def _never_alone() -> None:
    raise AssertionError("a call without patience never runs alone")


async def _stuck_then_two(patience: float | None, release_after: float) -> tuple[dict[str, float], list[str]]:
    """ "stuck", "b" and "c" sent at once to a batcher with this patience; the stuck call is released
    after ``release_after`` seconds. When each answered, and the log."""
    stuck = threading.Event()

    async def release() -> None:
        await trio.sleep(release_after)
        stuck.set()

    log: list[str] = []
    batcher = Batcher(_Service(), patience=patience)  # type: ignore[arg-type]
    return await _run_all(batcher, ["stuck", "b", "c"], _calls(log, stuck), log, release), log


async def test_a_call_held_up_lets_the_others_run_alone_past_the_patience() -> None:
    answered, log = await _stuck_then_two(0.2, 1.5)
    # b and c did not wait for the stuck call: each ran in a thread of its own after the patience
    assert answered["b"] < 1.0 and answered["c"] < 1.0, answered
    assert answered["stuck"] >= 1.4
    assert {line for line in log if "alone" in line} == {"b in alone b", "c in alone c"}


async def test_without_patience_every_call_waits_for_its_batch() -> None:
    # the control: the same calls on a batcher without patience (SQLite's, whose batch is one
    # commit) wait behind the stuck one
    answered, log = await _stuck_then_two(None, 0.8)
    assert answered["b"] >= 0.7 and answered["c"] >= 0.7, answered
    assert not any("alone" in line for line in log)


async def test_the_rest_of_a_batch_held_up_is_handed_back() -> None:
    # the calls taken in one batch behind a stuck one: handed back once the batch has run past the
    # patience, and then each runs alone
    stuck = threading.Event()
    log: list[str] = []
    batcher = Batcher(_Service(), patience=0.2)  # type: ignore[arg-type]
    call = _calls(log, stuck)
    answered: dict[str, float] = {}

    async def one(name: str) -> None:
        assert await batcher.call(call, "console", name, _alone(batcher, call, name)) == name.upper()
        answered[name] = trio.current_time()

    async with trio.open_nursery() as nursery:
        for name in ("stuck", "b", "c"):  # queued before the batcher runs: all in its first batch
            nursery.start_soon(one, name)
            await trio.testing.wait_all_tasks_blocked()  # (in this order)
        nursery.start_soon(batcher.run)
        await trio.sleep(0.6)
        stuck.set()
        while len(answered) < 3:
            await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert {line for line in log if "alone" in line} == {"b in alone b", "c in alone c"}
    assert log[0].startswith("stuck in ")  # (the batch ran the stuck one first, then handed back)


async def test_past_the_queue_a_call_is_answered_503_at_once_and_the_queued_ones_still_run() -> None:
    # overload is said at once (503 with Retry-After, which a console's retry honours) instead of
    # a wait without end; what was queued before is still answered
    stuck = threading.Event()
    log: list[str] = []
    batcher = Batcher(_Service(), queue=2)  # type: ignore[arg-type]
    call = _calls(log, stuck)
    answers: list[str] = []

    async def one(name: str) -> None:
        answers.append(await batcher.call(call, "console", name, _never_alone))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(batcher.run)
        nursery.start_soon(one, "stuck")
        await trio.testing.wait_all_tasks_blocked()  # the batch thread holds "stuck"
        nursery.start_soon(one, "b")
        nursery.start_soon(one, "c")
        await trio.testing.wait_all_tasks_blocked()  # the queue is full: b and c
        with trio.fail_after(1):  # at once, not after the stuck call
            try:
                await batcher.call(call, "console", "d", _never_alone)
            except ApiError as refused:
                assert (refused.status, refused.code, refused.retry_after) == (503, "busy", Batcher.RETRY_AFTER)
            else:
                raise AssertionError("a call past the queue was taken")
        stuck.set()
        while len(answers) < 3:
            await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert sorted(answers) == ["B", "C", "STUCK"]
    assert not any(line.startswith("d ") for line in log)
