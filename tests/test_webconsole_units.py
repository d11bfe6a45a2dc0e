"""The web consoles' pure parts: session cookies, CSRF tokens, chart geometry, amounts, redirects."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vhw.webconsole import charts
from vhw.webconsole.desk import parse_cents
from vhw.webconsole.sessions import LIFETIME, Sessions
from vhw.webconsole.web import _local, parse_time

KEY, OTHER = b"k" * 32, b"o" * 32


def test_a_session_opens_as_issued_and_expires():
    s = Sessions(KEY)
    cookie, session = s.issue("operator", "ops", "abcd", now=1000)
    assert s.open(cookie, 1001) == session
    assert s.open(cookie, 1000 + LIFETIME) is None  # expired
    assert Sessions(OTHER).open(cookie, 1001) is None  # another console's key


@given(st.binary(min_size=1, max_size=4), st.integers(min_value=0))
def test_an_altered_cookie_opens_nothing(junk, where):
    s = Sessions(KEY)
    cookie, _ = s.issue("staff", "sam", "staff", now=1000)
    at = where % len(cookie)
    altered = cookie[:at] + junk.hex() + cookie[at + 1 :]
    if altered != cookie:
        assert s.open(altered, 1001) is None


@pytest.mark.parametrize("cookie", ["", ".", "a.b", "e30.", "x" * 5000, "...", None])
def test_garbage_cookies_open_nothing(cookie):
    assert Sessions(KEY).open(cookie, 0) is None


def test_a_forged_payload_without_the_key_is_refused():
    import base64
    import json

    s = Sessions(KEY)
    cookie, _ = s.issue("staff", "sam", "staff", now=1000)
    body = base64.urlsafe_b64encode(json.dumps(["operator", "ops", "x", "y", 10**12]).encode()).rstrip(b"=").decode()
    assert s.open(body + "." + cookie.split(".")[1], 1001) is None


def test_csrf_tokens_are_bound_to_the_session():
    s = Sessions(KEY)
    _, one = s.issue("operator", "ops", "c", now=0)
    _, two = s.issue("operator", "ops", "c", now=0)
    token = s.csrf_token(one)
    assert s.csrf_ok(one, token)
    assert not s.csrf_ok(two, token)  # another session's token
    assert not s.csrf_ok(one, "")
    assert not s.csrf_ok(one, None)
    assert not s.csrf_ok(one, token[:-1])
    assert not s.csrf_ok(one, "!!not base64!!")
    assert not Sessions(OTHER).csrf_ok(one, token)


def test_a_short_key_is_refused():
    with pytest.raises(ValueError):
        Sessions(b"short")


@given(st.lists(st.integers(min_value=0, max_value=10**6), max_size=40))
def test_bars_fit_the_chart(values):
    c = charts.bars("t", [(str(i), v) for i, v in enumerate(values)])
    assert c.total == f"{sum(values):,}"
    top = charts.nice_max(max(values, default=0))
    assert top >= max(values, default=0)
    for bar in c.bars:
        assert 0 <= bar.height <= c.baseline - charts.TOP + 1e-6
        assert charts.LEFT <= c.left <= bar.x and bar.x + bar.width <= c.width
        assert abs(bar.y + bar.height - c.baseline) < 1e-6
    assert sum(b.show_label for b in c.bars) <= 12
    tick_values = [int(v.replace(",", "")) for _, v in c.ticks]
    assert tick_values == sorted(set(tick_values))  # whole, distinct, rising
    assert tick_values[-1] == top


def test_a_money_chart_writes_amounts_like_the_tables():
    c = charts.bars("Charges per day", [("2026-12-01", 500), ("2026-12-02", 123456)], unit=charts.money)
    assert [b.value for b in c.bars] == ["5.00", "1,234.56"] and c.total == "1,239.56"
    assert [v for _, v in c.ticks] == ["0.00", "400.00", "800.00", "1,200.00", "1,600.00", "2,000.00"]


def test_nice_axis_tops():
    assert [charts.nice_max(v) for v in (0, 1, 2, 3, 6, 11, 21, 51, 101)] == [1, 1, 2, 5, 10, 20, 50, 100, 200]


@pytest.mark.parametrize(
    "text, cents",
    [
        ("20.00", 2000),
        ("4.99", 499),
        ("1", 100),
        (" 7.5 ", 750),
        ("0", None),
        ("-1", None),
        ("1.234", None),
        ("abc", None),
        ("NaN", None),
        ("Infinity", None),
        ("1e9", None),
        ("", None),
    ],
)
def test_amounts(text, cents):
    assert parse_cents(text) == cents


@pytest.mark.parametrize(
    "target, ok",
    [
        ("/console/user/x", True),
        ("https://evil.example/", False),
        ("//evil.example/console/", False),
        ("/console\\@evil", False),
        ("/other", False),
    ],
)
def test_redirects_stay_inside_the_console(target, ok):
    assert (_local(target) == target) is ok


def test_times_typed_in_forms():
    assert parse_time("1970-01-02") == 86400
    assert parse_time("1970-01-01T01:00") == 3600
    assert parse_time("yesterday") is None


def test_a_download_is_taken_once_by_its_session(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from vhw.webconsole import downloads as dl

    store = dl.Downloads(tmp_path / "files")
    assert oct((tmp_path / "files").stat().st_mode & 0o777) == "0o700"
    token = store.put("sid-1", "new.card", b"card bytes", {"mc_id": "MC-1"})
    assert store.peek(token, "sid-1") == ({"mc_id": "MC-1"}, True) and store.peek(token, "sid-2") is None
    assert store.take(token, "sid-2") is None  # another session: refused, and nothing taken
    assert store.take("not-a-token", "sid-1") is None
    with ThreadPoolExecutor(8) as pool:  # eight takers at once (as from several workers): one wins
        got = list(pool.map(lambda _: store.take(token, "sid-1"), range(8)))
    assert [g for g in got if g] == [("new.card", b"card bytes")]
    assert store.peek(token, "sid-1") == ({"mc_id": "MC-1"}, False)  # the page about it stays
    assert [p.suffix for p in (tmp_path / "files").iterdir()] == [".info"]
    old = store.put("sid-1", "old.card", b"x")
    monkeypatch.setattr(dl.time, "time", lambda: 10**12)  # long after
    assert store.take(old, "sid-1") is None and store.peek(token, "sid-1") is None
    store.sweep()
    assert list((tmp_path / "files").iterdir()) == []
