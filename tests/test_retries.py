"""Riding through a failover: what the server reruns, and what the client retries.

The pure policies, with the transport replaced; `tests/test_cluster.py` runs them for real, against
a PostgreSQL cluster failing over under load.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from vhw import protocol as p
from vhw.client import Client, tls_context
from vhw.errors import NetworkError, ServerError
from vhw.server.store import CONFLICT_RERUNS, RERUNS, Conflict, Store, Unavailable

from .servers import RunningServer
from .test_mount import wait_until

# The server's one retry policy (Store.run), which every call of the licensing service runs under.


def test_a_call_that_failed_before_committing_is_run_again():
    calls = []

    def flaky(actor, msg):
        calls.append(msg)
        if len(calls) < 3:
            raise Unavailable("connection lost", maybe_committed=False)
        return "done"

    assert Store().run(flaky, "console", "m") == "done" and len(calls) == 3


def test_a_call_that_may_have_committed_is_not_rerun():
    calls = []

    def lost_commit(actor, msg):
        calls.append(msg)
        raise Unavailable("connection lost while committing", maybe_committed=True)

    with pytest.raises(Unavailable):
        Store().run(lost_commit, "console", "m")
    assert len(calls) == 1


def test_a_call_still_failing_after_the_reruns_is_answered_unavailable():
    calls = []

    def down(actor, msg):
        calls.append(msg)
        raise Unavailable("no primary", maybe_committed=False)

    with pytest.raises(Unavailable):
        Store().run(down, "console", "m")
    assert len(calls) == 1 + len(RERUNS)


def test_a_call_that_lost_a_race_runs_again_at_once_a_few_times():
    calls = []

    def racing(actor, msg):
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise Conflict("UNIQUE constraint failed")
        return "done"

    assert Store().run(racing, "console", "m") == "done" and len(calls) == 3
    assert calls[-1] - calls[0] < 0.5  # at once: no pause between

    def always(actor, msg):
        calls.append(0.0)
        raise Conflict("UNIQUE constraint failed")

    calls.clear()
    with pytest.raises(Conflict):
        Store().run(always, "console", "m")
    assert len(calls) == 1 + CONFLICT_RERUNS


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    srv = RunningServer.start(tmp_path_factory.mktemp("retries") / "home")
    yield srv
    srv.stop()


def answering(*statuses: tuple[int, str]):
    """A transport answering these (status, error code) in turn, then 200; and what it was asked."""
    asked: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        if len(asked) <= len(statuses):
            status, code = statuses[len(asked) - 1]
            return httpx.Response(status, json={"error": code, "message": "x"}, headers={"retry-after": "0"})
        return httpx.Response(200, json=p.encode(p.Done()))

    return httpx.MockTransport(handle), asked


def client(ca, transport, notes, retry_for=5.0) -> Client:
    return Client(ca.url, tls_context(ca.ca_der), transport=transport, retry_for=retry_for, notice=notes.append)


def test_the_client_retries_503_and_says_so_once(ca):
    transport, asked = answering((503, "unavailable"), (503, "unavailable"), (503, "outcome-unknown"))
    notes: list[str] = []
    with client(ca, transport, notes) as c:
        assert c.call("/v1/console/confirm", p.Done(), p.Done) == p.Done()
    assert len(asked) == 4 and len(notes) == 1 and "unavailable, retrying" in notes[0]


def test_an_outcome_unknown_is_not_repeated_for_a_call_that_must_not_be(ca):
    transport, asked = answering((503, "outcome-unknown"))
    notes: list[str] = []
    with client(ca, transport, notes) as c, pytest.raises(ServerError, match="503"):
        c.call("/v1/operator/reissue", p.Done(), p.Done)
    assert len(asked) == 1  # (a second card would have been made)
    transport, asked = answering((503, "unavailable"))
    with client(ca, transport, notes) as c:
        assert c.call("/v1/operator/reissue", p.Done(), p.Done) == p.Done()  # nothing happened: safe
    assert len(asked) == 2


def test_the_client_gives_up_after_its_time(ca):
    transport, asked = answering(*[(503, "unavailable")] * 1000)
    notes: list[str] = []
    with client(ca, transport, notes, retry_for=0.6) as c, pytest.raises(ServerError, match="503"):
        c.call("/v1/console/acquire", p.Done(), p.Done)
    assert 1 < len(asked) < 20 and len(notes) == 1


def test_a_certificate_problem_is_not_retried(ca, tmp_path):
    other = RunningServer.start(tmp_path / "other")  # another platform: another CA
    try:
        notes: list[str] = []
        with Client(other.url, tls_context(ca.ca_der), retry_for=30, notice=notes.append) as c:
            with pytest.raises(NetworkError, match="not signed by the trusted platform CA"):
                c.get("/v1/health", p.Health)
        assert notes == []
    finally:
        other.stop()


def test_a_commit_no_standby_confirms_is_an_unknown_outcome_not_an_answer():
    """A primary whose synchronous standby is gone (a new primary before any standby follows it)
    holds every commit. The statement timeout cuts the wait short; PostgreSQL then commits locally
    with only a warning, so the store must not take that for success: the request is answered
    "outcome unknown" (the client repeats it, and the lost-answer path finds what committed), and it
    is never rerun on the spot."""
    from vhw.server.store import PostgresStore

    from .pg import Cluster

    # (commits wait for the standby only where a transaction asks: setting up waits for nothing)
    pg = Cluster.start(settings={"synchronous_standby_names": "nobody", "synchronous_commit": "local"})
    try:
        store = PostgresStore(pg.new_database(), statement_timeout=0.5)
        with store.transaction() as tx:
            tx.execute("CREATE TABLE t (n int)")
        began = time.monotonic()
        with pytest.raises(Unavailable) as caught:
            with store.transaction() as tx:
                tx.execute("SET LOCAL synchronous_commit = on")  # (as on the cluster)
                tx.execute("INSERT INTO t VALUES (1)")
        assert caught.value.maybe_committed and "no standby has it" in str(caught.value)
        assert time.monotonic() - began < 5  # cut short, not held
        with store.transaction() as tx:  # committed here, and only here
            assert tx.row("SELECT count(*) FROM t")[0] == 1
        store.close()
    finally:
        pg.stop()


def test_the_commit_watchdog_cancels_only_what_is_overdue_and_wakes_only_when_it_must():
    """The watchdog sleeps to the earliest deadline (or a second, with none): an arm with a later
    deadline does not wake it (under load, never), an earlier one does, and a disarmed commit is
    never cancelled. Its own thread and clock, with connections that only note the cancel."""
    from vhw.server.store import _Watchdog

    class Conn:
        def __init__(self) -> None:
            self.cancelled_at: float | None = None

        def cancel_safe(self, timeout: float) -> None:
            self.cancelled_at = time.monotonic()

    class CountingCondition(threading.Condition):
        notified = 0

        def notify(self, n: int = 1) -> None:
            self.notified += 1
            super().notify(n)

    dog = _Watchdog()
    dog._cv = cv = CountingCondition()
    late, early, done = Conn(), Conn(), Conn()
    began = time.monotonic()
    dog.arm(late, 30.0)
    wait_until(lambda: dog._asleep_until > began + 29)  # (its thread started, and sleeps to that)
    dog.disarm(dog.arm(done, 0.2))  # committed in time
    dog.arm(early, 0.3)  # earlier than what the thread sleeps to: it must wake for it
    wait_until(lambda: early.cancelled_at is not None)
    assert early.cancelled_at is not None and early.cancelled_at - began >= 0.3
    woken = cv.notified
    assert woken >= 1
    dog.arm(Conn(), 40.0)  # later than the 30 s it sleeps to now: nobody woken
    time.sleep(0.3)
    assert cv.notified == woken
    assert done.cancelled_at is None and late.cancelled_at is None


def test_a_slow_cancel_holds_up_no_other_commit():
    """A cancel request can take seconds (the primary unreachable); meanwhile other commits must
    still arm and disarm the watchdog, not wait for it."""
    from vhw.server.store import _Watchdog

    release = threading.Event()
    started = threading.Event()

    class StuckConn:
        def cancel_safe(self, timeout: float) -> None:
            started.set()
            release.wait(10)

    dog = _Watchdog()
    dog.arm(StuckConn(), 0.05)
    assert started.wait(10)
    other = threading.Thread(target=lambda: dog.disarm(dog.arm(StuckConn(), 5.0)))
    other.start()
    other.join(5)
    armed_meanwhile = not other.is_alive()
    release.set()
    other.join()
    assert armed_meanwhile
