"""Torn, truncated, flipped and foreign device files are refused clearly; never wrong plaintext.

ROM and card are small: every truncation length and every single-bit flip is tried. Disc and HDD
images are larger: 10,000 sampled truncation lengths and 10,000 sampled bit flips each, plus every
length and flip around the fixed areas' boundaries.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
from pathlib import Path

import pytest

from vhw import bindings, crypto
from vhw.bindings import TitleBinding
from vhw.cli import run
from vhw.console.install import install_plan, read_title
from vhw.devices.card import CardImage
from vhw.devices.disc import DiscImage
from vhw.devices.hdd import HddImage
from vhw.errors import ImageError, VhwError
from vhw.formats import card as card_fmt
from vhw.formats import ditto as ditto_fmt
from vhw.formats import hdd as hdd_fmt
from vhw.formats import rom as rom_fmt
from vhw.formats.common import Extent
from vhw.ids import Id, IdKind
from vhw.pki import make_ca
from vhw.publisher.keystore import KeyStore
from vhw.publisher.mastering import master, press

from .conftest import Result, make_title, source_files

SAMPLES = 4_000
PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489")


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    d = tmp_path_factory.mktemp("samples")
    ks = KeyStore(d / "ks")
    src = make_title(d / "src", big=150_000)
    master(src, d / "m.master", title_id="CORRUPT-1", name="c", keystore=ks)
    [(disc_path, _)] = press(d / "m.master", d / "discs", count=1, keystore=ks)
    content_key = ks.title("CORRUPT-1").content_key
    cgk = TitleBinding(crypto.random_key())  # (what the user's card, console and HDD derive)
    hdd = d / "h.hdd"
    HddImage.format(hdd, hdd_id=Id.random(IdKind.HDD), secret=crypto.device_secret(), size=1024 * 1024, formatted=1)
    with HddImage.open(hdd, write=True) as img, DiscImage.open(disc_path) as disc:
        img.run(install_plan(img.volume, disc, content_key=content_key, owner=bytes(16), binding=cgk, installed=1))
    ca_cert, _ = make_ca("vhw test platform")
    rom = rom_fmt.encode(
        rom_fmt.Rom(
            Id.random(IdKind.CLIENT),
            1,
            crypto.device_secret(),
            server_url="https://127.0.0.1:8443",
            trust_anchor=ca_cert,
        )
    )
    mc_id, mc_key, user = Id.random(IdKind.CARD), os.urandom(32), Id.random(IdKind.USER)
    items = card_fmt.Card(
        mc_id,
        mc_key,
        1,
        user_id=bindings.wrap_id(mc_key, user, bindings.user_id(mc_id)),
        content_gen_key=os.urandom(160),
        sealed_ids=os.urandom(50),
        licenses=(card_fmt.License("CORRUPT-1", os.urandom(40), os.urandom(160), 2),),
    )
    card_path = d / "c.card"
    CardImage.create(card_path, items, capacity=32 * 4096)
    card_saves = {("CORRUPT-1", "a.sav"): os.urandom(9000), ("CORRUPT-1", "b.sav"): os.urandom(70_000)}
    with CardImage.open(card_path, write=True) as img:
        for (title, name), data in card_saves.items():
            img.write_save(title, name, data, modified=5, meta=b"level 3")
        img.save_card(items)  # one more generation: both catalog halves and slots in use
    card = card_path.read_bytes()
    return {
        "dir": d,
        "disc": disc_path,
        "content_key": content_key,
        "hdd": hdd,
        "cgk": cgk,
        "rom": rom,
        "card": card,
        "card_items": items,
        "card_saves": card_saves,
        "files": source_files(src),
    }


# -- small devices: exhaustive --------------------------------------------------------------------


def test_rom_every_truncation_and_flip(samples):
    data = samples["rom"]
    good = rom_fmt.decode(data)
    for n in range(len(data)):
        with pytest.raises(ImageError):
            rom_fmt.decode(data[:n])
    with pytest.raises(ImageError, match="trailing"):
        rom_fmt.decode(data + b"\0")
    for bit in range(len(data) * 8):
        bad = bytearray(data)
        bad[bit // 8] ^= 1 << (bit % 8)
        try:
            got = rom_fmt.decode(bytes(bad))
        except ImageError:
            continue
        pytest.fail(f"flip of bit {bit} was accepted: {got == good}")


# -- memory card: sampled, like the HDD (a card image is its save capacity plus 1 MiB) -------------


def card_outcome(path: Path, items, expected: dict) -> str:
    """refused (open or check fails, or a save does not verify), noted (a damaged superblock slot:
    the other generation is in use), or intact. Never wrong licensing items or a wrong save."""
    try:
        with CardImage.open(path) as img:
            if img.check():
                return "refused"
            got = {s.key: img.read_save(s) for s in img.saves}
            noted = bool(img.notes)
            card = img.card
    except VhwError as exc:
        assert str(exc) and "\n" not in str(exc)
        return "refused"
    assert card == items and got == expected, "wrong licensing items or saves"
    return "noted" if noted else "intact"


def test_card_truncations_and_flips(samples, tmp_path):
    data, items, expected = samples["card"], samples["card_items"], samples["card_saves"]
    path = tmp_path / "victim.card"
    path.write_bytes(data)
    assert card_outcome(path, items, expected) == "intact"
    with CardImage.open(path) as img:
        state = img.state
    sb = state.sb
    meta = [
        Extent(sb.slot, 4096),
        Extent(sb.slot + ditto_fmt.DITTO, 4096),
        Extent(sb.catalog_offset, sb.catalog_length),
        Extent(sb.catalog_offset + card_fmt.CATALOG_DITTO, sb.catalog_length),
    ]
    current = [*meta, *state.used()]
    rnd = random.Random(12)
    fd = os.open(path, os.O_RDWR)
    try:
        bounds = [0, 4096, 8192, card_fmt.SAVE_START] + [e.offset for e in current] + [e.end for e in current]
        for n in _positions(len(data), bounds, rnd)[:3000]:
            os.ftruncate(fd, n)
            assert card_outcome(path, items, expected) == "refused", f"truncation to {n} accepted"
            os.pwrite(fd, data[n:], n)
        # every byte the current generation uses is protected: a flip in a copy of its superblock
        # or catalog is made good from the ditto copy of the same generation (noted: nothing rolls
        # back, the items are exactly the current ones), one in save data fails that save
        in_meta = {p for e in meta for p in range(e.offset, e.end)}
        in_use = [p for e in current for p in range(e.offset, e.end)]
        outcomes = {"refused": 0, "noted": 0}
        for pos in sorted(set(rnd.sample(in_use, min(4000, len(in_use))) + rnd.sample(sorted(in_meta), 600))):
            os.pwrite(fd, bytes([data[pos] ^ (1 << rnd.randrange(8))]), pos)
            got = card_outcome(path, items, expected)
            assert got == ("noted" if pos in in_meta else "refused"), f"flip at {pos}: {got}"
            outcomes[got] += 1
            os.pwrite(fd, data[pos : pos + 1], pos)
        assert outcomes["refused"] and outcomes["noted"] > 500
        # ... while a flip in free save space touches nothing
        free = [p for h in state.free() for p in range(h.offset, h.end)]
        for pos in rnd.sample(free, min(300, len(free))):
            os.pwrite(fd, bytes([data[pos] ^ 1]), pos)
            assert card_outcome(path, items, expected) == "intact"
            os.pwrite(fd, data[pos : pos + 1], pos)
    finally:
        os.close(fd)


# -- disc ------------------------------------------------------------------------------------------


def _positions(size: int, boundaries: list[int], rnd: random.Random) -> list[int]:
    near = {p + d for p in boundaries for d in range(-16, 17) if 0 <= p + d < size}
    picked = set(rnd.sample(range(size), min(size, SAMPLES)))
    return sorted(near | picked)


def disc_outcome(path: Path, key: bytes, expected: dict[str, bytes]) -> str:
    try:
        with DiscImage.open(path) as img:
            img.verify()
            got = {f.path: b"".join(c for _, c in img.decrypt(f, key)) for f in img.manifest.files}
    except VhwError as exc:
        assert str(exc) and "\n" not in str(exc)
        return "refused"
    assert got == expected, "wrong plaintext"
    return "intact"


def test_disc_truncations_and_flips(samples, tmp_path):
    data = samples["disc"].read_bytes()
    expected = samples["files"]
    key = samples["content_key"]
    path = tmp_path / "victim.disc"
    path.write_bytes(data)
    assert disc_outcome(path, key, expected) == "intact"
    rnd = random.Random(7)
    with DiscImage.open(path) as img:
        bounds = [0, 4096, 8192, img.disc.data_offset, img.disc.data_offset + img.disc.manifest_length, len(data)]
    fd = os.open(path, os.O_RDWR)
    try:
        for n in _positions(len(data), bounds, rnd):
            os.ftruncate(fd, n)
            assert disc_outcome(path, key, expected) == "refused", f"truncation to {n} accepted"
            os.pwrite(fd, data[n:], n)
        for pos in _positions(len(data), bounds, rnd):
            bit = 1 << rnd.randrange(8)
            os.pwrite(fd, bytes([data[pos] ^ bit]), pos)
            assert disc_outcome(path, key, expected) == "refused", f"flip at {pos} accepted"
            os.pwrite(fd, data[pos : pos + 1], pos)
        os.pwrite(fd, b"\0", len(data))
        assert disc_outcome(path, key, expected) == "refused"
    finally:
        os.close(fd)


# -- HDD -------------------------------------------------------------------------------------------


def hdd_outcome(path: Path, cgk: TitleBinding, expected: dict[str, bytes]) -> str:
    """refused (open or fsck fails), noted (fsck notes a damaged superblock slot: the previous
    generation is in use), or intact. Whatever a title reads is never wrong plaintext."""
    noted = False
    try:
        with HddImage.open(path) as img:
            if img.check(deep=True):
                return "refused"
            noted = bool(img.notes)
            got = {}
            for t in img.volume.catalog.titles:
                got.update(read_title(img, t, cgk))
    except VhwError as exc:
        assert str(exc) and "\n" not in str(exc)
        return "refused"
    assert got == expected, "wrong plaintext"
    return "noted" if noted else "intact"


def test_hdd_truncations_and_flips(samples, tmp_path):
    data = samples["hdd"].read_bytes()
    expected = samples["files"]
    cgk = samples["cgk"]
    path = tmp_path / "victim.hdd"
    path.write_bytes(data)
    assert hdd_outcome(path, cgk, expected) == "intact"
    with HddImage.open(path) as img:
        vol = img.volume
        used = [e for e in vol.used() if e.length]
        meta = [Extent(0, hdd_fmt.DATA_START), *vol.sb.catalog_copies]
        free = vol.free()
    rnd = random.Random(11)
    fd = os.open(path, os.O_RDWR)
    try:
        bounds = [0, 4096, 8192] + [e.offset for e in used] + [e.end for e in used]
        for n in _positions(len(data), bounds, rnd):
            os.ftruncate(fd, n)
            assert hdd_outcome(path, cgk, expected) == "refused", f"truncation to {n} accepted"
            os.pwrite(fd, data[n:], n)
        # every byte something refers to is protected: a flip in title data is refused; one in a
        # copy of a superblock or of the catalog is made good from its ditto copy of the same
        # generation and noted by fsck (every title still reads exactly as installed) ...
        in_meta = {p for e in meta for p in range(e.offset, e.end)}
        in_use = [p for e in used for p in range(e.offset, e.end)]
        outcomes = {"refused": 0, "noted": 0}
        picks = rnd.sample(in_use, min(SAMPLES, len(in_use))) + rnd.sample(sorted(in_meta), 1000)
        for pos in sorted(set(picks)):
            os.pwrite(fd, bytes([data[pos] ^ (1 << rnd.randrange(8))]), pos)
            got = hdd_outcome(path, cgk, expected)
            # (superblock padding past the body is covered by the block's checksum too)
            assert got == ("noted" if pos in in_meta else "refused"), f"flip at {pos}: {got}"
            outcomes[got] += 1
            os.pwrite(fd, data[pos : pos + 1], pos)
        assert outcomes["refused"] > 1000 and outcomes["noted"] > 900
        # ... while a flip in free space touches nothing: no title changes, fsck stays clean
        free_bytes = [p for h in free for p in range(h.offset, min(h.end, h.offset + 100_000))]
        for pos in rnd.sample(free_bytes, 300):
            os.pwrite(fd, bytes([data[pos] ^ 1]), pos)
            assert hdd_outcome(path, cgk, expected) == "intact"
            os.pwrite(fd, data[pos : pos + 1], pos)
    finally:
        os.close(fd)


# -- through the CLI: one line, exit 3, never a traceback -----------------------------------------


def _corrupt_variants(data: bytes, tmp: Path, name: str) -> list[Path]:
    out = []
    for i, mutate in enumerate(
        [
            lambda d: d[: len(d) // 2],
            lambda d: d[:100],
            lambda d: d[: min(5000, len(d) - 1)],
            lambda d: d[:1] + bytes([d[1] ^ 4]) + d[2:],
            lambda d: d[:3000] + bytes([d[3000] ^ 1]) + d[3001:] if len(d) > 3001 else d[:-1],
            lambda d: d[:-100] + bytes([d[-100] ^ 1]) + d[-99:],
            lambda d: d + b"junk",
        ]
    ):
        p = tmp / f"{name}-{i}"
        p.write_bytes(mutate(data))
        out.append(p)
    return out


@pytest.mark.parametrize("group", ["disc", "card", "hdd", "console"])
def test_cli_refuses_foreign_and_damaged_files(samples, tmp_path, cli, group):
    source = {
        "disc": samples["disc"].read_bytes(),
        "card": samples["card"],
        "rom": samples["rom"],
        "hdd": samples["hdd"].read_bytes(),
    }["rom" if group == "console" else group]
    png = tmp_path / "picture.png"
    png.write_bytes(PNG)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    folder = tmp_path / "folder"
    folder.mkdir()
    # each group's complete check: `info` reads only what it shows, `verify`/`fsck --deep` all of it
    check = {
        "disc": ["disc", "verify"],
        "card": ["card", "info"],
        "hdd": ["hdd", "fsck", "--deep"],
        "console": ["console", "info"],
    }[group]
    variants = _corrupt_variants(source, tmp_path, group)
    if group in ("hdd", "card"):
        for noted in (variants[3], variants[4]):  # flips in superblock slot 0 copy A: noted, its ditto copy in use
            r = cli(*check, noted)
            assert r.code == 0 and "note: superblock slot 0 copy A is damaged" in r.out, r
        variants = variants[:3] + variants[6:]  # (its last bytes are free space: nothing to damage)
    for victim in [png, empty, folder, tmp_path / "missing", *variants]:
        r = cli(*check, victim)
        if group in ("disc", "hdd") and victim in variants:
            assert cli(group, "info", victim).code in (0, 3)
        assert r.code == 3, (victim, r)
        assert r.err.count("\n") == 1 and str(victim) in r.err and "Traceback" not in r.err, r


def flip(path: Path, offsets: list[int]) -> None:
    """Flip one bit of the byte at each offset of a file."""
    with open(path, "r+b") as f:
        for offset in offsets:
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 1]))


def test_a_rollback_is_never_silent(samples, tmp_path, cli):
    """Both copies of the current catalog (or of the current superblock slot) damaged: the image
    falls back to the previous generation, and says so, naming what to do. One copy damaged:
    nothing rolls back (the other tests)."""
    hdd = tmp_path / "h.hdd"
    hdd.write_bytes(samples["hdd"].read_bytes())
    with HddImage.open(hdd) as img:
        sb = img.volume.sb
    flip(hdd, [e.offset + 20 for e in sb.catalog_copies])
    with HddImage.open(hdd, damaged=True) as img:
        assert img.volume.sb.generation < sb.generation
        assert any("rolled back" in d and "install it again from its disc" in d for d in img.damage), img.damage
    r = cli("hdd", "fsck", hdd)
    assert r.code == 3 and "problem: rolled back" in r.out, r
    # both copies of the current superblock slot: a lost slot is damage too, never a quiet fallback
    hdd.write_bytes(samples["hdd"].read_bytes())
    flip(hdd, [sb.slot + 30, sb.slot + ditto_fmt.DITTO + 30])
    r = cli("hdd", "fsck", hdd)
    assert r.code == 3 and "both copies of superblock slot" in r.out and "may be lost" in r.out, r
    # the card: both copies of the current catalog damaged
    card = tmp_path / "c.card"
    card.write_bytes(samples["card"])
    with CardImage.open(card) as img:
        csb = img.state.sb
    flip(card, [csb.catalog_offset + 20, csb.catalog_offset + card_fmt.CATALOG_DITTO + 20])
    with CardImage.open(card, damaged=True) as img:
        assert any("rolled back" in line for line in img.check()), img.check()


# -- no command but the checks runs on a rolled-back device, and none writes to it -----------------


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    """A registered console with one title installed and a save on its card, a second disc in the
    tray (so install has something to do), and copies of its HDD and card to restore."""
    from .servers import RunningServer

    d = tmp_path_factory.mktemp("rolled")
    srv = RunningServer.start(d / "server")
    saved_home = os.environ.get("VHW_HOME")
    os.environ["VHW_HOME"] = str(d / "home")
    try:
        yield from _rolled_console(d, srv)
    finally:
        srv.stop()
        if saved_home is None:
            os.environ.pop("VHW_HOME", None)
        else:
            os.environ["VHW_HOME"] = saved_home


def _rolled_console(d: Path, srv):
    from .servers import factory, publish

    def cli(*args):  # like the `cli` fixture, usable from a module-scoped fixture
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run([str(a) for a in args])
        return Result(code, out.getvalue(), err.getvalue())

    src = make_title(d / "src", seed=21)
    [disc] = publish(cli, srv, src, d, "ROLL-1")
    [other] = publish(cli, srv, make_title(d / "src2", seed=22), d, "ROLL-2")
    dev = factory(cli, srv, d / "dev")
    con = ["--console", dev["console"]]
    assert cli("console", "register", *con).code == 0
    assert cli("console", "insert-disc", disc, *con).code == 0
    assert cli("console", "install", *con).code == 0
    assert cli("console", "eject-disc", *con).code == 0
    assert cli("console", "insert-disc", other, *con).code == 0
    with CardImage.open(dev["card"], write=True) as img:
        img.write_save("ROLL-1", "slot.sav", b"progress", modified=1, meta=b"")
    saved = {k: dev[k].read_bytes() for k in ("hdd", "card")}
    yield {**dev, "srv": srv, "saved": saved, "dir": d}


def rolled_back(path: Path, kind: str) -> None:
    """Damage both copies of the current catalog: the device falls back one generation."""
    if kind == "hdd":
        with HddImage.open(path) as img:
            flip(path, [e.offset + 20 for e in img.volume.sb.catalog_copies])
    else:
        with CardImage.open(path) as img:
            sb = img.state.sb
        flip(path, [sb.catalog_offset + 20, sb.catalog_offset + card_fmt.CATALOG_DITTO + 20])


HDD_COMMANDS = {
    "hdd ls": lambda dev: ["hdd", "ls", "--console", dev["console"]],
    "hdd rm": lambda dev: ["hdd", "rm", "ROLL-1", "--yes", "--console", dev["console"]],
    "console install": lambda dev: ["console", "install", "--console", dev["console"]],
    "console mount": lambda dev: ["console", "mount", dev["dir"] / "mnt", "--console", dev["console"]],
    "console play": lambda dev: ["console", "play", "--console", dev["console"], "ROLL-1"],
}
CARD_COMMANDS = {
    "console play": lambda dev: ["console", "play", "--console", dev["console"], "ROLL-1"],
    "console install": lambda dev: ["console", "install", "--console", dev["console"]],
    "console mount": lambda dev: ["console", "mount", dev["dir"] / "mnt", "--console", dev["console"]],
    "card saves ls": lambda dev: ["card", "saves", "ls", dev["card"]],
    "card saves rm": lambda dev: ["card", "saves", "rm", dev["card"], "ROLL-1"],
    "card saves export": lambda dev: ["card", "saves", "export", dev["card"], "ROLL-1", "-o", dev["dir"] / "x.sav"],
}


@pytest.mark.parametrize("kind, command", [("hdd", c) for c in HDD_COMMANDS] + [("card", c) for c in CARD_COMMANDS])
def test_a_rolled_back_device_is_refused_in_one_line_and_left_as_it_is(console, cli, kind, command):
    dev = console
    (dev["dir"] / "mnt").mkdir(exist_ok=True)
    path = dev[kind]
    try:
        rolled_back(path, kind)
        before = path.read_bytes()
        r = cli(*(HDD_COMMANDS if kind == "hdd" else CARD_COMMANDS)[command](dev))
        assert r.code == ImageError.exit_code, r
        assert "rolled back to generation" in r.err and "fsck --repair" in r.err, r
        assert path.read_bytes() == before  # nothing written
        assert not (dev["dir"] / "x.sav").exists()
    finally:
        for k in ("hdd", "card"):
            dev[k].write_bytes(dev["saved"][k])


@pytest.mark.parametrize("kind", ["hdd", "card"])
def test_the_checks_show_a_rollback_and_repair_accepts_it(console, cli, kind):
    dev = console
    path = dev[kind]
    try:
        rolled_back(path, kind)
        r = cli(kind, "info", path)
        assert r.code == 3 and "problem: rolled back to generation" not in r.out and "rolled back" in r.out, r
        r = cli(kind, "fsck", path)
        assert r.code == 3 and "problem: rolled back" in r.out, r
        r = cli(kind, "fsck", "--repair", path)
        assert r.code == 0 and "accepted generation" in r.out, r
        assert cli(kind, "fsck", path).code == 0
        listing = ["hdd", "ls", "--console", dev["console"]] if kind == "hdd" else ["card", "saves", "ls", path]
        assert cli(*listing).code == 0  # the device works again, as it now is
    finally:
        for k in ("hdd", "card"):
            dev[k].write_bytes(dev["saved"][k])
