"""Service flows end to end through the CLI, with real servers on 127.0.0.1: repair (FIG. 13),
card reissue (FIG. 14), the broker with billing (FIG. 15), discs without a MID, card-less
consoles, and the identification policy."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest

from vhw.client import tls_context
from vhw.devices import card as card_dev
from vhw.devices.disc import DiscImage
from vhw.samples import build_samples

from .conftest import PLAY, REGISTER, USER, make_title, source_files, vhw_subprocess
from .hostile_http import DROPPED, HOSTILE, attack_over_tls, said_since
from .servers import (
    RunningServer,
    factory,
    match_of,
    publish,
    start_brokered,
    stop_brokered,
)


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    server = RunningServer.start(tmp_path_factory.mktemp("service") / "home")
    yield server
    server.stop()


def audit(cli, srv) -> list[dict]:
    r = cli("server", "audit", "--home", srv.home.root, "--json")
    return json.loads(r.out)["entries"]


def user_id_of(cli, console: Path) -> str:
    return json.loads(cli("console", "status", "--json", "--console", console).out)["slots"]["1"]["user_id"]


def play_game(cli, console: Path, title: str = "G-1"):
    return cli("console", "play", "--console", console, title, "--moves", "d")


def game(tmp_path: Path) -> Path:
    src = build_samples(tmp_path / "samples")["game"]
    (src / "vhw-title.json").write_text('{"name": "Cave", "kind": "game", "entry": "cave.py"}')
    return src


# -- FIG. 13: repair and exchange ---------------------------------------------------------------------


def test_repair_of_console_and_hdd(cli, srv, tmp_path):
    src = game(tmp_path)
    d1, d2 = publish(cli, srv, src, tmp_path, "G-1", count=2)
    alice = factory(cli, srv, tmp_path / "alice")
    con = ["--console", alice["console"]]
    assert cli("console", "register", *con).code == 0
    assert cli("console", "insert-disc", d1, *con).code == 0
    assert cli("console", "install", *con).code == 0
    assert play_game(cli, alice["console"]).code == 18  # (the game's "unfinished" after one move)

    # the console breaks; the repair center exchanges it: a new console with a new Client ID
    man = ["--credential", srv.credential("manufacturer"), "--server", srv.url]
    op = ["--credential", srv.credential("operator"), "--server", srv.url]
    new_rom = tmp_path / "new.rom"
    assert cli("console", "rom", new_rom, *man).code == 0
    r = cli("repair", "device", "--card", alice["card"], "--new-rom", new_rom, *op)
    assert r.code == 0 and "1 disc(s) may be installed again by this user" in r.out, r
    card = card_dev.load(alice["card"])
    assert not card.content_gen_key and not card.sealed_ids  # wiped, as FIG. 13 says
    assert "G-1" in cli("card", "saves", "ls", alice["card"]).out  # and the game's save is kept
    # with the exchanged console the user installs again from the same disc, and plays
    fixed = tmp_path / "fixed"
    assert cli("console", "setup", fixed, "--rom", new_rom, "--hdd", alice["hdd"]).code == 0
    assert cli("console", "insert-card", alice["card"], "--console", fixed).code == 0
    assert cli("console", "insert-disc", d1, "--console", fixed).code == 0
    r = cli("console", "install", "--console", fixed)
    assert r.code == 0, r
    assert play_game(cli, fixed).code == 18
    # the old console's ID is refused from now on
    assert cli("console", "eject-card", "--console", fixed).code == 0
    assert cli("console", "eject-disc", *con).code == 0
    assert cli("console", "insert-disc", d2, *con).code == 0
    r = cli("console", "acquire", *con)  # the card, back in the old console, a new disc
    assert (r.code, r.err) == (11, USER)
    stranger = tmp_path / "stranger.card"
    assert cli("card", "format", stranger, *man).code == 0
    assert cli("console", "eject-card", *con).code == 0
    assert cli("console", "insert-card", stranger, *con).code == 0
    r = cli("console", "register", *con)
    assert (r.code, r.err) == (10, REGISTER)

    # then the HDD is exchanged too: everything is installed again onto the new one
    new_hdd = tmp_path / "new.hdd"
    assert cli("hdd", "format", new_hdd, "--size", "64M", *man).code == 0
    assert cli("repair", "device", "--card", alice["card"], "--new-hdd", new_hdd, *op).code == 0
    again = tmp_path / "again"
    assert cli("console", "setup", again, "--rom", new_rom, "--hdd", new_hdd).code == 0
    assert cli("console", "insert-card", alice["card"], "--console", again).code == 0
    assert cli("console", "insert-disc", d1, "--console", again).code == 0
    assert cli("console", "install", "--console", again).code == 0
    assert play_game(cli, again).code == 18
    # the old HDD's ID is refused from now on as well
    assert cli("console", "eject-card", "--console", again).code == 0
    assert cli("console", "insert-card", alice["card"], "--console", fixed).code == 0  # new console, old HDD
    assert cli("console", "eject-disc", "--console", fixed).code == 0
    assert cli("console", "insert-disc", d2, "--console", fixed).code == 0
    r = cli("console", "acquire", "--console", fixed)
    assert (r.code, r.err) == (11, USER)
    actions = [e["action"] for e in audit(cli, srv)]
    assert actions.count("repair-device") >= 2 and "keep-flags" in actions and "clear-flags" not in actions


# -- FIG. 14: card reissue -------------------------------------------------------------------------------


def test_card_reissue(cli, srv, tmp_path):
    src = game(tmp_path)
    d1, d2 = publish(cli, srv, src, tmp_path, "G-2", count=2)
    bob = factory(cli, srv, tmp_path / "bob")
    con = ["--console", bob["console"]]
    assert cli("console", "register", *con).code == 0
    user = user_id_of(cli, bob["console"])
    assert cli("console", "insert-disc", d1, *con).code == 0
    assert cli("console", "install", *con).code == 0
    op = ["--credential", srv.credential("operator"), "--server", srv.url]
    # a mistyped User ID is refused by its check character before any request
    before = len(audit(cli, srv))
    typo = user[:-1] + ("0" if user[-1] != "0" else "1")
    r = cli("repair", "card", "--user-id", typo, "-o", tmp_path / "x.card", *op)
    assert r.code == 4 and "check character" in r.err and not (tmp_path / "x.card").exists()
    assert len(audit(cli, srv)) == before
    # the lost card is reissued
    assert play_game(cli, bob["console"], "G-2").code == 18  # (a save of the game on the old card)
    new_card = tmp_path / "new.card"
    r = cli("repair", "card", "--user-id", user, "-o", new_card, *op)
    assert r.code == 0 and "1 license(s)" in r.out, r
    # the saves move from the old card to the new one (the same user's), and go nowhere else
    assert cli("card", "saves", "copy", bob["card"], new_card).code == 0
    assert "cave.sav" in cli("card", "saves", "ls", new_card).out
    old = bob["card"]
    assert cli("console", "eject-card", *con).code == 0
    assert cli("console", "insert-card", new_card, *con).code == 0
    assert user_id_of(cli, bob["console"]) == user
    # the installed title plays through the mount with the new card
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    assert cli("console", "mount", mnt, *con).code == 0
    try:
        assert (mnt / "G-2" / "cave.py").read_bytes() == (src / "cave.py").read_bytes()
    finally:
        assert cli("console", "unmount", mnt, *con).code == 0
    # and the old card is refused everywhere: here, by the server, and elsewhere
    assert cli("console", "eject-card", *con).code == 0
    assert cli("console", "insert-card", old, *con).code == 0
    r = cli("console", "play", *con, "G-2")
    assert r.code == 14 and r.err.startswith(PLAY), r  # the patent's notice, then what to do:
    assert "replaced by a reissued one" in r.err.splitlines()[1] and "put that card in" in r.err, r
    r = cli("card", "info", old, *con)
    assert "registered   yes, but replaced by a reissued card" in r.out, r
    assert "registered   yes\n" in cli("card", "info", new_card, *con).out
    assert cli("console", "eject-disc", *con).code == 0
    assert cli("console", "insert-disc", d2, *con).code == 0
    r = cli("console", "acquire", *con)
    assert (r.code, r.err) == (11, USER)
    r = cli("console", "register", *con)
    assert (r.code, r.err) == (10, REGISTER)
    # the new card acquires the second disc's keys
    assert cli("console", "eject-card", *con).code == 0
    assert cli("console", "insert-card", new_card, *con).code == 0
    assert cli("console", "acquire", *con).code == 0
    assert "reissue-card" in [e["action"] for e in audit(cli, srv)]


# -- FIG. 15: the broker ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def brokered(tmp_path_factory, srv):
    """A server in broker mode, a broker before it (price 5.00, 70% to the platform)."""
    server, proc = start_brokered(tmp_path_factory.mktemp("brokered"))
    yield server
    stop_brokered(server, proc)


@pytest.fixture
def ledger_balances(cli, brokered):
    yield
    r = cli("broker", "ledger", "--home", brokered.broker_home, "--json")
    totals = json.loads(r.out)
    assert r.code == 0 and totals["balanced"], totals
    assert totals["sum_of_entries"] == 0
    assert totals["platform"] + totals["broker"] == totals["charges"]


def brokered_console(cli, srv, folder: Path, account: str | None) -> dict:
    dev = factory(cli, srv, folder)
    cfg = dev["console"] / "console.json"
    data = json.loads(cfg.read_text())
    data["server"] = srv.broker_url  # the console talks to the broker
    cfg.write_text(json.dumps(data))
    if account:
        assert (
            cli("console", "account", account, "--password", f"{account}-secret-pw", "--console", dev["console"]).code
            == 0
        )
    return dev


def bk(cli, srv, *args):
    return cli("broker", *args, "--home", srv.broker_home)


def test_broker_charges_per_key(cli, brokered, tmp_path, ledger_balances):
    srv = brokered
    src = game(tmp_path)
    discs = publish(cli, srv, src, tmp_path, "G-B", count=4)
    for name in ("alice", "bob", "carol"):
        assert bk(cli, srv, "account", "add", name, "--password", f"{name}-secret-pw").code == 0
    assert bk(cli, srv, "account", "card", "alice", "4242 4242 4242 4242").code == 0
    assert bk(cli, srv, "account", "topup", "alice", "12.00").code == 0
    assert bk(cli, srv, "account", "card", "bob", "4000 0000 0000 0002").code == 0  # always declined
    alice = brokered_console(cli, srv, tmp_path / "alice", "alice")
    con = ["--console", alice["console"]]
    assert cli("console", "register", *con).code == 0
    assert cli("console", "insert-disc", discs[0], *con).code == 0
    assert cli("console", "install", *con).code == 0
    st = json.loads(bk(cli, srv, "account", "statement", "alice", "--json").out)
    assert st["balance_cents"] == 700 and [c["cents"] for c in st["charges"]] == [500]
    assert play_game(cli, alice["console"], "G-B").code == 18  # (one move: "unfinished")

    def flagged(disc: Path) -> str | None:
        """Who the server has flagged the disc's MID for (None: nobody)."""
        with DiscImage.open(disc) as d:
            mid = str(d.disc.mid)
        store = srv.home.store()
        try:
            with store.transaction() as tx:
                return tx.one("SELECT flagged_by FROM media WHERE mid = ?", mid)[0]
        finally:
            store.close()

    # a declined card: a clear message, no key, the MID not flagged
    bob = brokered_console(cli, srv, tmp_path / "bob", "bob")
    assert cli("console", "register", "--console", bob["console"]).code == 0
    assert cli("console", "insert-disc", discs[1], "--console", bob["console"]).code == 0
    r = cli("console", "install", "--console", bob["console"])
    assert r.code == 15 and "payment declined: the card was declined" in r.err, r
    assert flagged(discs[1]) is None
    # an empty balance and no card: the same
    carol = brokered_console(cli, srv, tmp_path / "carol", "carol")
    assert cli("console", "register", "--console", carol["console"]).code == 0
    assert cli("console", "insert-disc", discs[1], "--console", carol["console"]).code == 0
    r = cli("console", "install", "--console", carol["console"])
    assert r.code == 15 and "balance of carol is too low" in r.err, r
    assert flagged(discs[1]) is None
    # a wrong password is refused at once, and nothing of it is kept
    kept = (carol["console"] / "account.json").read_bytes()
    r = cli("console", "account", "carol", "--password", "not-her-password", "--console", carol["console"])
    assert r.code == 6 and "wrong account name or password" in r.err and r.err.count("\n") == 1, r
    assert (carol["console"] / "account.json").read_bytes() == kept
    # the console keeps a token, never the password; a token it did not get is refused
    assert "carol-secret-pw" not in kept.decode() and set(json.loads(kept)) == {"name", "token"}
    (carol["console"] / "account.json").write_text(json.dumps({"name": "carol", "token": "made-up"}))
    r = cli("console", "install", "--console", carol["console"])
    assert r.code == 6 and "account token is not known" in r.err
    # once Carol pays, the disc is hers; the lost-answer refetch is not charged again
    assert bk(cli, srv, "account", "topup", "carol", "5.00", "--card", "4242424242424242").code == 0
    assert cli("console", "account", "carol", "--password", "carol-secret-pw", "--console", carol["console"]).code == 0
    assert cli("console", "acquire", "--console", carol["console"]).code == 0
    assert cli("console", "acquire", "--console", carol["console"]).code == 0  # again, as after a lost answer
    assert cli("console", "install", "--console", carol["console"]).code == 0
    st = json.loads(bk(cli, srv, "account", "statement", "carol", "--json").out)
    assert st["balance_cents"] == 0 and len(st["charges"]) == 1
    # the card on file pays when the balance does not: 12.00 - 5.00 = 7.00, 2.00, then the card
    for disc in discs[2:]:  # (same title: the keys are bought, the title is on the HDD already)
        assert cli("console", "eject-disc", *con).code == 0
        assert cli("console", "insert-disc", disc, *con).code == 0
        assert cli("console", "acquire", *con).code == 0
    st = json.loads(bk(cli, srv, "account", "statement", "alice", "--json").out)
    assert st["balance_cents"] == 200 and [c["method"] for c in st["charges"]] == ["prepaid", "prepaid", "card"]
    # as a person reads it: a header, the top-up and each charge with its date, in columns
    lines = bk(cli, srv, "account", "statement", "alice").out.splitlines()
    assert lines[0] == "account alice: balance 2.00 EUR, card **** 4242" and lines[1].split() == [
        "time",
        "what",
        "amount",
        "paid",
        "by",
        "for",
    ], lines
    kinds = [line.split()[1:5] for line in lines[2:]]
    charges = [["charge", "-5.00", "EUR", p] for p in ("balance", "balance", "card")]
    assert kinds == [["top-up", "12.00", "EUR", "card"], *charges]
    assert all(line[:4].isdigit() and line[10] == "T" for line in lines[2:]), lines  # ISO dates
    totals = json.loads(bk(cli, srv, "ledger", "--json").out)
    assert totals["charges"] == 4 * 500 and totals["platform"] == 4 * 350 and totals["broker"] == 4 * 150
    entries = json.loads(bk(cli, srv, "audit", "--json").out)["entries"]
    assert sum(e["action"] == "charge" for e in entries) == 4
    topups = [e for e in entries if e["action"] == "top-up" and e["subject"] == "alice"]
    assert topups and topups[0]["actor"] == "broker" and topups[0]["detail"]["amount"] == "12.00 EUR", topups
    # the broker logs its requests as the server does, and never who made them
    log = srv.broker_log.read_text()
    assert "access: POST /v1/console/acquire 200 " in log and "role=account id=" in log, log[-2000:]
    assert "access: POST /v1/account/token 401 " in log  # carol's wrong password
    assert not any(name in log for name in ("alice", "carol")) and "US-" not in log.upper()


def test_broker_mode_server_is_not_reachable_by_users(cli, brokered, tmp_path, ledger_balances):
    srv = brokered
    direct = factory(cli, srv, tmp_path / "direct")  # pointed at the server itself
    r = cli("console", "register", "--console", direct["console"])
    assert r.code == 5 and "accepts only the platform's own clients" in r.err and r.err.count("\n") == 1, r
    # the broker's credential cannot call operator endpoints
    with srv.role_client("broker") as c:
        from vhw import protocol as p
        from vhw.errors import ServerError

        with pytest.raises(ServerError) as err:
            c.call("/v1/operator/audit", p.AuditQuery(), p.AuditPage)
        assert err.value.status == 403


@pytest.mark.parametrize("attack", HOSTILE, ids=lambda a: a.__name__.strip("_"))
def test_the_broker_too_drops_only_the_connection_that_trips_its_http_layer(brokered, attack):
    """The broker serves as the server does (``vhw.httpapi.serve_app``): what makes hypercorn's
    HTTP layer fail costs that connection alone (the control that the same bytes end a bare
    hypercorn server is in ``tests/test_server.py``)."""
    logged = brokered.broker_log.stat().st_size
    attack_over_tls(brokered.broker_url, brokered.ca_der, attack)
    with httpx.Client(base_url=brokered.broker_url, verify=tls_context(brokered.ca_der), timeout=30) as http:
        assert http.get("/v1/health").status_code == 200
    assert said_since(brokered.broker_log, logged, DROPPED)


def test_disc_without_mid_is_bought_once_per_install(cli, brokered, tmp_path, ledger_balances):
    srv = brokered
    src = make_title(tmp_path / "free", seed=40)
    pub = ["--credential", srv.credential("publisher"), "--server", srv.url]
    assert cli("disc", "master", src, "-o", tmp_path / "f.master", "--title-id", "FREE-1", *pub).code == 0
    assert cli("disc", "press", tmp_path / "f.master", "--no-mid", "-o", tmp_path / "free-discs", *pub).code == 0
    [disc] = (tmp_path / "free-discs").iterdir()
    assert bk(cli, srv, "account", "add", "dave", "--password", "dave-secret-pw").code == 0
    assert bk(cli, srv, "account", "card", "dave", "4242 4242 4242 4242").code == 0
    dave = brokered_console(cli, srv, tmp_path / "dave", "dave")
    con = ["--console", dave["console"]]
    assert cli("console", "register", *con).code == 0
    assert cli("console", "insert-disc", disc, *con).code == 0
    r = cli("console", "install", *con)
    assert r.code == 0, r
    from vhw.console.install import read_title
    from vhw.devices.hdd import HddImage

    binding = match_of(dave).binding
    with HddImage.open(dave["hdd"]) as img:
        title = img.volume.catalog.title("FREE-1")
        assert read_title(img, title, binding) == source_files(src)
        paid_mid = title.mid
    assert cli("console", "install", *con).code == 9  # installed: nothing is bought twice
    # each paid key installs once: after removing the title, installing again is a new purchase
    assert cli("hdd", "rm", "FREE-1", "--yes", *con).code == 0
    assert cli("console", "install", *con).code == 0
    with HddImage.open(dave["hdd"]) as img:
        assert img.volume.catalog.title("FREE-1").mid != paid_mid
    st = json.loads(bk(cli, srv, "account", "statement", "dave", "--json").out)
    assert [c["method"] for c in st["charges"]] == ["card", "card"]
    # the first license is final: its MID cannot be fetched again by anyone
    store = srv.home.store()
    try:
        with store.transaction() as tx:
            rows = tx.all("SELECT confirmed_at FROM media WHERE purchased = 1 AND flagged_by IS NOT NULL")
    finally:
        store.close()
    assert len(rows) == 2 and all(r[0] for r in rows)


def test_direct_server_refuses_discs_without_mid(cli, srv, tmp_path):
    src = make_title(tmp_path / "free", seed=41)
    pub = ["--credential", srv.credential("publisher"), "--server", srv.url]
    assert cli("disc", "master", src, "-o", tmp_path / "f.master", "--title-id", "FREE-2", *pub).code == 0
    assert cli("disc", "press", tmp_path / "f.master", "--no-mid", "-o", tmp_path / "d", *pub).code == 0
    [disc] = (tmp_path / "d").iterdir()
    dev = factory(cli, srv, tmp_path / "eve")
    con = ["--console", dev["console"]]
    assert cli("console", "register", *con).code == 0
    assert cli("console", "insert-disc", disc, *con).code == 0
    r = cli("console", "install", *con)
    assert r.code == 6 and "404" in r.err, r  # this server sells nothing; a broker does


# -- card-less consoles ------------------------------------------------------------------------------------


@pytest.mark.parametrize("memory", ["console", "hdd"])
def test_card_less_console(cli, srv, tmp_path, memory):
    src = game(tmp_path)
    [disc] = publish(cli, srv, src, tmp_path, "G-3" if memory == "console" else "G-4")
    title = disc.name.split("-")[0] + "-" + disc.name.split("-")[1]
    man = ["--credential", srv.credential("manufacturer"), "--server", srv.url]
    rom, hdd, nvram = tmp_path / "c.rom", tmp_path / "c.hdd", tmp_path / "c.nvram"
    assert cli("console", "rom", rom, *man, *(["--memory", nvram] if memory == "console" else [])).code == 0
    assert cli("hdd", "format", hdd, "--size", "64M", *man, *(["--with-memory"] if memory == "hdd" else [])).code == 0
    con = tmp_path / "console"
    assert (
        cli("console", "setup", con, "--rom", rom, "--hdd", hdd, "--memory", "hdd" if memory == "hdd" else nvram).code
        == 0
    )
    c = ["--console", con]
    assert cli("console", "register", *c).code == 0
    assert cli("console", "insert-disc", disc, *c).code == 0
    r = cli("console", "install", *c)
    # a card-less console speaks of its memory, not of a memory card: vhw, and the title it runs
    assert r.code == 0 and "deleted from the console's memory" in r.out and "memory card" not in r.out, r
    r = vhw_subprocess("console", "play", *c, title, "--moves", "dddssdddwwddssss")
    assert r.code == 0 and "(saved on the console's memory: won" in r.out and "memory card" not in r.out + r.err, r
    # the game's save is in the internal memory
    r = cli("card", "saves", "ls", hdd if memory == "hdd" else nvram)
    assert r.code == 0 and "cave.sav" in r.out and "won, 16 moves" in r.out, r
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    assert cli("console", "mount", mnt, *c).code == 0
    try:
        assert (
            hashlib.sha256((mnt / title / "cave.py").read_bytes()).digest()
            == hashlib.sha256((src / "cave.py").read_bytes()).digest()
        )
    finally:
        assert cli("console", "unmount", mnt, *c).code == 0
    assert cli("hdd", "fsck", hdd, "--deep").code == 0
    # the same disc again: already installed; the HDD (and, for hdd memory, its items) elsewhere: refused
    other_rom = tmp_path / "other.rom"
    assert (
        cli(
            "console", "rom", other_rom, *man, *(["--memory", tmp_path / "o.nvram"] if memory == "console" else [])
        ).code
        == 0
    )
    elsewhere = tmp_path / "elsewhere"
    assert (
        cli(
            "console",
            "setup",
            elsewhere,
            "--rom",
            other_rom,
            "--hdd",
            hdd,
            "--memory",
            "hdd" if memory == "hdd" else tmp_path / "o.nvram",
        ).code
        == 0
    )
    r = cli("console", "play", "--console", elsewhere, title)
    assert (r.code, r.err) == (14, PLAY)


# -- the identification policy, end to end -------------------------------------------------------------------


def test_identification_policy_end_to_end(cli, tmp_path):
    server = RunningServer.start(tmp_path / "policy", init=["--identify-by", "mc_id,client_id"])
    try:
        src = make_title(tmp_path / "s", seed=50)
        [disc] = publish(cli, server, src, tmp_path, "POL-1")
        dev = factory(cli, server, tmp_path / "u")
        assert cli("console", "register", "--console", dev["console"]).code == 0
        other = factory(cli, server, tmp_path / "v")
        # the HDD-ID is outside the policy: another registered HDD does not change who the user is
        swapped = tmp_path / "swapped"
        assert cli("console", "setup", swapped, "--rom", dev["rom"], "--hdd", other["hdd"]).code == 0
        assert cli("console", "insert-card", dev["card"], "--console", swapped).code == 0
        assert cli("console", "insert-disc", disc, "--console", swapped).code == 0
        assert cli("console", "acquire", "--console", swapped).code == 0
        # the Client ID is in it: another console is refused
        moved = tmp_path / "moved"
        assert cli("console", "setup", moved, "--rom", other["rom"], "--hdd", dev["hdd"]).code == 0
        assert cli("console", "insert-card", dev["card"], "--console", moved).code == 0
        assert cli("console", "insert-disc", disc, "--console", moved).code == 0
        r = cli("console", "acquire", "--console", moved)
        assert (r.code, r.err) == (11, USER)
    finally:
        server.stop()


def test_a_refused_broker_init_leaves_no_home(cli, tmp_path):
    """Each thing `broker init` is given is checked before anything is written: a wrong currency,
    a share out of range or a credential of another role leaves no half-made broker folder."""
    srv = RunningServer.start(tmp_path / "server", init=["--mode", "broker"])
    try:
        assert cli("server", "issue-cert", "broker", "-o", tmp_path / "tls", "--home", srv.home.root).code == 0
        home = tmp_path / "broker"
        base = ["broker", "init", "--home", home, "--tls", tmp_path / "tls", "--server", srv.url]
        for wrong, says in (
            (["--credential", srv.credential("broker"), "--currency", "EURO"], "not a currency"),
            (["--credential", srv.credential("broker"), "--platform-share", "150"], "share"),
            (["--credential", srv.credential("publisher")], "not a broker's"),
        ):
            r = cli(*base, *wrong)
            assert r.code != 0 and says in r.err and "Traceback" not in r.err, r
            assert not home.exists(), wrong
        assert cli(*base, "--credential", srv.credential("broker")).code == 0
    finally:
        srv.stop()


def test_broker_commands_refuse_a_folder_that_holds_no_broker_and_write_nothing(cli, tmp_path):
    """A licensing server's home has a config.json too: every broker command given one (or an
    empty folder) is refused in one line and leaves it as it was (`broker audit` made an empty
    broker.db there and failed on its missing table). The control: the same commands on a
    broker's home answer."""
    srv = RunningServer.start(tmp_path / "server", init=["--mode", "broker"])
    try:
        assert cli("server", "issue-cert", "broker", "-o", tmp_path / "tls", "--home", srv.home.root).code == 0
        broker = tmp_path / "broker"
        r = cli(
            "broker",
            "init",
            "--home",
            broker,
            "--tls",
            tmp_path / "tls",
            "--server",
            srv.url,
            "--credential",
            srv.credential("broker"),
        )
        assert r.code == 0, r
        (tmp_path / "empty").mkdir()
        commands = (("audit",), ("ledger",), ("staff", "ls"), ("account", "statement", "x"))
        for home in (srv.home.root, tmp_path / "empty"):
            before = sorted(p.name for p in home.iterdir())
            for args in commands:
                r = cli("broker", *args, "--home", home)
                refused = "no broker here" in r.err or "not a broker configuration" in r.err
                assert r.code in (9, 16) and refused and r.err.count("\n") <= 2, (home, args, r)
            assert sorted(p.name for p in home.iterdir()) == before
        r = cli("broker", "audit", "--home", srv.home.root)
        assert "not a broker configuration (a key 'url' it does not have)" in r.err
        assert cli("broker", "account", "add", "x", "--password", "a long passphrase", "--home", broker).code == 0
        for args in commands:
            assert cli("broker", *args, "--home", broker).code == 0, args
        (broker / "broker.db").write_bytes(b"")  # (emptied: every command, `audit` too, opens it with its schema)
        for args in commands[:3]:
            r = cli("broker", *args, "--home", broker)
            assert r.code == 0 and "internal error" not in r.err, (args, r)
    finally:
        srv.stop()
