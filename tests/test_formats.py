"""Every format round-trips: build -> parse -> build is byte-identical, for generated contents."""

from __future__ import annotations

import os

import construct as cs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vhw import crypto
from vhw.errors import ImageError
from vhw.formats import card as card_fmt
from vhw.formats import disc as disc_fmt
from vhw.formats import hdd as hdd_fmt
from vhw.formats import rom as rom_fmt
from vhw.formats.common import BLOCK_SIZE
from vhw.ids import ALPHABET, Id, IdKind


def ids(kind: IdKind):
    return st.integers(0, len(ALPHABET) ** kind.length - 1).map(lambda v: Id(kind, v))


text = st.text(max_size=40)
short_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=20).filter(lambda s: len(s.encode()) < 255)
u64 = st.integers(0, 2**64 - 1)
key = st.binary(min_size=32, max_size=32)
blob = st.binary(max_size=80)
title_ids = st.from_regex(r"[A-Z0-9][A-Z0-9._-]{1,31}", fullmatch=True)
path_part = st.from_regex(r"[a-z0-9_][a-z0-9_.]{0,11}", fullmatch=True).filter(lambda p: p not in (".", ".."))
paths = st.lists(path_part, min_size=1, max_size=3).map("/".join)

roms = st.builds(
    rom_fmt.Rom,
    client_id=ids(IdKind.CLIENT),
    manufactured=u64,
    secret=key,
    model=short_text,
    server_url=text,
    trust_anchor=blob,
    token_anchor=blob,
    hardware_ids=st.dictionaries(short_text, st.integers(0, 2**32 - 1), max_size=5),
)


@given(roms)
def test_rom_round_trip(rom):
    data = rom_fmt.encode(rom)
    back = rom_fmt.decode(data)
    assert back == rom
    assert rom_fmt.encode(back) == data
    assert rom.secret.hex() not in repr(rom)  # never in a repr


licenses = st.builds(card_fmt.License, title_id=title_ids, mid=blob, content_key=blob, acquired=u64)
save_names = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}", fullmatch=True)
card_extents = st.builds(card_fmt.Extent, offset=u64, length=u64)
saves = st.builds(
    card_fmt.Save,
    title_id=title_ids,
    name=save_names,
    size=u64,
    modified=u64,
    meta=st.binary(max_size=64),
    stream_id=st.binary(min_size=16, max_size=16),
    sealed_sha256=key,
    tag=key,
    extents=st.lists(card_extents, max_size=3).map(tuple),
)


@given(
    ids(IdKind.CARD),
    key,
    u64,
    st.integers(0, card_fmt.MAX_CAPACITY // 4096).map(lambda n: n * 4096),
    u64,
    blob,
    blob,
    blob,
    blob,
    st.lists(licenses, max_size=5).map(tuple),
    st.lists(saves, max_size=5).map(tuple),
)
def test_card_round_trip(mc_id, mc_key, formatted, capacity, generation, user_id, cgk, sealed, token, lics, saved):
    import hashlib

    card = card_fmt.Card(mc_id, mc_key, formatted, user_id, cgk, sealed, token, lics)
    cat = card_fmt.Catalog(generation, card, saved)
    data = card_fmt.encode_catalog(cat)
    sb = card_fmt.Superblock(mc_id, mc_key, formatted, capacity, generation, len(data), hashlib.sha256(data).digest())
    block = card_fmt.encode_superblock(sb)
    assert len(block) == BLOCK_SIZE
    assert card_fmt.decode_superblock(block, path="x") == sb
    assert card_fmt.encode_superblock(sb) == block
    back = card_fmt.decode_catalog(data, sb, path="x")
    assert back == cat
    assert card_fmt.encode_catalog(back) == data
    assert mc_key.hex() not in repr(card) + repr(sb)  # never in a repr


@st.composite
def manifests(draw):
    files = draw(
        st.lists(
            st.tuples(paths, st.integers(0, 5 * crypto.CHUNK_SIZE), st.booleans()),
            min_size=1,
            max_size=6,
            unique_by=lambda f: f[0],
        )
    )
    # drop files whose path is a folder of another
    names = [f[0] for f in files]
    files = [
        f for f in files if not any(n.startswith(f[0] + "/") or f[0].startswith(n + "/") for n in names if n != f[0])
    ]
    if not files:
        files = [("only", 1, False)]
    disc_files = disc_fmt.layout_files(
        [
            disc_fmt.DiscFile(
                p, size, draw(st.binary(min_size=16, max_size=16)), 0, draw(st.binary(min_size=32, max_size=32)), x
            )
            for p, size, x in files
        ]
    )
    return disc_fmt.Manifest(
        title_id=draw(title_ids),
        name=draw(text),
        kind=draw(st.sampled_from(disc_fmt.KINDS)),
        entry=draw(st.sampled_from([f.path for f in disc_files] + [""])),
        publisher_key=b"",
        files=disc_files,
        mastered=draw(u64),
        title_version=draw(st.integers(0, 2**32 - 1)),
        metadata=draw(st.dictionaries(short_text, st.integers() | text, max_size=3)),
    )


SIGNER = crypto.signing_key()


@settings(max_examples=50, deadline=None)
@given(manifests(), st.sampled_from(list(disc_fmt.Pressing)), ids(IdKind.MEDIA))
def test_disc_round_trip(m, pressing, mid):
    from dataclasses import replace

    m = replace(m, publisher_key=crypto.public_bytes(SIGNER))
    region = disc_fmt.sign_manifest(m, SIGNER.sign)
    back = disc_fmt.decode_manifest(region, path="x")
    assert back == m
    assert disc_fmt.sign_manifest(back, SIGNER.sign)[:-64] == region[:-64]  # Ed25519 is deterministic too
    digest = disc_fmt.title_digest(region)
    disc = disc_fmt.Disc(m, digest, len(region), disc_fmt.data_offset_for(len(region)))
    header = disc_fmt.encode_header(disc)
    assert len(header) == BLOCK_SIZE
    h = disc_fmt.decode_header(header, path="x", file_size=disc.image_size)
    assert (h.image_size, h.manifest_length, h.data_offset) == (disc.image_size, len(region), disc.data_offset)
    assert disc_fmt.encode_header(disc) == header
    the_mid = mid if pressing is disc_fmt.Pressing.MID else None
    secret = crypto.signing_seed() if the_mid else None
    disc_key = crypto.public_bytes(crypto.signing_key_from(secret)) if secret else None
    sig = SIGNER.sign(disc_fmt.mid_signed_message(digest, pressing, the_mid, disc_key))
    block = disc_fmt.encode_mid_area(pressing, the_mid, secret, sig)
    assert len(block) == BLOCK_SIZE
    assert disc_fmt.decode_mid_area(block, path="x", manifest=m, title_digest=digest) == (
        pressing,
        the_mid,
        secret or bytes(32),
        sig,
    )
    assert disc_fmt.encode_mid_area(pressing, the_mid, secret, sig) == block


extents = st.builds(hdd_fmt.Extent, offset=u64, length=u64)
hdd_files = st.builds(
    hdd_fmt.HddFile,
    path=paths,
    size=u64,
    stream_id=st.binary(min_size=16, max_size=16),
    extents=st.lists(extents, max_size=3).map(tuple),
    executable=st.booleans(),
    sealed_digest=st.binary(min_size=32, max_size=32),
)
titles = st.builds(
    hdd_fmt.Title,
    title_id=title_ids,
    name=text,
    kind=short_text,
    entry=text,
    files=st.lists(hdd_files, max_size=3).map(tuple),
    key_salt=st.binary(min_size=32, max_size=32),
    owner=st.binary(min_size=16, max_size=16),
    bound_to=st.binary(min_size=16, max_size=16),
    state=st.sampled_from(list(hdd_fmt.TitleState)),
    installed=u64,
    mid=st.none() | ids(IdKind.MEDIA),
    title_digest=st.binary(min_size=32, max_size=32),
    progress=u64,
    metadata=blob,
)
catalogs = st.builds(
    hdd_fmt.Catalog,
    generation=u64,
    titles=st.lists(titles, max_size=3).map(tuple),
    card_epochs=st.lists(st.tuples(st.binary(min_size=16, max_size=16), st.integers(0, 2**32 - 1)), max_size=3).map(
        tuple
    ),
)


@settings(max_examples=50, deadline=None)
@given(catalogs, ids(IdKind.HDD), key)
def test_hdd_round_trip(cat, hdd_id, secret):
    import hashlib

    data = hdd_fmt.encode_catalog(cat)
    sb = hdd_fmt.Superblock(
        hdd_id,
        secret,
        10**9,
        5,
        cat.generation,
        16384,
        len(data),
        hashlib.sha256(data).digest(),
        catalog_ditto=16384 + len(data) + 4096,
    )
    block = hdd_fmt.encode_superblock(sb)
    assert len(block) == BLOCK_SIZE
    assert hdd_fmt.decode_superblock(block, path="x") == sb
    assert hdd_fmt.encode_superblock(sb) == block
    assert secret.hex() not in repr(sb)
    back = hdd_fmt.decode_catalog(data, sb, path="x")
    assert back == cat
    assert hdd_fmt.encode_catalog(back) == data


def test_fixed_sizes():
    assert disc_fmt.Header.sizeof() == 8 + 2 + 8 + 4 + 8 + 8
    assert hdd_fmt.SuperblockBody.sizeof() == 8 + 2 + IdKind.HDD.nbytes + 32 + 8 * 5 + 32 + 8 * 3 + 1
    assert hdd_fmt.ExtentRecord.sizeof() == 16


def test_catalog_generation_must_match_superblock():
    import hashlib

    data = hdd_fmt.encode_catalog(hdd_fmt.Catalog(generation=3))
    sb = hdd_fmt.Superblock(
        Id.random(IdKind.HDD),
        bytes(32),
        10**9,
        0,
        4,
        16384,
        len(data),
        hashlib.sha256(data).digest(),
        catalog_ditto=1 << 20,
    )
    with pytest.raises(ImageError, match="generation"):
        hdd_fmt.decode_catalog(data, sb, path="x")


def test_signed_but_inconsistent_manifest_is_refused():
    from dataclasses import replace

    m = disc_fmt.Manifest(
        "T1",
        "n",
        "game",
        "a",
        crypto.public_bytes(SIGNER),
        disc_fmt.layout_files([disc_fmt.DiscFile("a", 5, os.urandom(16))]),
    )
    for bad in (
        replace(m, entry="nope"),
        replace(m, kind="toaster"),
        replace(m, files=(replace(m.files[0], path="../etc/passwd"),)),
        replace(m, files=(replace(m.files[0], offset=7),)),
    ):
        with pytest.raises(ImageError, match="invalid disc manifest"):
            disc_fmt.decode_manifest(disc_fmt.sign_manifest(bad, SIGNER.sign), path="x")


def test_absent_id_is_not_read_from_what_follows():
    """An absent MID followed by bytes that start like a present one (found by hypothesis)."""
    for pressing in (disc_fmt.Pressing.MASTER, disc_fmt.Pressing.NO_MID):
        signature = b"\x01" + os.urandom(63)
        body = disc_fmt.MidArea.build(
            {"pressing": int(pressing), "mid": None, "secret": b"\x01" * 32, "signature": signature}
        )
        assert disc_fmt.MidArea.parse(body).mid is None
    for bad in (b"\x02", b"\xff"):
        with pytest.raises(cs.ConstructError):
            disc_fmt.MidArea.parse(disc_fmt.MID_MAGIC + b"\x01" + bad + bytes(80))


def test_devices_of_the_old_format_are_refused_in_one_line(tmp_path):
    """Version 1 ROMs, cards and HDD images (before device secrets): one line that says to make
    the device again, through the library and through `info`."""
    import contextlib
    import io

    from vhw.cli import run
    from vhw.devices.card import read_state
    from vhw.formats.common import seal_block, seal_envelope

    old_rom = seal_envelope(rom_fmt.MAGIC, 1, b"\0" * 60)
    old_card = seal_envelope(card_fmt.MAGIC, 2, b"\0" * 60)  # version 2: before the save area
    with pytest.raises(ImageError, match="format version 1 is no longer supported.*again"):
        rom_fmt.decode(old_rom)
    with pytest.raises(ImageError, match="format version 2 is no longer supported.*again"):
        read_state(lambda n, off: old_card[off : off + n], "x", len(old_card))
    sb = hdd_fmt.SuperblockHead.build({"version": 1}) + bytes(200)
    with pytest.raises(ImageError, match="HDD image format version 1 is no longer supported.*again"):
        hdd_fmt.decode_superblock(seal_block(sb), path="x")
    (tmp_path / "old.rom").write_bytes(old_rom)
    (tmp_path / "old.card").write_bytes(old_card)
    image = bytearray(2 * 1024 * 1024)
    image[0:4096] = image[4096:8192] = seal_block(sb)
    (tmp_path / "old.hdd").write_bytes(bytes(image))
    for command, path in (("console", "old.rom"), ("card", "old.card"), ("hdd", "old.hdd")):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = run([command, "info", str(tmp_path / path)])
        assert code == 3 and err.getvalue().count("\n") == 1 and "again" in err.getvalue(), err.getvalue()
