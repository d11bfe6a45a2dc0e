"""Attacks, each by name, through the CLI against a real server on 127.0.0.1: each is refused
with the right message and leaves nothing changed (the card and HDD files byte for byte, and the
server's licenses)."""

from __future__ import annotations

import http.server
import json
import os
import ssl
import threading
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from vhw import bindings, crypto
from vhw import protocol as p
from vhw.client import tls_context
from vhw.console import decisions
from vhw.devices import card as card_dev
from vhw.devices.hdd import HddImage
from vhw.formats import ditto as ditto_fmt
from vhw.formats import hdd as hdd_fmt
from vhw.formats.card import Card
from vhw.ids import Id, IdKind
from vhw.pki import cert_pem, issue, key_pem, make_ca

from .conftest import COPY, MEDIA, PLAY, REGISTER, USER, file_sha256, make_title
from .servers import RunningServer, factory, hardware_of, match_of, publish


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    server = RunningServer.start(tmp_path_factory.mktemp("attacks") / "home")
    yield server
    server.stop()


class Unchanged:
    """The files named and the server's licenses are exactly as before the block."""

    def __init__(self, srv, *paths: Path):
        self.srv, self.paths = srv, paths

    def licenses(self):
        store = self.srv.home.store()
        try:
            with store.transaction() as tx:
                return tx.all("SELECT mid, flagged_by, confirmed_at FROM media ORDER BY mid")
        finally:
            store.close()

    def __enter__(self):
        self.before = ([file_sha256(p) for p in self.paths], self.licenses())
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            assert ([file_sha256(p) for p in self.paths], self.licenses()) == self.before, (
                "the attack changed something"
            )


@pytest.fixture
def world(cli, srv, tmp_path):
    """Alice (registered, one title installed) and Bob (registered), two more discs pressed."""
    src = make_title(tmp_path / "src", seed=70)
    discs = publish(cli, srv, src, tmp_path, f"ATK-{os.urandom(3).hex().upper()}", count=3)
    alice, bob = (
        factory(cli, srv, tmp_path / "alice", hdd_size="64M"),
        factory(cli, srv, tmp_path / "bob", hdd_size="64M"),
    )
    for who in (alice, bob):
        assert cli("console", "register", "--console", who["console"]).code == 0
    assert cli("console", "insert-disc", discs[0], "--console", alice["console"]).code == 0
    assert cli("console", "install", "--console", alice["console"]).code == 0
    title = discs[0].name.rsplit("-", 1)[0]
    return {"alice": alice, "bob": bob, "discs": discs, "title": title, "src": src}


def con(dev) -> list:
    return ["--console", dev["console"]]


def test_lend_the_disc_to_a_second_user(cli, srv, world):
    bob = world["bob"]
    assert cli("console", "insert-disc", world["discs"][0], *con(bob)).code == 0
    with Unchanged(srv, bob["card"], bob["hdd"]):
        r = cli("console", "install", *con(bob))
    assert (r.code, r.err) == (12, MEDIA)


def test_lend_the_card_to_another_console(cli, srv, world):
    alice, bob = world["alice"], world["bob"]
    assert cli("console", "eject-disc", *con(alice)).code == 0
    assert cli("console", "insert-disc", world["discs"][1], *con(alice)).code == 0
    assert cli("console", "acquire", *con(alice)).code == 0  # keys on Alice's card
    assert cli("console", "eject-card", *con(alice)).code == 0
    assert cli("console", "insert-card", alice["card"], "--slot", "2", *con(bob)).code == 0
    assert cli("console", "insert-disc", world["discs"][1], *con(bob)).code == 0
    with Unchanged(srv, alice["card"], bob["hdd"]):
        r = cli("console", "install", "--slot", "2", *con(bob))
        assert (r.code, r.err) == (13, COPY)
        r = cli("console", "play", "--slot", "2", *con(bob), world["title"])
        assert (r.code, r.err) == (14, PLAY)


def test_lend_card_and_hdd_to_another_console(cli, srv, world, tmp_path):
    alice, bob = world["alice"], world["bob"]
    lent = tmp_path / "lent"
    assert cli("console", "setup", lent, "--rom", bob["rom"], "--hdd", alice["hdd"]).code == 0
    assert cli("console", "eject-card", *con(alice)).code == 0
    assert cli("console", "insert-card", alice["card"], "--console", lent).code == 0
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with Unchanged(srv, alice["card"], alice["hdd"]):
        r = cli("console", "play", "--console", lent, world["title"])
        assert (r.code, r.err) == (14, PLAY)
        r = cli("console", "mount", mnt, "--console", lent)
        assert (r.code, r.err) == (14, PLAY)
    assert os.listdir(mnt) == []


def test_copy_the_hdd_image_onto_an_hdd_with_another_hdd_id(cli, srv, world, tmp_path):
    """Every byte of Alice's HDD on a disk whose HDD-ID is another's (superblocks re-sealed)."""
    alice, bob = world["alice"], world["bob"]
    with HddImage.open(bob["hdd"]) as img:
        other_id = img.hdd_id
    copy = tmp_path / "copy.hdd"
    copy.write_bytes(alice["hdd"].read_bytes())
    with open(copy, "r+b") as f:
        for slot in (*ditto_fmt.SLOT_OFFSETS, *(o + ditto_fmt.DITTO for o in ditto_fmt.SLOT_OFFSETS)):
            f.seek(slot)
            sb = hdd_fmt.decode_superblock(f.read(4096), path=copy)
            f.seek(slot)
            f.write(hdd_fmt.encode_superblock(replace(sb, hdd_id=other_id)))
    forged = tmp_path / "forged"
    assert cli("console", "setup", forged, "--rom", alice["rom"], "--hdd", copy).code == 0
    assert cli("console", "eject-card", *con(alice)).code == 0
    assert cli("console", "insert-card", alice["card"], "--console", forged).code == 0
    with Unchanged(srv, alice["card"], copy):
        r = cli("console", "play", "--console", forged, world["title"])
        assert (r.code, r.err) == (14, PLAY)
    # and even with the card's check out of the way (the real Content-Gen-Key in hand), the titles'
    # keys depend on the HDD-ID
    from vhw.bindings import TitleBinding
    from vhw.console.install import read_title

    real = match_of(alice)
    devices = hardware_of(alice["rom"], copy).devices
    assert devices.hdd_id == other_id
    binding = TitleBinding.derive(real.content_gen_key, real.user, devices)
    with HddImage.open(copy) as img, pytest.raises(Exception, match="does not decrypt"):
        read_title(img, img.volume.catalog.title(world["title"]), binding)


def test_forge_a_card_with_a_random_mc_id(cli, srv, world, tmp_path):
    bob = world["bob"]
    forged = tmp_path / "forged.card"
    mc_id, key = Id.random(IdKind.CARD), crypto.random_key()
    fake_user = bindings.wrap_id(key, Id.random(IdKind.USER), bindings.user_id(mc_id))
    card_dev.create(forged, Card(mc_id, key, 1, user_id=fake_user))
    assert cli("console", "insert-card", forged, "--slot", "2", *con(bob)).code == 0
    assert cli("console", "insert-disc", world["discs"][1], *con(bob)).code == 0
    with Unchanged(srv, forged, bob["hdd"]):
        r = cli("console", "acquire", "--slot", "2", *con(bob))
        assert (r.code, r.err) == (11, USER)
        blank = tmp_path / "blank.card"
        card_dev.create(blank, Card(Id.random(IdKind.CARD), crypto.random_key(), 1))
        assert cli("console", "eject-card", "--slot", "2", *con(bob)).code == 0
        assert cli("console", "insert-card", blank, "--slot", "2", *con(bob)).code == 0
        r = cli("console", "register", "--slot", "2", *con(bob))
        assert (r.code, r.err) == (10, REGISTER)


def test_replay_a_captured_acquisition_response_to_another_card(cli, srv, world):
    alice, bob = world["alice"], world["bob"]
    assert cli("console", "eject-disc", *con(alice)).code == 0
    assert cli("console", "insert-disc", world["discs"][1], *con(alice)).code == 0
    assert cli("console", "acquire", *con(alice)).code == 0
    captured = card_dev.load(alice["card"]).licenses[-1]  # what Alice's console received
    # Bob has keys of his own (so his console and HDD check out) ...
    assert cli("console", "insert-disc", world["discs"][2], *con(bob)).code == 0
    assert cli("console", "acquire", *con(bob)).code == 0
    # ... and puts Alice's Content-Key on his card, for the disc's MID wrapped with his own key
    victim = card_dev.load(bob["card"])
    from vhw.devices.disc import DiscImage

    with DiscImage.open(world["discs"][1]) as d:
        mid = d.disc.mid
    forged = replace(captured, mid=decisions.CardView.open(victim).wrapped_mid(mid))
    card_dev.save(bob["card"], victim.with_license(forged))
    assert cli("console", "eject-disc", *con(bob)).code == 0
    assert cli("console", "insert-disc", world["discs"][1], *con(bob)).code == 0
    with Unchanged(srv, bob["card"], bob["hdd"]):
        r = cli("console", "install", *con(bob))
    assert (r.code, r.err) == (13, COPY)


def test_swap_a_wrapped_content_key_between_two_mids_on_one_card(cli, srv, world):
    alice = world["alice"]
    assert cli("console", "eject-disc", *con(alice)).code == 0
    for disc in world["discs"][1:]:
        assert cli("console", "insert-disc", disc, *con(alice)).code == 0
        assert cli("console", "acquire", *con(alice)).code == 0
        assert cli("console", "eject-disc", *con(alice)).code == 0
    card = card_dev.load(alice["card"])
    a, b = card.licenses[-2:]
    swapped = replace(
        card,
        licenses=card.licenses[:-2] + (replace(a, content_key=b.content_key), replace(b, content_key=a.content_key)),
    )
    card_dev.save(alice["card"], swapped)
    assert cli("hdd", "rm", world["title"], "--yes", *con(alice)).code == 0  # (the discs are one title)
    assert cli("console", "insert-disc", world["discs"][1], *con(alice)).code == 0
    with Unchanged(srv, alice["card"], alice["hdd"]):
        r = cli("console", "install", *con(alice))
    assert (r.code, r.err) == (13, COPY)


def test_edit_the_sealed_client_id_on_a_card(cli, srv, world):
    alice = world["alice"]
    card = card_dev.load(alice["card"])
    sealed = bytearray(card.sealed_ids)
    sealed[20] ^= 0x10  # inside the sealed Client ID
    card_dev.save(alice["card"], replace(card, sealed_ids=bytes(sealed)))
    with Unchanged(srv, alice["card"], alice["hdd"]):
        r = cli("console", "play", *con(alice), world["title"])
        assert (r.code, r.err) == (14, PLAY)


def test_roll_back_a_card_to_before_its_content_key_was_deleted(cli, srv, world):
    """A card rolled back to when it held a Content-Key gains nothing: the owner may install
    their own disc again onto their own registered HDD anyway (the server allows it, sealed to
    those devices), and the old key still copies nowhere else."""
    alice, bob = world["alice"], world["bob"]
    assert cli("hdd", "rm", world["title"], "--yes", *con(alice)).code == 0  # (the discs are one title)
    assert cli("console", "eject-disc", *con(alice)).code == 0
    assert cli("console", "insert-disc", world["discs"][1], *con(alice)).code == 0
    assert cli("console", "acquire", *con(alice)).code == 0
    backup = alice["card"].read_bytes()  # the card image while it holds the Content-Key
    assert cli("console", "install", *con(alice)).code == 0  # confirmed; the key is deleted
    assert not any(lic.content_key for lic in card_dev.load(alice["card"]).licenses)
    assert cli("hdd", "rm", world["title"], "--yes", *con(alice)).code == 0
    alice["card"].write_bytes(backup)  # rolled back
    # the rolled-back card in bob's console: its keys open on alice's devices only
    assert cli("console", "eject-card", *con(bob)).code == 0
    assert cli("console", "insert-card", alice["card"], *con(bob)).code == 0
    assert cli("console", "eject-disc", *con(bob)).code == 0
    assert cli("console", "insert-disc", world["discs"][1], *con(bob)).code == 0
    with Unchanged(srv, bob["hdd"]):
        r = cli("console", "install", *con(bob))
    assert r.code in (11, 13), r  # USER ID INVALID (not alice's devices) or COPY IS NOT PERMITTED
    assert cli("console", "eject-card", *con(bob)).code == 0
    # on alice's own console and HDD it is the re-install the owner may always make
    r = cli("console", "install", *con(alice))
    assert r.code == 0, r


def test_brute_force_user_ids_against_one_mc_id(cli, srv, world):
    """Someone with a card's MC-Key tries User IDs: after a few, the card must wait."""
    bob = world["bob"]
    card = card_dev.load(bob["card"])
    with HddImage.open(bob["hdd"]) as img:
        hdd_id = img.hdd_id
    from vhw.devices import rom as rom_dev

    client_id = rom_dev.load(bob["rom"]).client_id
    mid = Id.random(IdKind.MEDIA)
    statuses = []
    with httpx.Client(base_url=srv.url, verify=tls_context(srv.ca_der)) as http:
        for _ in range(12):
            guess = bindings.wrap_id(card.mc_key, Id.random(IdKind.USER), bindings.user_id(card.mc_id))
            body = p.encode(
                p.AcquireRequest(
                    card.mc_id, guess, bindings.wrap_id(card.mc_key, mid, b"x"), client_id, hdd_id, bytes(32), None
                )
            )
            statuses.append(http.post("/v1/console/acquire", json=body).status_code)
    assert statuses[:10] == [403] * 10 and statuses[10:] == [429, 429]
    r = cli("console", "acquire", *con(bob))  # now even the card's owner waits (exit 6, 429)
    assert r.code in (6, 9) and ("too many failed attempts" in r.err or "no disc" in r.err)


def test_downgrade_to_plain_http(cli, srv, world, tmp_path):
    """A plain-HTTP server address: refused at set-up, and, written into console.json by hand (its
    holder can), refused before anything is sent."""
    bob = world["bob"]
    plain = tmp_path / "plain"
    http_url = srv.url.replace("https://", "http://")
    r = cli("console", "setup", plain, "--rom", bob["rom"], "--hdd", bob["hdd"], "--server", http_url)
    assert r.code == 17 and "https://" in r.err
    assert cli("console", "setup", plain, "--rom", bob["rom"], "--hdd", bob["hdd"]).code == 0
    config = json.loads((plain / "console.json").read_text())
    (plain / "console.json").write_text(json.dumps({**config, "server": http_url}))
    assert cli("console", "insert-card", bob["card"], "--slot", "2", "--console", plain).code == 0
    with Unchanged(srv, bob["card"], bob["hdd"]):
        r = cli("console", "register", "--slot", "2", "--console", plain)
    assert r.code == 5 and "over plain HTTP" in r.err
    with pytest.raises(httpx.HTTPError):  # and the server itself speaks no plain HTTP
        httpx.get(http_url + "/v1/health", timeout=5)


def test_a_wrong_server_certificate(cli, srv, world, tmp_path):
    """A server whose certificate was not issued by the platform CA, at the console's address."""
    bob = world["bob"]
    ca, ca_key = make_ca("impostor CA")
    cert, key = issue(ca, ca_key, "impostor", hosts=["127.0.0.1"])
    (tmp_path / "c.pem").write_bytes(cert_pem(cert))
    (tmp_path / "k.pem").write_bytes(key_pem(key))
    httpd = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        impostor = tmp_path / "impostor"
        assert (
            cli(
                "console",
                "setup",
                impostor,
                "--rom",
                bob["rom"],
                "--hdd",
                bob["hdd"],
                "--server",
                f"https://127.0.0.1:{httpd.server_address[1]}",
            ).code
            == 0
        )
        assert cli("console", "insert-card", bob["card"], "--slot", "2", "--console", impostor).code == 0
        with Unchanged(srv, bob["card"], bob["hdd"]):
            r = cli("console", "register", "--slot", "2", "--console", impostor)
        assert r.code == 5 and "not signed by the trusted platform CA" in r.err
    finally:
        httpd.shutdown()


def test_a_rogue_publisher_cannot_mint_licenses_for_anothers_title(cli, srv, world, tmp_path):
    """A second publisher, with a credential of its own, tries to make discs of Alice's title that
    the server would license: MIDs registered for the title, the title registered again, a disc of
    it pressed with a MID area it signed itself. Every one is refused."""
    import json
    import subprocess
    import sys

    from vhw import protocol as p
    from vhw.client import Client
    from vhw.devices.disc import DiscImage
    from vhw.errors import ServerError
    from vhw.formats import disc as disc_fmt
    from vhw.server.credentials import Credential

    rogue_path = tmp_path / "rogue.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "vhw",
            "server",
            "credential",
            "add",
            "publisher",
            "rogue",
            "-o",
            str(rogue_path),
            "--home",
            str(srv.home.root),
        ],
        check=True,
        capture_output=True,
    )
    rogue = Credential.load(rogue_path)
    title = world["title"]
    with Client(srv.url, tls_context(ca_pem=rogue.ca), token=rogue.token) as c:
        with pytest.raises(ServerError, match="registered by another publisher") as err:
            c.call(
                "/v1/publisher/media",
                p.RegisterMedia(title, (p.PressedDisc(Id.random(IdKind.MEDIA), bytes(32)),)),
                p.Done,
            )
        assert err.value.status == 403
        with pytest.raises(ServerError, match="already registered with other keys"):
            c.call("/v1/publisher/titles", p.RegisterTitle(title, "mine", crypto.random_key(), os.urandom(32)), p.Done)
    # a disc of the title with a MID of the rogue's own, its MID area signed with the rogue's key
    forged = tmp_path / "forged.disc"
    forged.write_bytes(world["discs"][1].read_bytes())
    with DiscImage.open(forged) as d:
        digest = d.disc.title_digest
    key = crypto.signing_key()
    mid = Id.random(IdKind.MEDIA)
    secret = crypto.signing_seed()
    disc_key = crypto.public_bytes(crypto.signing_key_from(secret))
    block = disc_fmt.encode_mid_area(
        disc_fmt.Pressing.MID,
        mid,
        secret,
        key.sign(disc_fmt.mid_signed_message(digest, disc_fmt.Pressing.MID, mid, disc_key)),
    )
    with open(forged, "r+b") as f:
        f.seek(disc_fmt.MID_AREA_OFFSET)
        f.write(block)
    bob = world["bob"]
    r = cli("console", "insert-disc", forged, *con(bob))
    assert r.code == 3 and "not signed by the title's publisher" in r.err
    audit = json.loads(cli("server", "audit", "--home", srv.home.root, "--json").out)["entries"]
    assert not [e for e in audit if e["action"] == "register-mid" and e["actor"] == "publisher:rogue"]
