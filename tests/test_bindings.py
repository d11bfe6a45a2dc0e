"""The key ladder without I/O: device seals, issued keys, title bindings (vhw.bindings, vhw.crypto)."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vhw import bindings, crypto
from vhw.bindings import DeviceSecrets, TitleBinding
from vhw.ids import Id, IdKind


def devices() -> DeviceSecrets:
    return DeviceSecrets(
        Id.random(IdKind.CLIENT), Id.random(IdKind.HDD), crypto.device_secret(), crypto.device_secret()
    )


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=40), st.binary(max_size=40))
def test_a_seal_opens_only_with_its_secret_and_info(plaintext, info, other_info):
    secret = crypto.device_secret()
    blob = crypto.seal_to(crypto.device_public(secret), plaintext, info)
    assert crypto.open_sealed(secret, blob, info) == plaintext
    assert len(blob) == crypto.sealed_size(len(plaintext))
    with pytest.raises(crypto.Invalid):
        crypto.open_sealed(crypto.device_secret(), blob, info)
    if other_info != info:
        with pytest.raises(crypto.Invalid):
            crypto.open_sealed(secret, blob, other_info)
    for i in (0, len(blob) // 2, len(blob) - 1):
        flipped = bytearray(blob)
        flipped[i] ^= 1
        with pytest.raises(crypto.Invalid):
            crypto.open_sealed(secret, bytes(flipped), info)
    with pytest.raises(crypto.Invalid):
        crypto.open_sealed(secret, blob[:-1], info)


def test_two_seals_of_one_value_differ():
    secret = crypto.device_secret()
    public = crypto.device_public(secret)
    assert crypto.seal_to(public, b"k" * 32, b"i") != crypto.seal_to(public, b"k" * 32, b"i")


def test_a_key_that_is_no_device_key_is_refused():
    with pytest.raises(crypto.Invalid):
        crypto.seal_to(bytes(32), b"x", b"i")  # a low-order point
    with pytest.raises(crypto.Invalid):
        crypto.seal_to(b"short", b"x", b"i")


def test_an_issued_key_opens_only_on_its_card_console_and_hdd():
    d = devices()
    mc_id, mc_key, mid, title = Id.random(IdKind.CARD), crypto.random_key(), Id.random(IdKind.MEDIA), "T-1"
    key = crypto.random_key()
    blob = bindings.issue_content_key(d.public(), mc_key, mc_id, mid, title, key)
    assert bindings.open_content_key(d, mc_key, mc_id, mid, title, blob) == key
    other = devices()
    wrong = [
        (replace(d, console=other.console), mc_key, mc_id, mid, title),  # another console's ROM
        (replace(d, hdd=other.hdd), mc_key, mc_id, mid, title),  # another HDD
        (replace(d, client_id=other.client_id), mc_key, mc_id, mid, title),  # the right ROM, relabelled
        (replace(d, hdd_id=other.hdd_id), mc_key, mc_id, mid, title),
        (d, crypto.random_key(), mc_id, mid, title),  # another card's MC-Key
        (d, mc_key, Id.random(IdKind.CARD), mid, title),
        (d, mc_key, mc_id, Id.random(IdKind.MEDIA), title),  # another MID's key
        (d, mc_key, mc_id, mid, "T-2"),
    ]
    for args in wrong:
        with pytest.raises(crypto.Invalid):
            bindings.open_content_key(*args, blob)
    # neither device layer alone, nor the MC-Key alone, opens it
    ad = bindings.content_key(mc_id, mid, title)
    with pytest.raises(crypto.Invalid):
        crypto.unwrap(mc_key, blob, ad)
    with pytest.raises(crypto.Invalid):
        crypto.open_sealed(d.hdd, blob, b"")


def test_an_issued_content_gen_key_is_bound_to_its_user():
    d = devices()
    mc_id, mc_key, user = Id.random(IdKind.CARD), crypto.random_key(), Id.random(IdKind.USER)
    key = crypto.random_key()
    blob = bindings.issue_content_gen_key(d.public(), mc_key, mc_id, user, key)
    assert bindings.open_content_gen_key(d, mc_key, mc_id, user, blob) == key
    with pytest.raises(crypto.Invalid):
        bindings.open_content_gen_key(d, mc_key, mc_id, Id.random(IdKind.USER), blob)
    with pytest.raises(crypto.Invalid):  # a Content-Gen-Key is not a Content-Key
        bindings.open_on_devices(d, bindings.CONTENT_KEY, blob, bindings.content_gen_key(mc_id, user))


def test_a_title_binding_needs_every_one_of_its_inputs():
    d, cgk, user = devices(), crypto.random_key(), Id.random(IdKind.USER)
    base = TitleBinding.derive(cgk, user, d)
    other = devices()
    variants = [
        TitleBinding.derive(crypto.random_key(), user, d),  # another card's key
        TitleBinding.derive(cgk, Id.random(IdKind.USER), d),
        TitleBinding.derive(cgk, user, replace(d, console=other.console)),  # another console
        TitleBinding.derive(cgk, user, replace(d, hdd=other.hdd)),  # another HDD
        TitleBinding.derive(cgk, user, replace(d, client_id=other.client_id)),
        TitleBinding.derive(cgk, user, replace(d, hdd_id=other.hdd_id)),
    ]
    salt = os.urandom(32)
    keys = {base.title_key("T-1", salt)} | {v.title_key("T-1", salt) for v in variants}
    owners = {base.owner} | {v.owner for v in variants}
    assert len(keys) == len(owners) == len(variants) + 1
    assert base.title_key("T-1", salt) != base.title_key("T-2", salt) != base.title_key("T-1", os.urandom(32))
    assert base.owner != base.key[: bindings.OWNER_SIZE]  # the fingerprint reveals nothing of the key
    assert base == TitleBinding.derive(cgk, user, d)  # and the same inputs give the same binding
    assert base.key.hex() not in repr(base) and d.console.hex() not in repr(d)


def test_fingerprints_are_short_and_stable():
    public = crypto.device_public(crypto.device_secret())
    assert crypto.fingerprint(public) == crypto.fingerprint(public)
    assert len(crypto.fingerprint(public).split(":")) == 8
