"""IDs printed on labels: Client ID, HDD-ID, MC-ID, MID and User ID.

A label looks like ``CL-4K7M-2QXA-9PRT-W``: a two-letter kind, the random body in groups of four,
and one check character. People copy these by hand (the patent lets a user type the IDs printed on
the casings, and a User ID written on a memo pad is how a lost card is reissued), so:

* The alphabet is Crockford's base 32 without ``Z`` (too close to ``2``): 31 symbols, none of
  which look alike. On input, case is ignored, ``O`` reads as ``0``, ``I`` and ``L`` as ``1``, and
  dashes and spaces are dropped.
* The check character is ``(k + sum((i + 1) * v[i])) mod 31`` over the body values ``v``, with a
  per-kind offset ``k``. Because 31 is prime and the weights 1..n are distinct and below 31, every
  single substituted character changes the sum by ``(i + 1) * d != 0 (mod 31)``, and every swap of
  two adjacent characters by ``a - b != 0``: both are always caught (tests prove it exhaustively on
  sample IDs). Swapping the last body character with the check character is caught too.
* The kind is part of the label and of the check, so an HDD-ID typed where a Client ID is asked for
  is refused by name.

In device files an ID is stored as the body's integer value in a fixed number of bytes.
"""

from __future__ import annotations

import enum
import functools
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from .errors import IdError

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXY"
BASE = len(ALPHABET)  # 31, a prime: see the module docstring
_VALUE = {ch: i for i, ch in enumerate(ALPHABET)}
_ALIASES = {"O": "0", "I": "1", "L": "1"}
GROUP = 4  # characters per dash-separated group on a label


class IdKind(enum.Enum):
    """What an ID names: its label prefix, its length, and how people call it."""

    # name = (prefix, body length, check offset, human name)
    CLIENT = ("CL", 12, 3, "Client ID")
    HDD = ("HD", 12, 7, "HDD-ID")
    CARD = ("MC", 12, 11, "MC-ID")
    MEDIA = ("MD", 16, 13, "MID")  # 16 symbols: 79 bits, one per disc ever pressed
    USER = ("US", 16, 17, "User ID")  # 79 bits: guessing one is hopeless (and rate limited)

    def __init__(self, prefix: str, length: int, offset: int, title: str) -> None:
        self.prefix = prefix
        self.length = length
        self.offset = offset
        self.title = title

    @property
    def nbytes(self) -> int:
        """Bytes that hold any body value of this kind."""
        return int(((BASE**self.length - 1).bit_length() + 7) // 8)


_BY_PREFIX = {kind.prefix: kind for kind in IdKind}

#: The device IDs a server may identify users by (any non-empty combination: its policy).
ID_FIELDS = ("mc_id", "client_id", "hdd_id")


def _check(kind: IdKind, values: list[int]) -> int:
    return (kind.offset + sum((i + 1) * v for i, v in enumerate(values))) % BASE


def _body(kind: IdKind, value: int) -> str:
    digits = []
    for _ in range(kind.length):
        value, d = divmod(value, BASE)
        digits.append(ALPHABET[d])
    return "".join(reversed(digits))


@functools.lru_cache(maxsize=1 << 16)  # a server names the same cards, consoles and users again and again
def _label(kind: IdKind, value: int) -> str:
    body = _body(kind, value)
    groups = [body[i : i + GROUP] for i in range(0, len(body), GROUP)]
    return "-".join([kind.prefix, *groups, ALPHABET[_check(kind, [_VALUE[c] for c in body])]])


@dataclass(frozen=True, order=True)
class Id:
    """One ID of one kind. ``str(id)`` is its label; ``Id.parse`` reads a label back."""

    kind: IdKind
    value: int

    def __post_init__(self) -> None:
        if not 0 <= self.value < BASE**self.kind.length:
            raise IdError(f"{self.kind.title} value out of range")

    @classmethod
    def random(cls, kind: IdKind, *, randbelow: Callable[[int], int] = secrets.randbelow) -> Id:
        return cls(kind, randbelow(BASE**kind.length))

    @classmethod
    def from_bytes(cls, kind: IdKind, data: bytes) -> Id:
        value = int.from_bytes(data, "big")
        if value >= BASE**kind.length:
            raise IdError(f"not a valid {kind.title}")
        return cls(kind, value)

    def to_bytes(self) -> bytes:
        return self.value.to_bytes(self.kind.nbytes, "big")

    @functools.cached_property
    def body(self) -> str:
        return _body(self.kind, self.value)

    @property
    def check(self) -> str:
        return ALPHABET[_check(self.kind, [_VALUE[c] for c in self.body])]

    @functools.cached_property
    def label(self) -> str:
        """The label as printed: kind, body in groups of four, check character."""
        return _label(self.kind, self.value)

    def __str__(self) -> str:
        return self.label

    def __repr__(self) -> str:
        return f"Id({str(self)!r})"

    @classmethod
    def parse(cls, text: str, kind: IdKind | None = None) -> Id:
        """Read a label as typed by a person. ``kind`` None accepts any kind.

        Raises :class:`IdError` with one line that says what is wrong.
        """
        if len(text) <= 64:  # a label's length: remembered (an Id is immutable, and the server
            return _parse(text, kind)  # parses the same few again and again)
        return cls._parse(text, kind)

    @classmethod
    def _parse(cls, text: str, kind: IdKind | None) -> Id:
        shown = text.strip()
        want = kind.title if kind else "ID"
        cleaned = "".join(ch for ch in shown.upper() if ch not in "- \t")
        prefix = cleaned[:2]
        rest = "".join(_ALIASES.get(ch, ch) for ch in cleaned[2:])
        found = _BY_PREFIX.get(prefix)
        if found is None:
            raise IdError(
                f"{shown!r} is not a {want}: it must start with "
                + (f"{kind.prefix}-" if kind else "one of " + ", ".join(_BY_PREFIX))
            )
        if kind is not None and found is not kind:
            raise IdError(f"{shown!r} is a {found.title}, not a {kind.title}")
        kind = found
        if len(rest) != kind.length + 1:
            raise IdError(
                f"{shown!r} is not a valid {kind.title}: it has {max(len(rest) - 1, 0)} characters"
                f" before the check character, a {kind.title} has {kind.length}"
            )
        bad = sorted({ch for ch in rest if ch not in _VALUE})
        if bad:
            raise IdError(f"{shown!r} is not a valid {kind.title}: no {', '.join(bad)} in IDs")
        values = [_VALUE[ch] for ch in rest[:-1]]
        if _check(kind, values) != _VALUE[rest[-1]]:
            raise IdError(
                f"{shown!r} is not a valid {kind.title}: its check character does not match",
                hint="a character is mistyped or two are swapped; compare with the label",
            )
        value = 0
        for v in values:
            value = value * BASE + v
        return cls(kind, value)


def client_id(text: str) -> Id:
    return Id.parse(text, IdKind.CLIENT)


def hdd_id(text: str) -> Id:
    return Id.parse(text, IdKind.HDD)


def card_id(text: str) -> Id:
    return Id.parse(text, IdKind.CARD)


def media_id(text: str) -> Id:
    return Id.parse(text, IdKind.MEDIA)


def user_id(text: str) -> Id:
    return Id.parse(text, IdKind.USER)


@functools.lru_cache(maxsize=4096)
def _parse(text: str, kind: IdKind | None) -> Id:
    return Id._parse(text, kind)
