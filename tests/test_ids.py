"""IDs: labels round-trip, and every single typo or adjacent swap is refused by the check character."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vhw.errors import IdError
from vhw.ids import ALPHABET, Id, IdKind

kinds = st.sampled_from(list(IdKind))


@given(kinds, st.data())
def test_label_round_trip(kind, data):
    value = data.draw(st.integers(0, len(ALPHABET) ** kind.length - 1))
    ident = Id(kind, value)
    assert Id.parse(str(ident), kind) == ident
    assert Id.parse(str(ident).lower().replace("-", " "), kind) == ident  # as people type it
    assert Id.from_bytes(kind, ident.to_bytes()) == ident
    assert len(ident.to_bytes()) == kind.nbytes


def _chars(label: str) -> list[int]:
    """Positions in a label a person could mistype: all but the prefix and the dashes."""
    return [i for i, ch in enumerate(label) if i > 2 and ch != "-"]


@pytest.mark.parametrize("kind", list(IdKind))
def test_every_single_substitution_is_refused(kind):
    rnd = random.Random(kind.prefix)
    for _ in range(20):
        label = str(Id.random(kind, randbelow=rnd.randrange))
        for i in _chars(label):
            for ch in ALPHABET:
                if ch == label[i]:
                    continue
                typo = label[:i] + ch + label[i + 1 :]
                with pytest.raises(IdError, match="check character|not a valid"):
                    Id.parse(typo, kind)


@pytest.mark.parametrize("kind", list(IdKind))
def test_every_adjacent_swap_is_refused(kind):
    rnd = random.Random(kind.prefix + "swap")
    for _ in range(200):
        label = str(Id.random(kind, randbelow=rnd.randrange))
        plain = label.replace("-", "")[2:]  # body + check, as if typed without dashes
        for i in range(len(plain) - 1):
            if plain[i] == plain[i + 1]:
                continue
            swapped = plain[:i] + plain[i + 1] + plain[i] + plain[i + 2 :]
            with pytest.raises(IdError):
                Id.parse(kind.prefix + swapped, kind)


def test_kind_is_checked_by_name():
    hdd = Id.random(IdKind.HDD)
    with pytest.raises(IdError, match="is a HDD-ID, not a Client ID"):
        Id.parse(str(hdd), IdKind.CLIENT)
    with pytest.raises(IdError, match="must start with CL-"):
        Id.parse("XX-1234", IdKind.CLIENT)


def test_lookalikes_read_as_digits():
    ident = Id(IdKind.CARD, 0)
    assert str(ident).startswith("MC-0000-0000-0000")
    assert Id.parse(str(ident).replace("0", "O"), IdKind.CARD) == ident


def test_wrong_length_and_characters():
    with pytest.raises(IdError, match="has 3 characters"):
        Id.parse("CL-1234", IdKind.CLIENT)
    with pytest.raises(IdError, match="no Z|no U"):
        Id.parse("CL-ZZZZ-ZZZZ-ZZZZ-Z", IdKind.CLIENT)
    with pytest.raises(IdError):
        Id.from_bytes(IdKind.CLIENT, b"\xff" * IdKind.CLIENT.nbytes)
