"""Attacks by someone who holds lent device files and knows Python (issue 11).

Every device is a file its holder reads byte for byte. Here the attacker uses the project's own
library with full knowledge of the lent files' bytes and of every ID printed on a label, and also
of their own console's and HDD's secrets (they hold those files too). They unwrap what the MC-Key
opens, try every device secret they have on every sealed item, derive every key those allow, in
today's way and in the way before device binding, re-seal device IDs, re-wrap keys, and edit the
card and the HDD catalog. Each test asserts that nothing sealed opens, that no key they can derive
decrypts a single chunk of any title (so no plaintext byte can come out), and that play and mount
refuse with CONTENT REPRODUCTION IS NOT PERMITTED (install, for a pending Content-Key, with COPY IS
NOT PERMITTED).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import replace
from pathlib import Path

import pytest

from vhw import bindings, crypto
from vhw.bindings import DeviceSecrets, TitleBinding, owner_of
from vhw.console import decisions
from vhw.console.install import read_title
from vhw.console.mount import Tree
from vhw.devices import card as card_dev
from vhw.devices import rom as rom_dev
from vhw.devices.disc import DiscImage
from vhw.devices.hdd import HddImage
from vhw.formats.card import Card
from vhw.formats.hdd import HddFile
from vhw.ids import Id

from .conftest import COPY, PLAY, file_sha256, make_title
from .servers import RunningServer, factory, hardware_of, match_of, publish


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    server = RunningServer.start(tmp_path_factory.mktemp("binding") / "home")
    yield server
    server.stop()


@pytest.fixture
def world(cli, srv, tmp_path):
    """Alice: registered, one title installed, the keys of a second disc pending on her card.
    Bob, the borrower: his own registered console, HDD and card."""
    src = make_title(tmp_path / "src", seed=111, big=200_000)
    title = f"BIND-{os.urandom(3).hex().upper()}"
    discs = publish(cli, srv, src, tmp_path, title, count=2)
    other_src = make_title(tmp_path / "src2", seed=112)
    other_title = f"PEND-{os.urandom(3).hex().upper()}"
    [pending_disc] = publish(cli, srv, other_src, tmp_path, other_title)
    alice, bob = (
        factory(cli, srv, tmp_path / "alice", hdd_size="64M"),
        factory(cli, srv, tmp_path / "bob", hdd_size="64M"),
    )
    for who in (alice, bob):
        assert cli("console", "register", "--console", who["console"]).code == 0
    con = ["--console", alice["console"]]
    assert cli("console", "insert-disc", discs[0], *con).code == 0
    assert cli("console", "install", *con).code == 0
    assert cli("console", "eject-disc", *con).code == 0
    assert cli("console", "insert-disc", pending_disc, *con).code == 0
    assert cli("console", "acquire", *con).code == 0  # its Content-Key waits on the card
    assert cli("console", "eject-disc", *con).code == 0
    assert cli("console", "eject-card", *con).code == 0  # the card leaves Alice's console
    return {
        "alice": alice,
        "bob": bob,
        "title": title,
        "src": src,
        "pending": pending_disc,
        "pending_title": other_title,
    }


# -- what the attacker can compute ------------------------------------------------------------------


def secrets_of(*paths: Path) -> tuple[list[bytes], list[bytes]]:
    """The console secrets and HDD secrets in the given ROM and HDD files (plus a made-up one each)."""
    consoles, hdds = [crypto.device_secret()], [crypto.device_secret()]
    for path in paths:
        if path.suffix == ".rom":
            consoles.append(rom_dev.load(path).secret)
        else:
            with HddImage.open(path) as img:
                hdds.append(img.secret)
    return consoles, hdds


def ids_of(dev: dict) -> tuple[Id, Id]:
    """A console's Client ID and an HDD's HDD-ID: printed on their labels, so known to anyone."""
    with HddImage.open(dev["hdd"]) as img:
        return rom_dev.load(dev["rom"]).client_id, img.hdd_id


class Attacker:
    """Everything the holder of a card (and what else they hold) can unwrap, open and derive."""

    def __init__(self, card: Card, consoles: list[bytes], hdds: list[bytes], ids: list[tuple[Id, Id]]):
        self.card, self.consoles, self.hdds, self.ids = card, consoles, hdds, ids
        self.view = decisions.CardView.open(card)  # the MC-Key opens the User ID and the MIDs: not keys
        assert self.view.user is not None
        self.opened: list[bytes] = []  # every sealed item that opened, whatever it is

    def devices(self):
        for (client, hdd), console, disk in itertools.product(self.ids, self.consoles, self.hdds):
            yield DeviceSecrets(client, hdd, console, disk)

    def open_everything(self) -> list[bytes]:
        """Try every sealed item on the card with every device secret held, in every binding,
        and with the MC-Key alone (the way before device binding)."""
        card, user = self.card, self.view.user
        items = [(card.content_gen_key, bindings.CONTENT_GEN_KEY, bindings.content_gen_key(card.mc_id, user))]
        for lic, mid in self.view.licenses():
            if lic.content_key and mid is not None:
                items.append(
                    (lic.content_key, bindings.CONTENT_KEY, bindings.content_key(card.mc_id, mid, lic.title_id))
                )
        for blob, purpose, ad in items:
            for attempt in self._openers(purpose, ad):
                try:
                    self.opened.append(attempt(blob))
                except crypto.Invalid:
                    pass
        return self.opened

    def _openers(self, purpose: str, ad: bytes):
        mc_key = self.card.mc_key
        yield lambda blob: crypto.unwrap(mc_key, blob, ad)
        for devices in self.devices():
            yield lambda blob, d=devices: crypto.unwrap(mc_key, bindings.open_on_devices(d, purpose, blob, ad), ad)
            yield lambda blob, d=devices: bindings.open_on_devices(d, purpose, blob, ad)
            yield lambda blob, d=devices: crypto.open_sealed(d.console, blob, b"")
            yield lambda blob, d=devices: crypto.open_sealed(d.hdd, blob, b"")

    def candidate_generators(self) -> list[bytes]:
        """Whatever could stand for a Content-Gen-Key: what opened, the MC-Key, a key of their own."""
        return [*self.opened, self.card.mc_key, crypto.random_key()]

    def title_keys(self, title_id: str, hdd_id: Id, salt: bytes):
        """Every title key derivable: today's ladder over every candidate and every device secret
        held, the ladder before device binding, and the raw secrets themselves."""
        user = self.view.user
        for cgk in self.candidate_generators():
            for devices in self.devices():
                yield TitleBinding.derive(cgk, user, devices).title_key(title_id, salt)
            yield crypto.derive(cgk, crypto.context("hdd-title-key", hdd_id, title_id), salt=salt)  # before
            yield cgk
        yield from self.consoles
        yield from self.hdds


def no_chunk_opens(keys, chunks) -> int:
    """Try each key on the first chunk of each file; every one must fail. Returns the tries."""
    tries = 0
    chunks = list(chunks)
    for key in keys:
        for f, sealed in chunks:
            cipher = f.cipher(key) if isinstance(f, HddFile) else crypto.ChunkCipher(key, f.stream_id, f.size)
            with pytest.raises(crypto.Invalid):
                cipher.open(0, sealed)
            tries += 1
    return tries


def title_chunks(img: HddImage, title):
    return [(f, img.read_sealed(f, 0)) for f in title.files]


def assert_refused_to_play(cli, console: Path, title: str, tmp_path: Path) -> None:
    r = cli("console", "play", "--console", console, title)
    assert (r.code, r.err) == (14, PLAY) and r.out == ""
    mnt = tmp_path / f"mnt-{os.urandom(2).hex()}"
    mnt.mkdir()
    r = cli("console", "mount", mnt, "--console", console)
    assert (r.code, r.err) == (14, PLAY)
    assert os.listdir(mnt) == []


def forge_card(card: Card, user: Id, devices: DeviceSecrets) -> tuple[Card, bytes]:
    """The attacker's card: their own Content-Gen-Key wrapped with the MC-Key and sealed to the
    borrower's devices, the borrower's IDs re-sealed under it. The card token stays the server's."""
    cgk = crypto.random_key()
    forged = replace(
        card,
        content_gen_key=bindings.issue_content_gen_key(devices.public(), card.mc_key, card.mc_id, user, cgk),
        sealed_ids=bindings.seal_device_ids(cgk, user, devices.client_id, devices.hdd_id),
    )
    return forged, cgk


# -- the attacks ------------------------------------------------------------------------------------------


def test_a_lent_card_yields_no_key_and_no_plaintext(cli, world, tmp_path):
    """Bob holds Alice's card and his own console and HDD."""
    alice, bob = world["alice"], world["bob"]
    consoles, hdds = secrets_of(bob["rom"], bob["hdd"])
    ids = [ids_of(alice), ids_of(bob), (ids_of(bob)[0], ids_of(alice)[1])]
    card = card_dev.load(alice["card"])
    attacker = Attacker(card, consoles, hdds, ids)
    assert attacker.open_everything() == []  # nothing sealed on the card opens
    # not even the title's data on Alice's own HDD (which Bob does not hold) would decrypt
    with HddImage.open(alice["hdd"]) as img:
        title = img.volume.catalog.title(world["title"])
        tried = no_chunk_opens(
            attacker.title_keys(title.title_id, img.hdd_id, title.key_salt), title_chunks(img, title)
        )
    assert tried > 50
    # through the console: the card as it is, and re-sealed for Bob's devices
    assert cli("console", "insert-card", alice["card"], "--slot", "2", "--console", bob["console"]).code == 0
    backup = alice["card"].read_bytes()
    con = bob["console"]
    r = cli("console", "play", "--slot", "2", "--console", con, world["title"])
    assert (r.code, r.err) == (14, PLAY)
    forged, _ = forge_card(card, attacker.view.user, hardware_of(bob["rom"], bob["hdd"]).devices)
    card_dev.save(alice["card"], forged)
    r = cli("console", "play", "--slot", "2", "--console", con, world["title"])
    assert (r.code, r.err) == (14, PLAY)  # the server's card token names the real key's owner
    alice["card"].write_bytes(backup)


def test_a_lent_card_and_hdd_yield_no_plaintext(cli, world, tmp_path):
    """Bob holds Alice's card and Alice's HDD, and his own console (and HDD)."""
    alice, bob = world["alice"], world["bob"]
    consoles, hdds = secrets_of(bob["rom"], bob["hdd"], alice["hdd"])
    ids = [ids_of(alice), (ids_of(bob)[0], ids_of(alice)[1])]
    card = card_dev.load(alice["card"])
    attacker = Attacker(card, consoles, hdds, ids)
    assert attacker.open_everything() == []
    with HddImage.open(alice["hdd"]) as img:
        title = img.volume.catalog.title(world["title"])
        assert (
            no_chunk_opens(attacker.title_keys(title.title_id, img.hdd_id, title.key_salt), title_chunks(img, title))
            > 50
        )
    lent = tmp_path / "lent"
    assert cli("console", "setup", lent, "--rom", bob["rom"], "--hdd", alice["hdd"]).code == 0
    assert cli("console", "insert-card", alice["card"], "--console", lent).code == 0
    assert_refused_to_play(cli, lent, world["title"], tmp_path)
    # re-seal the device IDs for Bob's console with a Content-Gen-Key of his own, and edit the HDD
    # catalog so that the title reads as bound to what that key derives on this console and HDD
    devices = hardware_of(bob["rom"], alice["hdd"]).devices
    forged, fake_cgk = forge_card(card, attacker.view.user, devices)
    card_dev.save(alice["card"], forged)
    binding = TitleBinding.derive(fake_cgk, attacker.view.user, devices)
    with HddImage.open(alice["hdd"], write=True) as img:
        vol = img.volume
        t = vol.catalog.title(world["title"])
        edited = replace(t, bound_to=binding.owner, owner=owner_of(fake_cgk))
        img.apply(
            *vol.commit(
                replace(
                    vol.catalog, titles=tuple(edited if x.title_id == t.title_id else x for x in vol.catalog.titles)
                )
            )
        )
    assert_refused_to_play(cli, lent, world["title"], tmp_path)  # the card token does not verify
    # and past every check, straight into the library: the mount lists the title as readable
    # under the forged binding, and every read of it fails
    with HddImage.open(alice["hdd"]) as img:
        t = img.volume.catalog.title(world["title"])
        tree = Tree(img.volume.catalog, binding.owner)
        assert all(n.readable for n in tree.nodes.values() if n.title and n.title.title_id == t.title_id)
        with pytest.raises(Exception, match="does not decrypt"):
            read_title(img, t, binding)


def test_a_pending_content_key_moved_to_another_console_copies_nothing(cli, world, tmp_path):
    alice, bob = world["alice"], world["bob"]
    assert cli("console", "insert-card", alice["card"], "--slot", "2", "--console", bob["console"]).code == 0
    assert cli("console", "insert-disc", world["pending"], "--console", bob["console"]).code == 0
    before = (file_sha256(alice["card"]), file_sha256(bob["hdd"]))
    r = cli("console", "install", "--slot", "2", "--console", bob["console"])
    assert (r.code, r.err) == (13, COPY)
    assert (file_sha256(alice["card"]), file_sha256(bob["hdd"])) == before
    # nothing on the card decrypts the disc, whatever the attacker tries with what they hold
    consoles, hdds = secrets_of(bob["rom"], bob["hdd"])
    card = card_dev.load(alice["card"])
    assert any(lic.content_key for lic in card.licenses)
    attacker = Attacker(card, consoles, hdds, [ids_of(alice), ids_of(bob)])
    assert attacker.open_everything() == []
    with DiscImage.open(world["pending"]) as disc:
        chunks = [(f, disc.read_sealed(f, 0)) for f in disc.manifest.files]
        assert no_chunk_opens([*attacker.candidate_generators(), *consoles, *hdds], chunks) > 5


def test_a_second_user_on_the_same_hdd_reads_none_of_the_firsts_titles(cli, srv, world, tmp_path):
    """Carol shares Alice's console and HDD with her own card: she holds the ROM and the HDD, so
    both device secrets, but not Alice's Content-Gen-Key."""
    alice = world["alice"]
    carol = factory(cli, srv, tmp_path / "carol")
    shared = tmp_path / "shared"
    assert cli("console", "setup", shared, "--rom", alice["rom"], "--hdd", alice["hdd"]).code == 0
    assert cli("console", "insert-card", carol["card"], "--console", shared).code == 0
    assert cli("console", "register", "--console", shared).code == 0
    [disc] = publish(cli, srv, make_title(tmp_path / "hers", seed=113), tmp_path, f"HERS-{os.urandom(3).hex().upper()}")
    assert cli("console", "insert-disc", disc, "--console", shared).code == 0
    assert cli("console", "install", "--console", shared).code == 0  # her keys, her title
    mine = match_of({"rom": alice["rom"], "hdd": alice["hdd"], "card": carol["card"]}).binding
    with HddImage.open(alice["hdd"], write=True) as img:  # she marks Alice's title as hers
        vol = img.volume
        t = vol.catalog.title(world["title"])
        img.apply(
            *vol.commit(
                replace(
                    vol.catalog,
                    titles=tuple(
                        replace(x, bound_to=mine.owner) if x.title_id == t.title_id else x for x in vol.catalog.titles
                    ),
                )
            )
        )
    with HddImage.open(alice["hdd"]) as img:
        t = img.volume.catalog.title(world["title"])
        with pytest.raises(Exception, match="does not decrypt"):
            read_title(img, t, mine)
        consoles, hdds = secrets_of(alice["rom"], alice["hdd"])
        attacker = Attacker(card_dev.load(carol["card"]), consoles, hdds, [ids_of(alice)])
        attacker.open_everything()  # her own keys open: they are hers, and open nothing of Alice's
        assert no_chunk_opens(attacker.title_keys(t.title_id, img.hdd_id, t.key_salt), title_chunks(img, t)) > 20
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    assert cli("console", "mount", mnt, "--console", shared).code == 0
    try:
        with pytest.raises(OSError):  # listed as readable after her edit, but no byte comes out
            (mnt / world["title"] / "data.bin").read_bytes()
    finally:
        assert cli("console", "unmount", mnt, "--console", shared).code == 0


def test_the_operator_with_the_database_and_a_stolen_hdd_decrypts_nothing(world, srv):
    """Someone who holds the database, the master key and Alice's HDD image: every Content-Gen-Key
    is theirs, but the console's secret is not, and titles are bound to it."""
    alice = world["alice"]
    user = decisions.CardView.open(card_dev.load(alice["card"])).user
    lic = srv.home.licensing(srv.home.store())
    try:
        with lic.store.transaction() as tx:
            blob = tx.one("SELECT content_gen_key FROM users WHERE user_id = ?", str(user))[0]
        cgk = lic.context.open("users", user, blob)
    finally:
        lic.store.close()
    assert crypto.equal(cgk, match_of(alice).content_gen_key)  # the real one
    client_id, hdd_id = ids_of(alice)
    _, hdds = secrets_of(alice["hdd"])
    with HddImage.open(alice["hdd"]) as img:
        t = img.volume.catalog.title(world["title"])
        keys = [
            TitleBinding.derive(cgk, user, DeviceSecrets(client_id, hdd_id, crypto.device_secret(), h)).title_key(
                t.title_id, t.key_salt
            )
            for h in hdds
        ]
        keys.append(crypto.derive(cgk, crypto.context("hdd-title-key", hdd_id, t.title_id), salt=t.key_salt))
        assert no_chunk_opens(keys, title_chunks(img, t)) >= 3
        # with the console's ROM as well, they hold that console: then it does decrypt
        rom = rom_dev.load(alice["rom"])
        owned = TitleBinding.derive(cgk, user, DeviceSecrets(client_id, hdd_id, rom.secret, img.secret))
        assert read_title(img, t, owned)["data.bin"] == (world["src"] / "data.bin").read_bytes()
