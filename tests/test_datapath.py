"""The compiled data path (vhw.datapath) on its own: the install's re-sealing against the Python
scheme it must match byte for byte, and the FUSE file system over hand-made images: every read
right, and every tampered, moved, reordered or missing byte an EIO for that read, never plaintext
and never a crash. (tests/test_mount.py drives the same file system through the console.)"""

from __future__ import annotations

import errno
import os
import random
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vhw import crypto, datapath
from vhw.datapath import MountFile, MountNode, TitleMount
from vhw.formats.common import Extent

from .test_mount import in_mount_table, wait_until

KEY = bytes(range(32))


def disc_chunks(key: bytes, stream: bytes, plain: bytes) -> tuple[crypto.ChunkCipher, bytes]:
    c = crypto.ChunkCipher(key, stream, len(plain))
    size = crypto.CHUNK_SIZE
    return c, b"".join(c.seal(i, plain[i * size : (i + 1) * size]) for i in range(c.layout.count))


@settings(max_examples=40, deadline=None)
@given(
    size=st.sampled_from([0, 1, 100, 4095, 4096, 4097, 65535, 65536, 65537, 3 * 65536 + 5000, 1 << 20, (1 << 20) + 7]),
    block=st.sampled_from(crypto.HDD_BLOCK_SIZES),
    seed=st.integers(0, 2**16),
)
def test_reseal_matches_the_python_scheme(size, block, seed):
    plain = random.Random(seed).randbytes(size)
    disc, sealed = disc_chunks(b"d" * 32, b"s" * 16, plain)
    hdd = crypto.BlockCipher(KEY, b"h" * 16, size, block_size=block)
    data, tags = bytearray(size + 100), bytearray(hdd.layout.count * 16 + 100)
    n = datapath.reseal(
        disc.secret,
        hdd.secret,
        size=size,
        block_size=block,
        first=0,
        count=disc.layout.count,
        sealed=sealed,
        data=data,
        tags=tags,
    )
    assert n == size
    for i in range(hdd.layout.count):
        want = hdd.seal(i, plain[i * block : (i + 1) * block])
        got = bytes(data[i * block : i * block + hdd.layout.plain_length(i)]) + bytes(tags[i * 16 : (i + 1) * 16])
        assert got == want, f"block {i}"


def test_reseal_of_a_piece_from_the_middle_and_of_a_damaged_chunk():
    plain = random.Random(1).randbytes(5 * 65536 + 300)
    disc, sealed = disc_chunks(b"d" * 32, b"s" * 16, plain)
    hdd = crypto.BlockCipher(KEY, b"h" * 16, len(plain))
    at = 3 * (65536 + 16)
    data, tags = bytearray(3 * 65536), bytearray(3 * 16 * 16)
    n = datapath.reseal(
        disc.secret,
        hdd.secret,
        size=len(plain),
        block_size=4096,
        first=3,
        count=3,
        sealed=sealed[at:],
        data=data,
        tags=tags,
    )
    assert n == 2 * 65536 + 300
    assert bytes(data[:4096]) + bytes(tags[:16]) == hdd.seal(48, plain[48 * 4096 : 49 * 4096])  # chunk 3 = block 48
    damaged = bytearray(sealed)
    damaged[at + 65536 + 16 + 5] ^= 1  # a byte of chunk 4
    with pytest.raises(datapath.DiscChunkInvalid) as bad:
        datapath.reseal(
            disc.secret,
            hdd.secret,
            size=len(plain),
            block_size=4096,
            first=3,
            count=3,
            sealed=damaged[at:],
            data=data,
            tags=tags,
        )
    assert bad.value.index == 4
    for wrong in (
        dict(count=4),  # past the file's last chunk (5)
        dict(block_size=2048),  # not a block size
        dict(sealed=sealed[at : at + 100]),  # less than the chunks
    ):
        args = dict(size=len(plain), block_size=4096, first=3, count=3, sealed=sealed[at:], data=data, tags=tags)
        args.update(wrong)
        with pytest.raises(ValueError):
            datapath.reseal(disc.secret, hdd.secret, **args)


# -- the file system over hand-made images ------------------------------------------------------


class Image:
    """A file holding sealed files where a test says, as an HDD keeps them: each file's stream (its
    blocks' ciphertext, then their tags) cut into extents with gaps between them."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self.end = 4096
        self.files: list[tuple[bytes, MountFile]] = []

    def add(self, plain: bytes, *, block: int = 4096, pieces: int = 1, name: str = "f") -> MountFile:
        cipher = crypto.BlockCipher(KEY, os.urandom(16), len(plain), block_size=block)
        layout = cipher.layout
        stream = bytearray(layout.sealed_size)
        for i in range(layout.count):
            ct, tag = cipher.seal_block(i, plain[i * block : (i + 1) * block])
            stream[layout.sealed_offset(i) : layout.sealed_offset(i) + len(ct)] = ct
            stream[layout.tag_offset(i) : layout.tag_offset(i) + 16] = tag
        # cut into ``pieces`` extents, each but the last whole blocks, a page of gap between them
        cuts = sorted({0, len(stream), *(len(stream) // pieces * k // block * block for k in range(1, pieces))})
        extents = []
        for lo, hi in zip(cuts, cuts[1:], strict=False):
            if hi > lo:
                os.pwrite(self.fd, stream[lo:hi], self.end)
                extents.append(Extent(self.end, hi - lo))
                self.end = -(-(self.end + hi - lo) // 4096) * 4096 + 4096
        f = MountFile(len(plain), block, tuple(extents), cipher.secret, f"TEST-1, file {name}")
        self.files.append((plain, f))
        return f

    def nodes(self) -> list[MountNode]:
        top = [MountNode(1, b""), MountNode(1, b"TEST-1")]
        return top + [MountNode(2, f"{i}.bin".encode(), i) for i in range(len(self.files))]


@contextmanager
def serving(image: Image, tmp_path: Path, *, files=None, nominal: int | None = None):
    where = tmp_path / "mnt"
    where.mkdir(exist_ok=True)
    fs = TitleMount(
        image.fd,
        nominal or max(image.end, os.fstat(image.fd).st_size),
        image.nodes(),
        files or [f for _, f in image.files],
    )
    fs.start(str(where), "ro,default_permissions,fsname=vhwtest")
    try:
        yield where / "TEST-1"
    finally:
        fs.stop()
        wait_until(lambda: not in_mount_table(where))


def test_every_byte_reads_back_through_every_block_size_and_extent_cut(tmp_path):
    image = Image(tmp_path / "image")
    rnd = random.Random(3)
    sizes = [0, 1, 4095, 4096, 4097, 70_000, 1 << 20, 3 * 65536 + 123]
    for i, size in enumerate(sizes):
        image.add(rnd.randbytes(size), block=crypto.HDD_BLOCK_SIZES[i % 3], pieces=1 + i % 3)
    with serving(image, tmp_path) as title:
        assert sorted(os.listdir(title)) == sorted(f"{i}.bin" for i in range(len(sizes)))
        for i, (plain, _) in enumerate(image.files):
            path = title / f"{i}.bin"
            assert os.stat(path).st_size == len(plain)
            assert path.read_bytes() == plain
            fd = os.open(path, os.O_RDONLY)
            try:
                for _ in range(50):  # ranges that start and end anywhere, cache or not
                    off = rnd.randrange(len(plain) + 10)
                    n = rnd.randrange(1, 200_000)
                    assert os.pread(fd, n, off) == plain[off : off + n]
            finally:
                os.close(fd)


def eio(path: Path, off: int, n: int = 4096) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.pread(fd, n, off)
    except OSError as exc:
        assert exc.errno == errno.EIO
        return True
    finally:
        os.close(fd)
    return False


def test_tampered_moved_and_missing_bytes_are_eio_for_that_read_only(tmp_path):
    """Each attack on a copy of the image, with the same reads: a byte of a block's ciphertext, a
    byte of its tag, two blocks (ciphertext and tags) swapped, a block of another file put in its
    place, the image cut short in the data and in the tags. The control: the untouched image
    reads every block with the same code."""
    rnd = random.Random(5)
    plain = rnd.randbytes(40 * 4096 + 100)
    other = rnd.randbytes(40 * 4096 + 100)

    def build(name: str) -> tuple[Image, MountFile, MountFile]:
        image = Image(tmp_path / name)
        return image, image.add(plain, pieces=2), image.add(other)

    def at(f: MountFile, logical: int) -> int:
        for e in f.extents:
            if logical < e.length:
                return e.offset + logical
            logical -= e.length
        raise AssertionError

    def attack(name, change):
        image, f, g = build(name)
        change(image, f, g)
        with serving(image, tmp_path) as title:
            bad = [b for b in range(41) if eio(title / "0.bin", b * 4096)]
            # what is not attacked still reads, in the clear and right
            good = [b for b in range(41) if b not in bad]
            with open(title / "0.bin", "rb") as fh:
                for b in good:
                    assert os.pread(fh.fileno(), 4096, b * 4096) == plain[b * 4096 : (b + 1) * 4096]
            assert (title / "1.bin").read_bytes() == other
        return bad

    layout = crypto.BlockLayout(len(plain))

    def flip(pos_of):
        def change(image, f, g):
            pos = pos_of(f, g)
            os.pwrite(image.fd, bytes([os.pread(image.fd, 1, pos)[0] ^ 0x10]), pos)

        return change

    def swap(image, f, g):
        a, b = at(f, layout.sealed_offset(7)), at(f, layout.sealed_offset(9))
        ta, tb = at(f, layout.tag_offset(7)), at(f, layout.tag_offset(9))
        da, db = os.pread(image.fd, 4096, a), os.pread(image.fd, 4096, b)
        sa, sb = os.pread(image.fd, 16, ta), os.pread(image.fd, 16, tb)
        os.pwrite(image.fd, db, a)
        os.pwrite(image.fd, da, b)
        os.pwrite(image.fd, sb, ta)
        os.pwrite(image.fd, sa, tb)

    def transplant(image, f, g):  # block 12 of the other file, with its tag, in place of block 12
        os.pwrite(image.fd, os.pread(image.fd, 4096, at(g, layout.sealed_offset(12))), at(f, layout.sealed_offset(12)))
        os.pwrite(image.fd, os.pread(image.fd, 16, at(g, layout.tag_offset(12))), at(f, layout.tag_offset(12)))

    assert attack("control", lambda image, f, g: None) == []
    assert attack("data", flip(lambda f, g: at(f, layout.sealed_offset(20) + 77))) == [20]
    assert attack("tag", flip(lambda f, g: at(f, layout.tag_offset(33) + 3))) == [33]
    assert attack("swapped", swap) == [7, 9]
    assert attack("transplanted", transplant) == [12]

    # the image cut short in the blocks' ciphertext (their tags, which follow, go with it), or in
    # the tags: the reads that reach the cut get EIO, never bytes that did not verify
    for name, cut in (("short", layout.sealed_offset(30) + 10), ("short-tags", layout.tag_offset(25) + 5)):
        image, f, _ = build(name)
        os.ftruncate(image.fd, at(f, cut))
        with serving(image, tmp_path, files=[f, f], nominal=image.end) as title:
            assert all(eio(title / "0.bin", b * 4096) for b in range(41)), name


def test_concurrent_readers_each_read_their_own_bytes(tmp_path):
    image = Image(tmp_path / "image")
    rnd = random.Random(9)
    for _ in range(4):
        image.add(rnd.randbytes(3 << 20), pieces=3)
    errors: list[str] = []
    with serving(image, tmp_path) as title:

        def reader(i: int) -> None:
            plain = image.files[i % 4][0]
            r = random.Random(i)
            with open(title / f"{i % 4}.bin", "rb") as fh:
                for _ in range(300):
                    off = r.randrange(len(plain))
                    if os.pread(fh.fileno(), 4096, off) != plain[off : off + 4096]:
                        errors.append(f"reader {i} at {off}")

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


def test_revoked_keys_refuse_every_open_and_read(tmp_path):
    image = Image(tmp_path / "image")
    plain = random.Random(2).randbytes(100_000)
    image.add(plain)
    where = tmp_path / "mnt"
    where.mkdir()
    fs = TitleMount(image.fd, image.end, image.nodes(), [f for _, f in image.files])
    fs.start(str(where), "ro,fsname=vhwtest")
    try:
        fd = os.open(where / "TEST-1" / "0.bin", os.O_RDONLY)
        assert os.pread(fd, 4096, 0) == plain[:4096]
        fs.revoke()
        fs.invalidate()
        with pytest.raises(PermissionError):
            os.pread(fd, 4096, 50_000)  # never read before: no cached page
        with pytest.raises(PermissionError):
            os.pread(fd, 4096, 0)  # read before: its cached page is gone too
        os.close(fd)
        with pytest.raises(PermissionError):
            open(where / "TEST-1" / "0.bin", "rb")
        assert not fs.wait(0.05)  # still mounted until stopped
    finally:
        fs.stop()
    wait_until(lambda: not in_mount_table(where))


def test_an_unmount_from_outside_ends_the_threads(tmp_path):
    image = Image(tmp_path / "image")
    image.add(b"x" * 10)
    where = tmp_path / "mnt"
    where.mkdir()
    fs = TitleMount(image.fd, image.end, image.nodes(), [f for _, f in image.files])
    fs.start(str(where), "ro,fsname=vhwtest")
    try:
        assert (where / "TEST-1" / "0.bin").read_bytes() == b"x" * 10
        os.system(f"fusermount3 -u {where}")
        assert fs.wait(5)
    finally:
        fs.stop()


@pytest.mark.parametrize(
    "nodes, files, why",
    [
        ([MountNode(2, b"")], None, "no root folder"),
        ([MountNode(1, b""), MountNode(3, b"a"), MountNode(1, b"b")], None, "parent"),
        ([MountNode(1, b""), MountNode(1, b"a/b")], None, "name"),
        ([MountNode(1, b""), MountNode(1, b"..")], None, "name"),
        ([MountNode(1, b""), MountNode(1, b"a"), MountNode(1, b"a")], None, "same name"),
        ([MountNode(1, b""), MountNode(1, b"a", 5)], None, "names no file"),
        (None, [MountFile(100_000, 4096, (Extent(4096, 1000),), crypto.StreamSecret(KEY, b""), "x")], "shorter"),
        (None, [MountFile(10, 4096, (Extent(1 << 40, 4096),), crypto.StreamSecret(KEY, b""), "x")], "outside"),
        (None, [MountFile(10, 2048, (Extent(4096, 4096),), crypto.StreamSecret(KEY, b""), "x")], "block size"),
        (None, [MountFile(10, 4096, (Extent(4096, 4096),), crypto.StreamSecret(KEY, b"a" * 300), "x")], "associated"),
    ],
)
def test_a_tree_that_does_not_hold_together_is_refused(tmp_path, nodes, files, why):
    fd = os.open(tmp_path / "image", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, 1 << 20)
    try:
        with pytest.raises(ValueError, match=why):
            TitleMount(fd, 1 << 20, nodes or [MountNode(1, b""), MountNode(1, b"f", 0)], files or [])
    finally:
        os.close(fd)


def test_a_key_of_the_wrong_size_is_refused(tmp_path):
    with pytest.raises(ValueError, match="32 bytes"):
        TitleMount(
            0, 1 << 20, [MountNode(1, b"")], [MountFile(1, 4096, (Extent(0, 17),), crypto.StreamSecret(b"k", b""), "x")]
        )
