"""Game saves on the memory card (issue 12): the sealed save format, the card image's commits and
their crash safety, the card manager's refusals, and the running title's save folder."""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vhw import bindings, crypto, saves
from vhw.devices.card import CardImage
from vhw.devices.files import apply_op
from vhw.formats import card as card_fmt
from vhw.formats.common import seal_envelope
from vhw.ids import Id, IdKind
from vhw.plans import Sync, Write
from vhw.stores.card import CardFull

from .conftest import file_sha256

TITLE = "VHW-GAME-1"


def registered_card(path: Path, *, capacity: int = 64 * 4096, user: Id | None = None) -> tuple[card_fmt.Card, Id]:
    """A card whose User ID is set (as registration leaves it), with a pending license."""
    mc_id, mc_key, user = Id.random(IdKind.CARD), crypto.random_key(), user or Id.random(IdKind.USER)
    items = card_fmt.Card(
        mc_id,
        mc_key,
        1,
        user_id=bindings.wrap_id(mc_key, user, bindings.user_id(mc_id)),
        content_gen_key=os.urandom(160),
        sealed_ids=os.urandom(50),
        card_token=os.urandom(70),
        licenses=(card_fmt.License("T-1", os.urandom(40), os.urandom(160), 3),),
    )
    CardImage.create(path, items, capacity=capacity)
    return items, user


# -- the sealed save, pure ------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=200_000), st.binary(max_size=64), st.integers(0, 2**63))
def test_a_save_opens_as_it_was_sealed_and_not_otherwise(data, meta, modified):
    key = crypto.random_key()
    sealed = saves.seal(key, TITLE, "slot1.sav", data, modified=modified, meta=meta)
    assert saves.open_save(key, sealed.entry, sealed.data) == data
    with pytest.raises(saves.SaveInvalid):  # another card's key (another card, or another user's)
        saves.open_save(crypto.random_key(), sealed.entry, sealed.data)
    for field, value in (
        ("name", "other.sav"),
        ("title_id", "OTHER-1"),
        ("size", len(data) + 1),
        ("modified", modified + 1),
        ("meta", meta + b"!"),
        ("stream_id", os.urandom(16)),
    ):
        with pytest.raises(saves.SaveInvalid):  # an entry edited by hand
            saves.open_save(key, replace(sealed.entry, **{field: value}), sealed.data)
    if sealed.data:
        i = random.Random(len(data)).randrange(len(sealed.data))
        flipped = bytearray(sealed.data)
        flipped[i] ^= 1
        with pytest.raises(saves.SaveInvalid):  # its data edited by hand
            saves.open_save(key, sealed.entry, bytes(flipped))
    renamed = saves.retagged(key, sealed.entry, name="renamed.sav")
    assert saves.open_save(key, renamed, sealed.data) == data


def test_the_save_key_is_bound_to_card_and_user():
    mc_key, mc_id, user = crypto.random_key(), Id.random(IdKind.CARD), Id.random(IdKind.USER)
    k = saves.save_key(mc_key, mc_id, user)
    assert (
        len(
            {
                k,
                saves.save_key(crypto.random_key(), mc_id, user),
                saves.save_key(mc_key, Id.random(IdKind.CARD), user),
                saves.save_key(mc_key, mc_id, Id.random(IdKind.USER)),
            }
        )
        == 4
    )


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=5000), st.binary(max_size=64), st.integers(0, 2**63))
def test_export_round_trip_and_corruption(data, meta, modified):
    e = saves.Exported(Id.random(IdKind.USER), TITLE, "cave.sav", modified, meta, data)
    blob = saves.encode_export(e)
    assert saves.decode_export(blob, path="x") == e
    for n in sorted({0, 1, 10, len(blob) // 2, len(blob) - 1}):
        with pytest.raises(Exception) as err:
            saves.decode_export(blob[:n], path="x")
        assert isinstance(err.value, saves.ImageError)
    for i in range(0, len(blob), max(1, len(blob) // 40)):
        bad = bytearray(blob)
        bad[i] ^= 0x20
        with pytest.raises(saves.ImageError):
            saves.decode_export(bytes(bad), path="x")


# -- the card image's commits ----------------------------------------------------------------------------


def test_saves_are_kept_listed_replaced_renamed_and_removed(tmp_path):
    path = tmp_path / "c.card"
    items, _ = registered_card(path)
    with CardImage.open(path, write=True) as img:
        img.write_save(TITLE, "a.sav", b"first", modified=1, meta=b"level 1")
        img.write_save(TITLE, "b.sav", b"x" * 100_000, modified=2)
        img.write_save(TITLE, "a.sav", b"second", modified=3, meta=b"level 2")
        renamed = img.rename_save(img.find(TITLE, "b.sav"), "c.sav", modified=4)
        assert renamed.name == "c.sav"
    with CardImage.open(path) as img:
        assert img.card == items  # the licensing items untouched by saves
        assert sorted(s.name for s in img.saves) == ["a.sav", "c.sav"]
        assert img.read_save(img.find(TITLE, "a.sav")) == b"second" and img.find(TITLE, "a.sav").meta == b"level 2"
        assert img.read_save(img.find(TITLE, "c.sav")) == b"x" * 100_000
        used = img.state.used_bytes
        assert used == 4096 + 25 * 4096 and img.state.free_bytes == 64 * 4096 - used
        assert img.check() == []
    with CardImage.open(path, write=True) as img:
        assert [s.name for s in img.remove_saves(TITLE)] == ["a.sav", "c.sav"]
        assert img.state.free_bytes == 64 * 4096


def test_a_save_that_does_not_fit_changes_nothing(tmp_path):
    path = tmp_path / "c.card"
    registered_card(path, capacity=8 * 4096)
    with CardImage.open(path, write=True) as img:
        img.write_save(TITLE, "a.sav", b"a" * 20_000, modified=1)
    before = file_sha256(path)
    with CardImage.open(path, write=True) as img:
        with pytest.raises(CardFull, match="full"):  # a new version needs room beside the old one
            img.write_save(TITLE, "a.sav", b"b" * 20_000, modified=2)
        with pytest.raises(CardFull):
            img.write_saves([(TITLE, "x.sav", b"1" * 4000, 1, b""), (TITLE, "y.sav", b"2" * 20_000, 1, b"")])
    assert file_sha256(path) == before


def collect(img: CardImage, title: str, name: str, data: bytes):
    key = img.save_key()
    sealed = saves.seal(key, title, name, data, modified=99, meta=b"new")
    return img.state.put(sealed.entry, sealed.data)


def replay(base: Path, target: Path, ops, last=None) -> None:
    shutil.copyfile(base, target)
    fd = os.open(target, os.O_RDWR)
    try:
        for op in ops + ([last] if last is not None else []):
            apply_op(fd, op)
    finally:
        os.close(fd)


def test_every_prefix_of_a_save_leaves_the_old_save_or_the_new_one(tmp_path):
    """Every prefix of a save's write plan, its last write torn (half, or garbage of full length):
    the card opens, every other save and every licensing item is intact, and the save being
    written is exactly its old version or exactly its new one."""
    base = tmp_path / "base.card"
    items, _ = registered_card(base, capacity=32 * 4096)
    others = {"keep1.sav": os.urandom(5000), "keep2.sav": os.urandom(30_000)}
    with CardImage.open(base, write=True) as img:
        for name, data in others.items():
            img.write_save(TITLE, name, data, modified=1)
        img.write_save(TITLE, "slot.sav", b"old progress" * 100, modified=2)
        new = os.urandom(40_000)
        ops, _ = collect(img, TITLE, "slot.sav", new)
    assert sum(isinstance(o, Sync) for o in ops) == 4  # data, both catalog copies, superblock copy A, copy B
    target = tmp_path / "t.card"
    seen = set()
    for k in range(len(ops) + 1):
        variants = (
            [None]
            if k == len(ops) or not isinstance(ops[k], Write)
            else [
                Write(ops[k].offset, ops[k].data[: len(ops[k].data) // 2]),
                Write(ops[k].offset, os.urandom(len(ops[k].data))),
            ]
        )
        for last in variants:
            replay(base, target, ops[:k], last)
            with CardImage.open(target) as img:
                assert img.check() == [] and img.card == items
                got = {s.name: img.read_save(s) for s in img.saves}
            assert {n: got[n] for n in others} == others
            state = {b"old progress" * 100: "old", new: "new"}[got["slot.sav"]]
            seen.add(state)
    assert seen == {"old", "new"}


def test_lost_unsynced_writes_of_a_save(tmp_path):
    base = tmp_path / "base.card"
    items, _ = registered_card(base, capacity=32 * 4096)
    with CardImage.open(base, write=True) as img:
        img.write_save(TITLE, "slot.sav", b"old", modified=2)
        ops, _ = collect(img, TITLE, "slot.sav", os.urandom(50_000))
    rnd = random.Random(5)
    syncs = [i for i, o in enumerate(ops) if isinstance(o, Sync)]
    target = tmp_path / "t.card"
    for _trial in range(60):
        cut = rnd.randrange(len(ops) + 1)
        last_sync = max([s for s in syncs if s < cut], default=-1)
        kept = ops[: last_sync + 1] + [o for o in ops[last_sync + 1 : cut] if rnd.random() < 0.5]
        replay(base, target, kept)
        with CardImage.open(target) as img:
            assert img.check() == [] and img.card == items
            assert len(img.read_save(img.find(TITLE, "slot.sav"))) in (3, 50_000)


# -- refusals through the card manager -----------------------------------------------------------------


def splice(src: Path, dst: Path, title: str, name: str) -> None:
    """Copy a save's bytes (its entry and data) from one card image onto another, as someone with a
    hex editor and Python would: the data into free blocks, the entry into the next catalog."""
    with CardImage.open(src) as a:
        entry = a.find(title, name)
        data = a.read_sealed(entry)
    with CardImage.open(dst, write=True) as b:
        b.apply(*b.state.put(replace(entry, extents=()), data))
        assert b.state.catalog.save(title, name).tag == entry.tag


def test_refusals_each_one_line_and_nothing_changed(cli, tmp_path):
    alice = tmp_path / "alice.card"
    _, user = registered_card(alice)
    alice2 = tmp_path / "alice2.card"  # a second card of the same user (a reissued one)
    registered_card(alice2, user=user)
    bob = tmp_path / "bob.card"
    registered_card(bob, capacity=4 * 4096)
    with CardImage.open(alice, write=True) as img:
        img.write_save(TITLE, "cave.sav", b'{"moves": 12}', modified=1, meta=b"12 moves")
        img.write_save(TITLE, "big.sav", os.urandom(30_000), modified=1)

    def refused(*args, code=3, says=""):
        before = {p: file_sha256(p) for p in (alice, alice2, bob)}
        r = cli("card", "saves", *args)
        assert r.code == code and r.err.count("\n") == 1 and says in r.err and "Traceback" not in r.err, r
        assert {p: file_sha256(p) for p in (alice, alice2, bob)} == before
        return r

    # copied to the same user's second card: it works, and opens there
    assert cli("card", "saves", "copy", alice, alice2, TITLE).code == 0
    r = cli("card", "saves", "ls", alice2)
    assert "cave.sav" in r.out and "12 moves" in r.out and "does not verify" not in r.out
    # a save whose bytes were copied to another user's card (or another card at all)
    splice(alice, bob, TITLE, "cave.sav")
    assert "does not verify" in cli("card", "saves", "ls", bob).out
    refused("export", bob, TITLE, "cave.sav", "-o", tmp_path / "x.sav", says="does not verify")
    assert not (tmp_path / "x.sav").exists()
    # a save edited by hand: one byte of its data, then one of its metadata in the catalog
    edited = tmp_path / "edited.card"
    shutil.copyfile(alice2, edited)
    with CardImage.open(edited) as img:
        at = img.find(TITLE, "cave.sav").extents[0].offset + 5
    with open(edited, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 1]))
    for victim in (edited,):
        r = cli("card", "saves", "export", victim, TITLE, "cave.sav", "-o", tmp_path / "y.sav")
        assert r.code == 3 and "does not verify" in r.err and not (tmp_path / "y.sav").exists()
    with CardImage.open(alice2, write=True) as img:  # the metadata, re-committed with its old tag
        entry = img.find(TITLE, "cave.sav")
        img.apply(*img.state.replace_entry(entry, replace(entry, meta=b"99 moves")))
    refused("export", alice2, TITLE, "cave.sav", "-o", tmp_path / "z.sav", says="does not verify")
    refused("copy", alice2, alice, TITLE, says="does not verify")
    # copying to another user's card, and importing another user's export
    refused("copy", alice, bob, TITLE, code=9, says="another user's card")
    assert cli("card", "saves", "export", alice, TITLE, "cave.sav", "-o", tmp_path / "cave.export").code == 0
    refused("import", bob, tmp_path / "cave.export", code=9, says="another user")
    # an export older than the card's save would take the game back: only with --force
    with CardImage.open(alice2, write=True) as img:
        img.write_save(TITLE, "cave.sav", b'{"moves": 40}', modified=5, meta=b"40 moves")
    r = refused("import", alice2, tmp_path / "cave.export", code=9, says="newer than the export")
    assert "--force" in r.err
    assert cli("card", "saves", "import", "--force", alice2, tmp_path / "cave.export").code == 0
    assert "12 moves" in cli("card", "saves", "ls", alice2).out
    # so would a copy from a card whose save is older: refused like the import, only with --force
    with CardImage.open(alice2, write=True) as img:
        img.write_save(TITLE, "cave.sav", b'{"moves": 41}', modified=9, meta=b"41 moves")
    r = refused("copy", alice, alice2, TITLE, code=9, says=f"its save {TITLE}/cave.sav is newer than {alice}")
    assert "--force" in r.err and "41 moves" in cli("card", "saves", "ls", alice2).out
    assert cli("card", "saves", "copy", "--force", alice, alice2, TITLE).code == 0
    assert "12 moves" in cli("card", "saves", "ls", alice2).out
    # a foreign file, a damaged export
    (tmp_path / "foreign").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(100))
    refused("import", alice, tmp_path / "foreign", says="not a save export")
    damaged = bytearray((tmp_path / "cave.export").read_bytes())
    damaged[30] ^= 1
    (tmp_path / "damaged.export").write_bytes(bytes(damaged))
    refused("import", alice, tmp_path / "damaged.export", says="damaged")
    # a save that does not fit
    assert cli("card", "saves", "export", alice, TITLE, "big.sav", "-o", tmp_path / "big.export").code == 0
    bob2 = tmp_path / "small.card"
    registered_card(bob2, capacity=2 * 4096, user=user)
    before = file_sha256(bob2)
    r = cli("card", "saves", "import", bob2, tmp_path / "big.export")
    assert r.code == 8 and "full" in r.err and r.err.count("\n") == 1 and file_sha256(bob2) == before
    # a card of the old format
    old = tmp_path / "old.card"
    old.write_bytes(seal_envelope(card_fmt.MAGIC, 2, b"\0" * 100))
    for args in (["ls", old], ["import", old, tmp_path / "cave.export"], ["copy", alice, old]):
        r = cli("card", "saves", *args)
        assert r.code == 3 and "no longer supported" in r.err and "again" in r.err, r
    assert old.read_bytes() == seal_envelope(card_fmt.MAGIC, 2, b"\0" * 100)
    # and what the manager removes is gone
    assert cli("card", "saves", "rm", alice, TITLE, "big.sav").code == 0
    assert "big.sav" not in cli("card", "saves", "ls", alice).out


def test_card_info_shows_space(cli, tmp_path):
    path = tmp_path / "c.card"
    registered_card(path, capacity=8 * 1024 * 1024)
    with CardImage.open(path, write=True) as img:
        img.write_save(TITLE, "a.sav", os.urandom(100_000), modified=1)
    r = cli("card", "info", path)
    assert r.code == 0 and "saves        1; 100.0 KiB used, 7.9 MiB free of 8.0 MiB" in r.out, r
    assert path.stat().st_size > 8 * 1024 * 1024 > 1024 * 1024 > path.stat().st_blocks * 512  # sparse


# -- the running title's save folder, end to end -----------------------------------------------------

SAVER = '''\
"""A test title that saves: `big N` writes an N-byte save; `loop` writes version after version."""
import errno, os, random, sys

folder = os.environ.get("VHW_SAVE_DIR")
if not folder:
    print("no save folder"); sys.exit(3)
if sys.argv[1] == "big":
    try:
        with open(os.path.join(folder, "big.sav"), "wb") as f:
            f.write(os.urandom(int(sys.argv[2])))
    except OSError as exc:
        print("could not save:", errno.errorcode.get(exc.errno)); sys.exit(4)
    print("saved"); sys.exit(0)
for k in range(1, 10**6):
    body = b"VERSION %d\\n" % k + random.Random(k).randbytes(3 * 1024 * 1024)
    try:
        with open(os.path.join(folder, "big.sav"), "wb") as f:
            f.write(body)
    except OSError:
        sys.exit(5)
    print("saved", k, flush=True)
'''


def version_of(data: bytes) -> int:
    """Which whole version of the looping saver ``data`` is (or fail: a torn save)."""
    head, _, rest = data.partition(b"\n")
    k = int(head.split()[1])
    assert rest == random.Random(k).randbytes(3 * 1024 * 1024), "a torn save"
    return k


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    from .servers import RunningServer

    server = RunningServer.start(tmp_path_factory.mktemp("saves") / "home")
    yield server
    server.stop()


@pytest.fixture
def console(cli, srv, tmp_path):
    """A registered console with the sample game and the test saver installed."""
    from vhw.samples import build_samples

    from .servers import factory, publish

    game = build_samples(tmp_path / "samples")["game"]
    saver = tmp_path / "saver"
    saver.mkdir()
    (saver / "saver.py").write_text(SAVER)
    (saver / "vhw-title.json").write_text('{"name": "Saver", "kind": "game", "entry": "saver.py"}')
    suffix = os.urandom(2).hex().upper()
    dev = factory(cli, srv, tmp_path / "alice")
    con = ["--console", dev["console"]]
    assert cli("console", "register", *con).code == 0
    titles = {}
    for name, src in (("game", game), ("saver", saver)):
        titles[name] = f"{name.upper()}-{suffix}"
        [disc] = publish(cli, srv, src, tmp_path, titles[name])
        assert cli("console", "insert-disc", disc, *con).code == 0
        assert cli("console", "install", *con).code == 0
        assert cli("console", "eject-disc", *con).code == 0
    return {**dev, "con": con, "titles": titles}


def test_play_save_quit_and_continue(cli, console):
    from .conftest import vhw_subprocess

    con, game = console["con"], console["titles"]["game"]
    r = vhw_subprocess("console", "play", *con, game, "--moves", "dddss")
    assert r.code == 18 and "(saved on the memory card: in progress, 5 moves, key no)" in r.out, r
    r = cli("card", "saves", "ls", console["card"])
    assert r.code == 0 and game in r.out and "cave.sav" in r.out and "in progress, 5 moves, key no" in r.out, r
    r = vhw_subprocess("console", "play", *con, game, "--continue", "--moves", "ddd")
    assert "(continuing the saved game: 5 moves made)" in r.out and "result: unfinished after 8 moves" in r.out, r
    # the same state: the rest of the winning route from where it stopped wins
    r = vhw_subprocess("console", "play", *con, game, "--continue", "--moves", "wwddssss")
    assert r.code == 0 and "You escaped the cave in 16 moves!" in r.out, r
    assert "won, 16 moves, key yes" in cli("card", "saves", "ls", console["card"]).out
    # with no card in the save slot the title runs, cannot save, and both say so
    r = vhw_subprocess("console", "play", *con, "--save-slot", "2", game, "--moves", "d")
    assert "no memory card in slot 2" in r.err and "(no memory card: your progress is not saved)" in r.out, r
    assert "won, 16 moves" in cli("card", "saves", "ls", console["card"]).out  # unchanged


def test_a_full_card_gives_the_title_enospc_and_the_user_a_line(cli, console, tmp_path):
    from .conftest import vhw_subprocess

    con, saver = console["con"], console["titles"]["saver"]
    free = int(__import__("json").loads(cli("card", "info", console["card"], "--json").out)["free"])
    r = vhw_subprocess("console", "play", *con, saver, "big", free + 4096)
    assert r.code == 18 and "could not save: ENOSPC" in r.out and "ended with status 4" in r.err, r
    # one line for what went wrong, one for how the title ended
    assert r.err.splitlines()[0] == "vhw: the memory card is full: the save 'big.sav' does not fit", r
    assert r.err.count("\n") == 2 and "Traceback" not in r.err, r
    assert "big.sav" not in cli("card", "saves", "ls", console["card"]).out
    r = vhw_subprocess("console", "play", *con, saver, "big", 100_000)
    assert r.code == 0 and "saved" in r.out, r


def playing_after_two_saves(con: list, saver: str):
    """`vhw console play SAVER loop` running, once the title has said it saved twice; and that
    line."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "vhw", "console", "play", *map(str, con), saver, "loop"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = ""
    while not line.startswith("saved 2"):
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
    return proc, line


def test_sigkill_during_saves_of_a_running_title(cli, console):
    """The process that commits the title's saves is killed at random moments while the title
    writes 3 MiB saves one after another: the card always opens with one whole version."""
    import signal
    import time

    con, saver = console["con"], console["titles"]["saver"]
    with CardImage.open(console["card"]) as img:
        items = img.card
    rnd = random.Random(7)
    versions = []
    for _kill in range(6):
        proc, _ = playing_after_two_saves(con, saver)
        time.sleep(rnd.uniform(0, 0.08))
        [pid] = pids_with("saves-mount", str(console["console"]))
        os.kill(pid, signal.SIGKILL)
        proc.communicate(timeout=60)
        with CardImage.open(console["card"]) as img:
            assert img.check() == [] and img.card == items
            versions.append(version_of(img.read_save(img.find(saver, "big.sav"))))
    assert all(k >= 2 for k in versions)
    with CardImage.open(console["card"], write=True) as img:  # and the card takes saves afterwards
        img.write_save(saver, "big.sav", b"after", modified=1)


def test_a_card_ejected_while_the_title_plays_stops_it_and_keeps_its_saves(cli, console, tmp_path):
    """The card leaves its slot while the title writes save after save: play stops the title at once
    and says why (exit 9), no save lands after the ejection (the save folder refuses it), the
    version saved before is on the card whole, and no mount or temporary folder stays behind."""
    import tempfile
    import time

    con, saver = console["con"], console["titles"]["saver"]
    temp = Path(tempfile.gettempdir())
    before = {p.name for p in temp.glob("vhw-*")}
    proc, line = playing_after_two_saves(con, saver)
    assert cli("console", "eject-card", *con).code == 0
    ejected = time.monotonic()
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - ejected < 2.0
    assert proc.returncode == 9, err
    assert f"the memory card left slot 1 while {saver} was playing" in err, err
    with CardImage.open(console["card"]) as img:
        kept = version_of(img.read_save(img.find(saver, "big.sav")))
    saved = [int(x.split()[1]) for x in (line + out).splitlines() if x.startswith("saved ")]
    assert kept >= 2 and kept in (saved[-1], saved[-1] + 1)  # (the last one it said, or one it had just closed)
    assert {p.name for p in temp.glob("vhw-*")} <= before  # the mounts' temporary folders are gone
    assert pids_with(str(console["console"])) == []
    assert cli("console", "insert-card", console["card"], *con).code == 0


def pids_with(*words: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if all(w in cmd for w in words) and "-m vhw" in cmd:
                out.append(int(entry.name))
    return out
