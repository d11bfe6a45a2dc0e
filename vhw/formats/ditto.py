"""The superblock slots and catalogs the memory card and the HDD both keep twice (the store of
:mod:`vhw.stores.ditto`): where the slots lie, and how a slot's copy and a catalog are checked
before either device's record is read from them."""

from __future__ import annotations

import hashlib
from typing import Any

import construct as cs

from ..errors import ImageError, IntegrityError
from .common import BLOCK_SIZE, open_block, parse, version_error

__all__ = ["DITTO", "SLOT_OFFSETS"]


SLOT_OFFSETS = (0, BLOCK_SIZE)  # copy A of superblock slots 0 and 1
DITTO = 2 * BLOCK_SIZE  # copy B of a slot lies this far after its copy A


def decode_slot(block: bytes, head: cs.Construct, body: cs.Construct, *, version: int, path: object, what: str) -> Any:
    """A superblock slot's copy (a card's, an HDD's): its block checked, then its version (before the
    body: another version lays it out otherwise), then its body parsed. ``what`` names the device."""
    data = open_block(block, path=path, what=f"{what} superblock")
    found = parse(head, data, path=path, what=f"{what} superblock").version
    if found != version:
        raise version_error(path, what, found, version)
    return parse(body, data, path=path, what=f"{what} superblock")


def decode_catalog_record(data: bytes, body: cs.Construct, sb: Any, *, path: object, what: str) -> Any:
    """A catalog (a card's, an HDD's) that its superblock ``sb`` names: its SHA-256 and generation
    checked against ``sb``'s, then parsed."""
    if hashlib.sha256(data).digest() != sb.catalog_sha256:
        raise IntegrityError(path, f"{what} catalog is damaged or was modified (checksum mismatch)")
    rec = parse(body, data, path=path, what=f"{what} catalog")
    if rec.generation != sb.generation:
        raise ImageError(path, f"corrupt {what} catalog (generation does not match its superblock)")
    return rec
