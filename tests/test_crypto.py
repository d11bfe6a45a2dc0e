"""Crypto properties: random-range reads, every kind of tampering refused, wrapped keys bound to AD."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vhw import crypto
from vhw.crypto import CHUNK_SIZE, ChunkCipher, Invalid

KEY = bytes(range(32))
SID = b"s" * 16


def seal_all(key: bytes, sid: bytes, data: bytes) -> list[bytes]:
    c = ChunkCipher(key, sid, len(data))
    return [c.seal(i, data[i * CHUNK_SIZE : (i + 1) * CHUNK_SIZE]) for i in range(c.layout.count)]


def open_all(key: bytes, sid: bytes, size: int, chunks: list[bytes]) -> bytes:
    c = ChunkCipher(key, sid, size)
    if len(chunks) != c.layout.count:
        raise Invalid()
    return b"".join(c.open(i, ch) for i, ch in enumerate(chunks))


sizes = st.sampled_from([0, 1, 100, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 17])


@settings(max_examples=60, deadline=None)
@given(size=sizes, data=st.data())
def test_random_range_reads_equal_plaintext(size, data):
    plain = os.urandom(size)
    chunks = seal_all(KEY, SID, plain)
    cipher = ChunkCipher(KEY, SID, size)
    fetched = []

    def fetch(i):
        fetched.append(i)
        return chunks[i]

    offset = data.draw(st.integers(0, size + 10))
    length = data.draw(st.integers(0, size + 10))
    assert cipher.read(offset, length, fetch) == plain[offset : offset + length]
    # only the chunks the range touches were decrypted
    assert fetched == list(cipher.layout.chunks_for(offset, length))


def test_sealed_layout_matches_chunks():
    for size in (0, 1, CHUNK_SIZE, CHUNK_SIZE * 2 + 5):
        chunks = seal_all(KEY, SID, os.urandom(size))
        layout = crypto.ChunkLayout(size)
        assert sum(map(len, chunks)) == layout.sealed_size
        assert [len(c) for c in chunks] == [layout.sealed_length(i) for i in range(layout.count)]


PLAIN = os.urandom(3 * CHUNK_SIZE + 1000)
CHUNKS = seal_all(KEY, SID, PLAIN)


def test_round_trip():
    assert open_all(KEY, SID, len(PLAIN), CHUNKS) == PLAIN


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda c: [c[1], c[0], *c[2:]], id="reordered"),
        pytest.param(lambda c: c[:-1], id="truncated-by-a-chunk"),
        pytest.param(lambda c: [*c, c[-1]], id="extended-by-a-chunk"),
        pytest.param(lambda c: [*c[:-1], c[-1][:-1]], id="last-chunk-shortened"),
        pytest.param(lambda c: [c[0][:5] + bytes([c[0][5] ^ 1]) + c[0][6:], *c[1:]], id="bit-flip"),
        pytest.param(lambda c: [c[0], c[0], *c[2:]], id="chunk-duplicated"),
        pytest.param(lambda c: [*seal_all(KEY, b"t" * 16, PLAIN)[:1], *c[1:]], id="swapped-from-other-stream"),
        pytest.param(lambda c: [*seal_all(os.urandom(32), SID, PLAIN)[:1], *c[1:]], id="sealed-under-other-key"),
    ],
)
def test_tampering_is_refused(tamper):
    with pytest.raises(Invalid):
        open_all(KEY, SID, len(PLAIN), tamper(list(CHUNKS)))


def test_size_is_authenticated():
    # claiming another size (even one with the same chunk count) fails every chunk
    for size in (len(PLAIN) - 1, len(PLAIN) + 1):
        cipher = ChunkCipher(KEY, SID, size)
        with pytest.raises(Invalid):
            cipher.open(0, CHUNKS[0])
    empty = seal_all(KEY, SID, b"")
    assert len(empty) == 1  # an empty stream still has its one authenticated chunk
    with pytest.raises(Invalid):
        ChunkCipher(KEY, SID, 0).open(0, b"")


def test_out_of_range_index_is_refused():
    cipher = ChunkCipher(KEY, SID, len(PLAIN))
    with pytest.raises(Invalid):
        cipher.open(99, CHUNKS[0])


@given(
    secret=st.binary(min_size=0, max_size=64),
    ad=st.binary(max_size=40),
    other=st.binary(max_size=40),
)
def test_wrapped_key_never_unwraps_under_other_ad(secret, ad, other):
    kek = crypto.random_key()
    blob = crypto.wrap(kek, secret, ad)
    assert crypto.unwrap(kek, blob, ad) == secret
    if other != ad:
        with pytest.raises(Invalid):
            crypto.unwrap(kek, blob, other)
    with pytest.raises(Invalid):
        crypto.unwrap(crypto.random_key(), blob, ad)


def test_context_is_unambiguous():
    assert crypto.context("p", "ab", "c") != crypto.context("p", "a", "bc")
    assert crypto.context("content-key", "MID1") != crypto.context("user-id", "MID1")


def test_content_key_for_one_mid_does_not_open_as_another():
    kek, ck = crypto.random_key(), crypto.random_key()
    blob = crypto.wrap(kek, ck, crypto.context("content-key", "MC-1", "MD-A", "T1"))
    for ad in (("MC-1", "MD-B", "T1"), ("MC-2", "MD-A", "T1"), ("MC-1", "MD-A", "T2")):
        with pytest.raises(Invalid):
            crypto.unwrap(kek, blob, crypto.context("content-key", *ad))


def test_signatures():
    key = crypto.signing_key()
    sig = key.sign(b"msg")
    crypto.verify(crypto.public_bytes(key), sig, b"msg")
    with pytest.raises(Invalid):
        crypto.verify(crypto.public_bytes(key), sig, b"msh")
    with pytest.raises(Invalid):
        crypto.verify(b"short", sig, b"msg")
