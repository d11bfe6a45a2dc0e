"""The web consoles in a real browser (Debian's Chromium, driven by Playwright) against real
servers on 127.0.0.1 over TLS, and their security properties over HTTP.

The browser story: sign in, find a user from a typed label (a mistyped check character caught on
the page), repair the HDD and install again with `vhw`, reissue the card and play with the new one
(the old one refused), search the audit log, read the dashboard; and at the broker: accounts, a
top-up, the ledger balanced, revenue. Screenshots of the main pages go to a temporary folder
(``make screens`` writes them to docs/screens/).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from vhw.devices import card as card_dev
from vhw.devices.hdd import HddImage
from vhw.samples import build_samples
from vhw.server.credentials import Credential

from .conftest import PLAY, USER
from .servers import RunningServer, factory, publish, start_brokered, stop_brokered

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# screenshots go to a temporary folder (tests change no tracked file); `make screens` sets
# VHW_SCREENS=docs/screens to refresh the README's
SCREENS = Path(os.environ.get("VHW_SCREENS") or tempfile.mkdtemp(prefix="vhw-screens-"))
EVIL = "Cave <script>window.pwned=1</script>"

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect
if not os.path.exists(CHROMIUM):
    pytest.skip("Debian's chromium is not installed (make test installs it)", allow_module_level=True)


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    server = RunningServer.start(tmp_path_factory.mktemp("web") / "home")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    # The platform CA is not in Chromium's store: the test accepts the server's certificate, the
    # connection is TLS all the same.
    context = browser.new_context(
        ignore_https_errors=True, viewport={"width": 1200, "height": 900}, accept_downloads=True
    )
    pg = context.new_page()
    yield pg
    context.close()


def shot(page, name: str) -> None:
    SCREENS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENS / f"{name}.png"), full_page=True)


def token(srv, role: str) -> str:
    return Credential.load(srv.credential(role)).token


def every_input_labelled(page) -> list[str]:
    """The visible form fields of the page that no <label> names (should be none)."""
    return page.evaluate("""() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
        .filter(e => !e.labels || e.labels.length === 0).map(e => e.name || e.id)""")


def phone_problems(page) -> list[str]:
    """What does not fit at the page's (phone) width: an ID broken across lines, or anything that
    runs past the right edge (a cut-off column), or a sideways scroll."""
    return page.evaluate("""() => {
        const width = document.documentElement.clientWidth, out = [];
        if (document.documentElement.scrollWidth > width + 1) out.push('the page scrolls sideways');
        for (const e of document.querySelectorAll('.id')) {
            const lines = new Set([...e.getClientRects()].map(r => Math.round(r.top)));
            if (lines.size > 1) out.push('ID broken: ' + e.textContent);
        }
        const parts = 'main td, main tbody th, main caption, main .id, main input, main button';
        for (const e of document.querySelectorAll(parts)) {
            const r = e.getBoundingClientRect();
            if (r.width && (r.right > width + 1 || r.left < -1)) out.push('cut off: ' + e.textContent.slice(0, 40));
        }
        for (const e of document.querySelectorAll('main .scroll'))
            if (e.scrollWidth > e.clientWidth + 1) out.push('a table scrolls sideways: ' + e.textContent.slice(0, 40));
        // a table's row as a card: each cell at least as tall as its label, none over the next
        for (const row of document.querySelectorAll('main table.cards tbody tr')) {
            const cells = [...row.querySelectorAll('td')];
            for (const [i, c] of cells.entries()) {
                const r = c.getBoundingClientRect();
                const label = parseFloat(getComputedStyle(c, '::before').height) || 0;
                if (r.height + 1 < label) out.push('a label taller than its cell: ' + c.dataset.label);
                const next = cells[i + 1];
                if (next && next.getBoundingClientRect().top + 1 < r.bottom)
                    out.push('cells overlap: ' + c.dataset.label);
            }
        }
        return out;
    }""")


def caption_above_each_chart(page) -> bool:
    return page.evaluate("""() => [...document.querySelectorAll('figure.chart')].every(f =>
        f.querySelector('figcaption').getBoundingClientRect().bottom
        <= f.querySelector('svg').getBoundingClientRect().top + 1)""")


def game(tmp_path: Path, name: str = EVIL) -> Path:
    src = build_samples(tmp_path / "samples")["game"]
    (src / "vhw-title.json").write_text(json.dumps({"name": name, "kind": "game", "entry": "cave.py"}))
    return src


def play(cli, console: Path, title: str):
    return cli("console", "play", "--console", console, title, "--moves", "d")


def sign_in_by_keyboard(page, base: str, secret: str) -> None:
    page.goto(base + "/console/")
    assert page.url.startswith(base + "/console/login")
    # the field takes the focus by itself (autofocus); then only keys
    page.wait_for_function("document.activeElement && document.activeElement.name === 'token'")
    page.keyboard.type(secret)
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*/console/lookup$"))


# -- the repair center ----------------------------------------------------------------------------


def test_repair_center_story_in_a_browser(cli, srv, tmp_path, page):
    src = game(tmp_path)
    disc, disc2, *_ = publish(cli, srv, src, tmp_path, "WEB-1", count=12)  # (audit entries for 2 pages)
    alice = factory(cli, srv, tmp_path / "alice")
    con = ["--console", alice["console"]]
    assert cli("console", "register", *con).code == 0
    assert cli("console", "insert-disc", disc, *con).code == 0
    assert cli("console", "install", *con).code == 0
    mc_id = str(card_dev.load(alice["card"]).mc_id)

    fetched = []  # every URL the browser asks for: nothing but this server
    page.on("request", lambda request: fetched.append(request.url))
    # sign in, by keyboard alone
    page.goto(srv.url + "/console/lookup")
    assert "/console/login" in page.url
    assert every_input_labelled(page) == []
    shot(page, "login")
    sign_in_by_keyboard(page, srv.url, token(srv, "operator"))

    # a label with a mistyped check character is caught on the page
    typo = mc_id[:-1] + ("0" if mc_id[-1] != "0" else "1")
    page.get_by_label("MC-ID, User ID, Client ID, HDD-ID or MID").fill(typo)
    page.keyboard.press("Enter")
    assert "check character" in page.get_by_role("alert").inner_text()
    page.get_by_label("MC-ID, User ID, Client ID, HDD-ID or MID").fill(mc_id.lower().replace("-", " "))
    page.get_by_role("button", name="Look up").click()
    link = page.locator("td.id a").first
    user_id = link.inner_text()
    assert user_id.startswith("US-")
    shot(page, "lookup")
    link.click()
    # the user's page: devices, the title (its name escaped, shown as text), confirmed
    assert page.get_by_role("heading", level=1).inner_text() == f"User {user_id}"
    assert EVIL in page.locator("table", has_text="Titles").inner_text()
    assert page.evaluate("window.pwned === undefined")
    assert "confirmed" in page.locator("table", has_text="Titles").inner_text()
    assert "issue-keys" in page.locator("table", has_text="audit entries").inner_text()
    shot(page, "user")

    # repair: the HDD is exchanged (FIG. 13)
    new_hdd = tmp_path / "new.hdd"
    man = ["--credential", srv.credential("manufacturer"), "--server", srv.url]
    assert cli("hdd", "format", new_hdd, "--size", "256M", *man).code == 0
    with HddImage.open(new_hdd) as img:
        new_hdd_id = str(img.hdd_id)
    with HddImage.open(alice["hdd"]) as img:
        old_hdd_id = str(img.hdd_id)
    page.get_by_role("link", name="Repair a console or HDD…").click()
    page.wait_for_url(re.compile(r".*/console/repair/US-"))
    assert every_input_labelled(page) == []
    page.get_by_label("New HDD-ID").fill(new_hdd_id)
    page.get_by_role("button", name="Show what will change").click()
    preview = page.locator("section.confirm").inner_text()
    assert old_hdd_id in preview and new_hdd_id in preview and "1 disc(s) of this user stay reserved" in preview
    shot(page, "repair-confirm")
    page.get_by_role("button", name="Confirm the repair").click()
    page.wait_for_url(re.compile(r".*/console/repaired/\d+$"))  # POST, redirect, GET
    changed = page.locator("ul.changed").inner_text()
    assert f"{old_hdd_id} → {new_hdd_id}" in changed and "1 disc(s) kept for this user alone" in changed
    shot(page, "repaired")
    repaired_url = page.url
    # Back shows the preview again (a GET), Forward the result: neither resubmits, nothing repeats
    assert page.go_back().status == 200 and "new_hdd_id=" in page.url
    assert page.get_by_role("button", name="Confirm the repair").is_visible()
    assert page.go_forward().status == 200 and page.url == repaired_url
    assert page.reload().status == 200 and f"{old_hdd_id} → {new_hdd_id}" in page.locator("ul.changed").inner_text()
    page.get_by_role("link", name="The user's page").click()
    retired = page.locator("#retired").inner_text()  # the old HDD is listed, with what replaced it
    assert old_hdd_id in retired and new_hdd_id in retired and "repair-device" in retired
    # ... and with `vhw` the user installs again onto the new HDD, and plays
    fixed = tmp_path / "fixed"
    assert cli("console", "setup", fixed, "--rom", alice["rom"], "--hdd", new_hdd).code == 0
    assert cli("console", "insert-card", alice["card"], "--console", fixed).code == 0
    assert cli("console", "insert-disc", disc, "--console", fixed).code == 0
    r = cli("console", "install", "--console", fixed)
    assert r.code == 0, r
    assert play(cli, fixed, "WEB-1").code == 18  # (the game's "unfinished" after one move)

    # reissue the card (FIG. 14): confirm with the typed User ID, download the new card
    page.goto(f"{srv.url}/console/user/{user_id}")
    page.get_by_role("link", name="Reissue the memory card…").click()
    assert "epoch 0 → 1" in page.locator("section.confirm").inner_text()
    page.get_by_label("The User ID as the user wrote it down").fill(user_id)
    shot(page, "reissue-confirm")
    page.get_by_label("The User ID as the user wrote it down").fill(user_id[:-1] + "?")
    page.get_by_role("button", name="Confirm and make the new card").click()
    field = page.get_by_label("The User ID as the user wrote it down")  # kept, the error beside it
    assert field.input_value() == user_id[:-1] + "?" and field.get_attribute("aria-invalid") == "true"
    assert page.locator("#f-user_id-error").is_visible()
    field.fill(user_id)
    page.get_by_role("button", name="Confirm and make the new card").click()
    page.wait_for_url(re.compile(r".*/console/reissued/[^/]+$"))
    assert "New memory card" in page.get_by_role("status").inner_text()
    with page.expect_download() as got:
        page.get_by_role("link", name="Download the new card file").click()
    new_card = tmp_path / "new.card"
    got.value.save_as(new_card)
    shot(page, "reissued")
    assert page.reload().status == 200 and page.locator("#card-file-gone").is_visible()  # once only
    back = page.go_back()  # the form as it was left (a GET: the mistyped ID), never a resubmission
    assert back.status == 422 and "/console/reissue/" in page.url
    assert card_dev.load(new_card).mc_id != card_dev.load(alice["card"]).mc_id
    # the retired card's MC-ID finds its user, and its audit entries
    page.goto(f"{srv.url}/console/lookup?id={mc_id}")
    retired = page.locator("section.retired")
    assert "Retired memory card" in retired.inner_text() and str(card_dev.load(new_card).mc_id) in retired.inner_text()
    shot(page, "lookup-retired")
    retired.get_by_role("link", name="Audit entries about").click()
    assert "reissue-card" in page.locator("tbody").inner_text()
    page.go_back()
    page.locator("section.retired").get_by_role("link", name=user_id).click()
    assert page.get_by_role("heading", level=1).inner_text() == f"User {user_id}"
    assert mc_id in page.locator("#retired").inner_text()
    # ... titles play with the new card, and the old card is refused there after it
    assert cli("console", "eject-card", "--console", fixed).code == 0
    assert cli("console", "insert-card", new_card, "--console", fixed).code == 0
    assert play(cli, fixed, "WEB-1").code == 18
    assert cli("console", "eject-card", "--console", fixed).code == 0
    assert cli("console", "insert-card", alice["card"], "--console", fixed).code == 0
    r = play(cli, fixed, "WEB-1")
    assert r.code == 14 and r.err.startswith(PLAY) and "replaced by a reissued one" in r.err, r
    assert cli("console", "eject-disc", "--console", fixed).code == 0
    assert cli("console", "insert-disc", disc2, "--console", fixed).code == 0
    r = cli("console", "acquire", "--console", fixed)  # and by the server (a refusal on the dashboard)
    assert (r.code, r.err) == (11, USER)

    # the audit log: by ID and kind, paged
    page.get_by_role("link", name="Audit log").click()
    page.get_by_label("ID (any label)").fill(user_id)
    page.get_by_label("Kind").select_option("reissue-card")
    page.get_by_role("button", name="Search").click()
    page.wait_for_url(re.compile(r".*kind=reissue-card"))
    rows = page.locator("tbody tr")
    expect(rows).to_have_count(1)
    assert "reissue-card" in rows.first.inner_text()
    # the detail reads as fields: names, and the IDs as IDs
    fields = rows.first.locator("dl.fields")
    assert fields.locator("dt").all_inner_texts() == ["epoch", "new mc id", "old mc id"]
    assert fields.locator("dd.id").all_inner_texts() == [str(card_dev.load(new_card).mc_id), mc_id]
    assert "{" not in rows.first.inner_text()
    shot(page, "audit")
    page.get_by_label("ID (any label)").fill("")
    page.get_by_label("Kind").select_option("")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("tbody tr")).to_have_count(25)
    first_page = page.locator("tbody tr").first.inner_text()
    page.get_by_role("link", name="Older →").click()
    page.wait_for_url(re.compile(r".*page=2"))
    assert page.locator("tbody tr").first.inner_text() != first_page
    page.get_by_label("From (UTC, YYYY-MM-DD[THH:MM])").fill("next week")
    page.get_by_role("button", name="Search").click()
    assert "is not a time" in page.get_by_role("alert").first.inner_text()
    assert page.get_by_label("From (UTC, YYYY-MM-DD[THH:MM])").input_value() == "next week"

    # the dashboard: three SVG charts, drawn by the server
    page.get_by_role("link", name="Dashboard").click()
    expect(page.locator("figure.chart svg")).to_have_count(3)
    assert "Keys issued per hour" in page.content()
    assert "User ID 1" in page.locator("figure.chart", has_text="Refusals").locator("svg > title").text_content()
    assert caption_above_each_chart(page)
    shot(page, "dashboard")
    # the header names who is signed in, once
    header = page.locator("header").inner_text()
    assert "Signed in as operator" in header and header.count("operator") == 1
    # a friendly page for an address that does not exist, and the way back
    r = page.goto(srv.url + "/console/no-such-page")
    assert r.status == 404 and page.get_by_role("heading", level=1).inner_text() == "There is no such page"
    page.get_by_role("link", name="Go to the start page").click()
    page.wait_for_url(re.compile(r".*/console/lookup$"))
    icon = page.locator("link[rel=icon]").get_attribute("href")
    got = page.request.get(srv.url + icon)
    assert got.status == 200 and got.headers["content-type"] == "image/svg+xml" and b"<svg" in got.body()
    # at phone width the pages still fit: no ID broken, no column cut off
    page.set_viewport_size({"width": 390, "height": 800})
    for path in (
        f"/console/lookup?id={mc_id}",
        f"/console/user/{user_id}",
        "/console/dashboard",
        f"/console/audit?id={user_id}",
        repaired_url.removeprefix(srv.url),
    ):
        page.goto(srv.url + path)
        assert phone_problems(page) == [], path
    page.goto(f"{srv.url}/console/user/{user_id}")
    shot(page, "user-phone")
    page.goto(f"{srv.url}/console/audit?id={user_id}")
    shot(page, "audit-phone")
    # sign out: the session's pages are gone
    page.get_by_role("button", name="Sign out").click()
    page.goto(f"{srv.url}/console/user/{user_id}")
    assert "/console/login" in page.url
    assert fetched and all(url.startswith(srv.url + "/console/") for url in fetched), set(fetched)


# -- security over HTTP -----------------------------------------------------------------------------


def client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, verify=False, follow_redirects=False, timeout=30)


@contextlib.contextmanager
def signed_in(url: str, form: dict):
    with client(url) as c:
        r = c.get("/console/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', r.text).group(1)
        r = c.post("/console/login", data={**form, "csrf": csrf})
        assert r.status_code == 303, r.text
        yield c


def csrf_of(c: httpx.Client, path: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', c.get(path).text).group(1)


REPAIR_GETS = [
    "/console/",
    "/console/lookup",
    "/console/lookup?id=MC-0000-0000-0000-0",
    "/console/audit",
    "/console/dashboard",
    "/console/user/US-0000-0000-0000-0000-0",
    "/console/repair/US-0000-0000-0000-0000-0",
    "/console/reissue/US-0000-0000-0000-0000-0",
    "/console/card/whatever",
]
REPAIR_POSTS = [
    "/console/logout",
    "/console/repair/US-0000-0000-0000-0000-0",
    "/console/reissue/US-0000-0000-0000-0000-0",
]


def test_no_page_or_action_without_a_session(srv):
    with client(srv.url) as c:
        for path in REPAIR_GETS:
            r = c.get(path)
            assert r.status_code == 303 and r.headers["location"].startswith("/console/login?next="), path
        for path in REPAIR_POSTS:
            r = c.post(path, data={"csrf": "x", "confirm": "yes", "new_hdd_id": "HD-0000-0000-0000-0"})
            assert r.status_code == 403 and "Sign in first" in r.text, path
        # a cookie made up, or signed by another key, is no session
        c.cookies.set("vhw_console", "e30.AAAA", domain="127.0.0.1", path="/console")
        assert c.get("/console/lookup").status_code == 303


def test_only_the_operator_credential_signs_in(srv):
    for role in ("broker", "publisher", "manufacturer"):
        with client(srv.url) as c:
            r = c.get("/console/login")
            csrf = re.search(r'name="csrf" value="([^"]+)"', r.text).group(1)
            r = c.post("/console/login", data={"token": token(srv, role), "csrf": csrf})
            assert r.status_code == 401 and "vhw_console" not in r.headers.get("set-cookie", ""), role
    with client(srv.url) as c:  # a sign-in form without its token (a login CSRF) is refused
        c.get("/console/login")
        r = c.post("/console/login", data={"token": token(srv, "operator")})
        assert r.status_code == 403 and "vhw_console" not in r.headers.get("set-cookie", "")


def test_session_cookie_flags(srv):
    with client(srv.url) as c:
        r = c.get("/console/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', r.text).group(1)
        r = c.post("/console/login", data={"token": token(srv, "operator"), "csrf": csrf})
        cookie = [v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("vhw_console=")][0]
        flags = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")[1:]}
        assert "secure" in flags and "httponly" in flags
        assert flags["samesite"].lower() == "samesite=strict"
        assert flags["path"] == "Path=/console"
        page = c.get("/console/lookup")
        assert page.status_code == 200
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"


def users_row(srv, user_id: str):
    store = srv.home.store()
    try:
        with store.transaction() as tx:
            return tx.one("SELECT mc_id, client_id, hdd_id, card_epoch FROM users WHERE user_id = ?", user_id)
    finally:
        store.close()


def test_posts_without_the_right_csrf_token_change_nothing(cli, srv, tmp_path):
    dev = factory(cli, srv, tmp_path / "bob")
    assert cli("console", "register", "--console", dev["console"]).code == 0
    user_id = json.loads(cli("console", "status", "--json", "--console", dev["console"]).out)["slots"]["1"]["user_id"]
    new_hdd = tmp_path / "new.hdd"
    assert (
        cli(
            "hdd",
            "format",
            new_hdd,
            "--size",
            "64M",
            "--credential",
            srv.credential("manufacturer"),
            "--server",
            srv.url,
        ).code
        == 0
    )
    with HddImage.open(new_hdd) as img:
        new_hdd_id = str(img.hdd_id)
    before = users_row(srv, user_id)
    with (
        signed_in(srv.url, {"token": token(srv, "operator")}) as c,
        signed_in(srv.url, {"token": token(srv, "operator")}) as other,
    ):
        wrong = csrf_of(other, "/console/lookup")  # a real token, of another session
        for csrf in (None, "", "x" * 43, wrong):
            data = {"confirm": "yes", "new_hdd_id": new_hdd_id} | ({} if csrf is None else {"csrf": csrf})
            r = c.post(f"/console/repair/{user_id}", data=data)
            assert r.status_code == 403 and "nothing was changed" in r.text, csrf
            r = c.post(
                f"/console/reissue/{user_id}", data={"user_id": user_id} | ({} if csrf is None else {"csrf": csrf})
            )
            assert r.status_code == 403, csrf
        assert users_row(srv, user_id) == before
        # with the session's own token it goes through (so the refusals above were the token's)
        r = c.post(
            f"/console/repair/{user_id}",
            data={"confirm": "yes", "new_hdd_id": new_hdd_id, "csrf": csrf_of(c, f"/console/repair/{user_id}")},
        )
        assert r.status_code == 303 and r.headers["location"].startswith("/console/repaired/")
        assert users_row(srv, user_id)[2] == new_hdd_id
        result = c.get(r.headers["location"])  # the result is a page of its own (POST, redirect, GET)
        assert result.status_code == 200 and "What changed" in result.text and new_hdd_id in result.text
        assert other.get(r.headers["location"]).status_code == 200  # (any operator may read it)
        # the new card file is fetched once, by the session that made it
        r = c.post(f"/console/reissue/{user_id}", data={"user_id": user_id, "csrf": csrf_of(c, "/console/lookup")})
        assert r.status_code == 303 and r.headers["location"].startswith("/console/reissued/")
        assert other.get(r.headers["location"]).status_code == 404  # the page, like its file, is this session's
        r = c.get(r.headers["location"])
        link = re.search(r'href="(/console/card/[^"]+)"', r.text).group(1)
        assert other.get(link).status_code == 404
        assert c.get(link).status_code == 200 and c.get(link).status_code == 404
    # the server's log shows the requests, and neither the download's token nor the operator's
    log = srv.log.read_text()
    assert "/console/card/(token)" in log and link.rsplit("/", 1)[1] not in log
    assert "/console/reissued/(token)" in log
    assert token(srv, "operator") not in log


def test_the_readme_makes_chromium_trust_the_platform_ca(srv, tmp_path):
    """The README's block, run as written with a fresh HOME: then Chromium, with no certificate
    error allowed, opens the console (and without the block, it refuses the same page)."""
    from .test_readme import ROOT, blocks, section

    script = section(blocks((ROOT / "README.md").read_text()), "#### Making the browser trust")
    home = tmp_path / "home"
    home.mkdir()
    vhw_home = tmp_path / "vhw-home"  # as the README has it: the server's home is $VHW_HOME/server
    vhw_home.mkdir()
    (vhw_home / "server").symlink_to(srv.home.root)
    env = {**os.environ, "HOME": str(home), "VHW_HOME": str(vhw_home)}
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "vhw platform CA" in r.stdout, r.stderr

    def open_console(user_home: Path):  # (in a thread of its own: the module's browser holds this one)
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(open_console_here, user_home).result()

    def open_console_here(user_home: Path):
        with playwright_api.sync_playwright() as pw:
            chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, env={**env, "HOME": str(user_home)})
            try:
                pg = chromium.new_page()  # (no ignore_https_errors: a certificate error fails the load)
                response = pg.goto(srv.url + "/console/login")
                return response.status, pg.get_by_role("heading", level=1).inner_text()
            finally:
                chromium.close()

    assert open_console(home) == (200, "Sign in")
    untrusting = tmp_path / "other-home"
    untrusting.mkdir()
    with pytest.raises(playwright_api.Error, match="ERR_CERT_AUTHORITY_INVALID"):
        open_console(untrusting)


def test_output_is_escaped(cli, srv, tmp_path):
    src = game(tmp_path)
    [disc] = publish(cli, srv, src, tmp_path, "WEB-2")
    dev = factory(cli, srv, tmp_path / "carol")
    con = ["--console", dev["console"]]
    assert cli("console", "register", *con).code == 0
    assert cli("console", "insert-disc", disc, *con).code == 0
    assert cli("console", "acquire", *con).code == 0
    user_id = json.loads(cli("console", "status", "--json", *con).out)["slots"]["1"]["user_id"]
    with signed_in(srv.url, {"token": token(srv, "operator")}) as c:
        html = c.get(f"/console/user/{user_id}").text
        assert "Cave &lt;script&gt;window.pwned=1&lt;/script&gt;" in html and "<script>" not in html
        html = c.get("/console/lookup", params={"id": "<script>alert(1)</script>"}).text
        assert "<script>alert" not in html and "&lt;script&gt;" in html
        html = c.get("/console/audit", params={"since": "<b>x</b>"}).text
        assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html


# -- the broker's desk ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def brokered(tmp_path_factory):
    """A server in broker mode, a broker before it (price 5.00, 70% to the platform), a staff account."""
    server, proc = start_brokered(tmp_path_factory.mktemp("webbroker"), staff=("sam", "sam-secret-pw"))
    yield server
    stop_brokered(server, proc)


def bk(cli, srv, *args):
    return cli("broker", *args, "--home", srv.broker_home)


def test_broker_desk_in_a_browser(cli, brokered, tmp_path, page):
    srv = brokered
    [disc] = publish(cli, srv, game(tmp_path, "Cave"), tmp_path, "WEB-B")
    assert bk(cli, srv, "account", "add", "alice", "--password", "alice-secret-pw").code == 0
    assert bk(cli, srv, "account", "card", "alice", "4242 4242 4242 4242").code == 0
    dev = factory(cli, srv, tmp_path / "alice")
    cfg = dev["console"] / "console.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "server": srv.broker_url}))
    con = ["--console", dev["console"]]
    assert cli("console", "account", "alice", "--password", "alice-secret-pw", *con).code == 0
    assert cli("console", "register", *con).code == 0
    assert cli("console", "insert-disc", disc, *con).code == 0
    assert cli("console", "install", *con).code == 0  # one key charged to the card on file

    base = srv.broker_url
    page.goto(base + "/console/")
    assert "/console/login" in page.url and every_input_labelled(page) == []
    page.get_by_label("Staff account").fill("sam")
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Sign in").click()
    assert "Wrong credential" in page.get_by_role("alert").inner_text()
    assert page.get_by_label("Staff account").input_value() == "sam"  # kept; the password is not
    assert page.get_by_label("Password").input_value() == ""
    page.get_by_label("Staff account").fill("sam")
    page.get_by_label("Password").fill("sam-secret-pw")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r".*/console/accounts$"))
    assert "alice" in page.locator("table").inner_text()
    shot(page, "broker-accounts")
    page.get_by_role("link", name="alice").click()
    assert page.locator("#balance").inner_text() == "0.00 EUR"  # every amount with its currency
    assert "WEB-B" in page.locator("table", has_text="Charges").inner_text()
    page.get_by_label("Top up from the card on file").fill("20.00")
    page.get_by_role("button", name="Top up").click()
    expect(page.locator("#balance")).to_have_text("20.00 EUR")
    added = page.locator("#added").inner_text()  # what the top-up added, and from which card
    assert added.startswith("Added 20.00 EUR from the card on file **** 4242 (txn_") and "now 20.00 EUR" in added
    # Back after the top-up is the account page again (a GET): nothing is paid twice
    topped_url = page.url
    assert page.go_back().status == 200 and page.locator("#balance").inner_text() == "20.00 EUR"
    assert page.go_forward().status == 200 and page.url == topped_url
    assert page.reload().status == 200 and page.locator("#balance").inner_text() == "20.00 EUR"
    page.get_by_label("Top up from the card on file").fill("twenty")
    page.get_by_role("button", name="Top up").click()
    amount = page.get_by_label("Top up from the card on file")  # kept as typed, the error beside it
    assert amount.input_value() == "twenty" and amount.get_attribute("aria-invalid") == "true"
    assert "Type an amount" in page.locator("#f-amount-error").inner_text()
    assert page.locator("#balance").inner_text() == "20.00 EUR"
    header = page.locator("header").inner_text()
    assert "Signed in as sam (staff)" in header and header.count("sam") == 1
    shot(page, "broker-account")
    page.get_by_role("link", name="Ledger").click()
    state = page.locator("#ledger-state").inner_text()
    assert state.startswith("Balanced") and "charges 5.00 EUR = platform 3.50 EUR + broker 1.50 EUR" in state
    shot(page, "broker-ledger")
    page.get_by_role("link", name="Revenue").click()
    assert "WEB-B" in page.locator("table", has_text="Per title").inner_text()
    expect(page.locator("figure.chart svg")).to_have_count(1)
    chart = page.locator("figure.chart")  # in currency units, like the tables
    assert (
        "EUR" in chart.locator("figcaption").inner_text() and "(total 5.00)" in chart.locator("figcaption").inner_text()
    )
    assert ": 5.00" in chart.locator("rect > title").first.text_content()
    assert "5.00" in chart.locator("text.tick").all_text_contents()
    assert caption_above_each_chart(page)
    shot(page, "broker-revenue")
    page.set_viewport_size({"width": 390, "height": 800})
    for path in ("/console/accounts", "/console/account/alice", "/console/ledger", "/console/revenue"):
        page.goto(base + path)
        assert phone_problems(page) == [], path
    page.goto(base + "/console/account/alice")
    shot(page, "broker-account-phone")
    r = bk(cli, srv, "ledger", "--json")
    assert r.code == 0 and json.loads(r.out)["balanced"]
    assert json.loads(bk(cli, srv, "account", "statement", "alice", "--json").out)["balance_cents"] == 2000
    # the top-up is the staff member's, in the audit log, with its amount in currency
    entries = json.loads(bk(cli, srv, "audit", "--json").out)["entries"]
    [topup] = [e for e in entries if e["action"] == "top-up" and e["subject"] == "alice" and e["actor"] != "broker"]
    assert topup["actor"] == "staff:sam" and topup["detail"]["amount"] == "20.00 EUR", topup


def test_broker_sessions_reach_no_repair_page(brokered, srv):
    broker_token = Credential.load(brokered.credential("broker")).token
    with (
        signed_in(brokered.broker_url, {"password": broker_token}) as desk,
        signed_in(brokered.broker_url, {"name": "sam", "password": "sam-secret-pw"}) as staff,
    ):
        assert desk.get("/console/ledger").status_code == 200
        assert staff.get("/console/ledger").status_code == 200
        for c in (desk, staff):
            cookie = c.cookies.get("vhw_console")
            with client(srv.url) as repair:  # the broker's cookie at the repair center
                repair.cookies.set("vhw_console", cookie, domain="127.0.0.1", path="/console")
                for path in REPAIR_GETS:
                    assert repair.get(path).status_code == 303, path
            # and the repair pages are not on the broker at all
            assert c.get("/console/lookup").status_code == 404
            assert c.post("/console/repair/US-0000-0000-0000-0000-0", data={}).status_code in (404, 405)
    with client(brokered.broker_url) as c:  # and nothing of the desk without a session
        for path in ("/console/accounts", "/console/account/alice", "/console/ledger", "/console/revenue"):
            assert c.get(path).status_code == 303, path
        r = c.post("/console/account/alice/topup", data={"amount": "1000.00"})
        assert r.status_code == 403


def test_staff_passwords_cannot_be_guessed_online(cli, brokered):
    assert bk(cli, brokered, "staff", "add", "ria", "--password", "ria-secret-pw").code == 0

    def attempt(password: str) -> int:
        with client(brokered.broker_url) as c:
            csrf = re.search(r'name="csrf" value="([^"]+)"', c.get("/console/login").text).group(1)
            return c.post("/console/login", data={"name": "ria", "password": password, "csrf": csrf}).status_code

    assert [attempt(f"guess-{i}") for i in range(10)] == [401] * 10
    assert attempt("ria-secret-pw") == 401  # locked for a while, even with the right password
    with signed_in(brokered.broker_url, {"name": "sam", "password": "sam-secret-pw"}) as c:  # others are not
        assert c.get("/console/accounts").status_code == 200


def test_repair_forms_refuse_wrong_ids_and_change_nothing(cli, srv, tmp_path):
    from vhw.ids import Id, IdKind

    dev = factory(cli, srv, tmp_path / "dan")
    assert cli("console", "register", "--console", dev["console"]).code == 0
    user_id = json.loads(cli("console", "status", "--json", "--console", dev["console"]).out)["slots"]["1"]["user_id"]
    before = users_row(srv, user_id)
    unknown = str(Id.random(IdKind.HDD))
    typo = unknown[:-1] + ("0" if unknown[-1] != "0" else "1")
    with signed_in(srv.url, {"token": token(srv, "operator")}) as c:
        csrf = csrf_of(c, f"/console/repair/{user_id}")
        for data, says in (
            ({"new_hdd_id": typo}, "check character"),
            ({"new_hdd_id": before[1]}, "HDD-ID"),  # a Client ID where an HDD-ID goes
            ({}, "Type the new Client ID or the new HDD-ID"),
            ({"new_hdd_id": unknown, "confirm": "yes"}, "not a registered device"),
            ({"new_hdd_id": before[2], "confirm": "yes"}, "present ID"),
        ):
            r = c.post(f"/console/repair/{user_id}", data={**data, "csrf": csrf})
            assert r.status_code == 422 and says in r.text, (data, r.text[-500:])
        # the form (a GET until confirmed) keeps what was typed and says what is wrong beside it
        r = c.get(f"/console/repair/{user_id}", params={"new_hdd_id": typo})
        assert r.status_code == 422 and f'value="{typo}" aria-invalid="true"' in r.text
        assert re.search(r'id="f-new_hdd_id-error" role="alert">[^<]*check character', r.text)
        for typed in ("", user_id[:-1] + ("0" if user_id[-1] != "0" else "1"), str(Id.random(IdKind.USER))):
            r = c.post(f"/console/reissue/{user_id}", data={"user_id": typed, "csrf": csrf})
            assert r.status_code == 303 and "/console/reissue/" in r.headers["location"], typed
            r = c.get(r.headers["location"])  # the form again: what was typed, and what is wrong
            assert r.status_code == 422 and 'aria-invalid="true"' in r.text and "/console/card/" not in r.text
    assert users_row(srv, user_id) == before


def test_a_revoked_credential_and_a_removed_staff_account_end_their_sessions(cli, srv, brokered, tmp_path):
    """`vhw server credential revoke` and `vhw broker staff rm` take access back at once: the
    sessions opened with them see the sign-in page at their next request, the token calls no API."""
    out = tmp_path / "second.json"
    assert cli("server", "credential", "add", "operator", "second", "-o", out, "--home", srv.home.root).code == 0
    second = Credential.load(out).token
    with signed_in(srv.url, {"token": second}) as c:
        assert c.get("/console/lookup").status_code == 200
        listed = cli("server", "credential", "ls", "--home", srv.home.root)
        assert listed.code == 0 and "second" in listed.out and second not in listed.out
        assert cli("server", "credential", "revoke", "operator", "second", "--home", srv.home.root).code == 0
        assert c.get("/console/lookup").status_code == 303  # back to the sign-in page
    with client(srv.url) as api:
        r = api.post("/v1/operator/audit", json={}, headers={"authorization": f"Bearer {second}"})
        assert r.status_code == 401
    r = cli("server", "credential", "revoke", "operator", "second", "--home", srv.home.root)
    assert r.code == 9 and "no operator credential" in r.err
    assert bk(cli, brokered, "staff", "add", "tem", "--password", "tem-secret-pw").code == 0
    with signed_in(brokered.broker_url, {"name": "tem", "password": "tem-secret-pw"}) as c:
        assert c.get("/console/accounts").status_code == 200
        assert bk(cli, brokered, "staff", "rm", "tem").code == 0
        assert c.get("/console/accounts").status_code == 303


def test_a_mistyped_card_number_is_not_a_declined_payment(cli, brokered):
    """A number that is no card number is the user's slip (exit 17), not the processor's refusal (15)."""
    assert bk(cli, brokered, "account", "add", "mia", "--password", "mia-secret-pw").code == 0
    r = bk(cli, brokered, "account", "card", "mia", "4242424242424243")  # the check digit is wrong
    assert r.code == 17 and "not a valid card number" in r.err and r.err.count("\n") == 1, r
    r = bk(cli, brokered, "account", "card", "mia", "4000000000000002")  # a real number the processor declines
    assert r.code in (0, 15), r
