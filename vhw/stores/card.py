"""The memory card's store without I/O: its state, commits as plans, the save area's space.

A :class:`CardState` is a card's current superblock and catalog. Every change (new licensing
items, a save written, renamed or removed) is a plan (:mod:`vhw.plans`)::

    [Write(sealed save data into free blocks of the save area) ...]  Sync
    Write(next catalog into the other catalog half)  Sync
    Write(next superblock into the other slot)  Sync

New save data never lands on blocks the current catalog references, and the next catalog and
superblock go where the current ones are not: a crash at any point leaves the current generation
whole (its saves and licensing items), and the next generation appears only with its superblock.
Blocks a commit frees are reused only by later commits. Overwriting a save needs room for its new
version next to the old one until the commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..errors import NoSpaceError
from ..formats import card as fmt
from ..formats.card import MAX_SAVES, SAVE_START, Card, Catalog, Save, Superblock, valid_save_name
from ..formats.common import BLOCK_SIZE, Extent, valid_title_id
from ..plans import Op, Write
from .ditto import Layout, catalog_fields, commit_ops, commit_twice

__all__ = ["LAYOUT", "CardFull", "CardState", "format_plan"]


def _blocks(n: int) -> int:
    return -(-n // BLOCK_SIZE) * BLOCK_SIZE


class CardFull(NoSpaceError):
    """The save does not fit on the card (the running title gets ENOSPC)."""


@dataclass(frozen=True)
class CardState:
    sb: Superblock
    catalog: Catalog

    @property
    def card(self) -> Card:
        return self.catalog.card

    @property
    def saves(self) -> tuple[Save, ...]:
        return self.catalog.saves

    # -- space --------------------------------------------------------------------------------

    def used(self) -> list[Extent]:
        return sorted(e for s in self.saves for e in s.extents)

    def free(self) -> list[Extent]:
        """The save area's blocks that no save of the current catalog references."""
        out, pos = [], SAVE_START
        for e in self.used():
            if e.offset > pos:
                out.append(Extent(pos, e.offset - pos))
            pos = max(pos, _blocks(e.end - SAVE_START) + SAVE_START)
        end = SAVE_START + self.sb.capacity
        if pos < end:
            out.append(Extent(pos, end - pos))
        return out

    @property
    def used_bytes(self) -> int:
        return sum(_blocks(e.length) for e in self.used())

    @property
    def free_bytes(self) -> int:
        return self.sb.capacity - self.used_bytes

    def _allocate(self, length: int, what: str) -> tuple[Extent, ...]:
        """First-fit blocks for ``length`` bytes of sealed data, or CardFull."""
        if length == 0:
            return ()
        got, remaining = [], length
        for hole in self.free():
            take = min(hole.length, _blocks(remaining))
            got.append(Extent(hole.offset, min(take, remaining)))
            remaining -= min(take, remaining)
            if remaining == 0:
                return tuple(got)
        raise CardFull(
            f"the memory card is full: {what} needs {_blocks(length):,} bytes,"
            f" {self.free_bytes:,} of {self.sb.capacity:,} are free",
            hint="remove saves with `vhw card saves rm`",
        )

    # -- commits ------------------------------------------------------------------------------

    def commit(self, catalog: Catalog, data: Sequence[Op] | None = None) -> tuple[list[Op], CardState]:
        """Plan making ``catalog`` the next generation, after ``data`` (writes into free blocks)."""
        generation = self.sb.generation + 1
        catalog = replace(catalog, generation=generation)
        encoded = fmt.encode_catalog(catalog)
        sb = replace(self.sb, generation=generation, **catalog_fields(encoded))
        copies = [at.offset for at in sb.catalog_copies]
        ops = commit_ops(copies, encoded, sb.slot, fmt.encode_superblock(sb), data or ())
        return ops, CardState(sb, catalog)

    def with_card(self, card: Card) -> tuple[list[Op], CardState]:
        """Plan new licensing items (the saves stay as they are)."""
        if card.mc_id != self.sb.mc_id or card.mc_key != self.sb.mc_key:
            raise ValueError("a card's identity never changes")
        return self.commit(replace(self.catalog, card=card))

    def put(self, entry: Save, sealed: bytes) -> tuple[list[Op], CardState]:
        """Plan writing one save (new, or a new version of one with its title and name)."""
        old = self.catalog.save(entry.title_id, entry.name)
        others = tuple(s for s in self.saves if s is not old)
        if old is None and len(others) >= MAX_SAVES:
            raise CardFull(
                f"the memory card's directory is full ({MAX_SAVES} saves)", hint="remove saves with `vhw card saves rm`"
            )
        extents = self._allocate(len(sealed), f"save {entry.title_id}/{entry.name}")
        writes, at = [], 0
        for e in extents:
            writes.append(Write(e.offset, sealed[at : at + e.length]))
            at += e.length
        return self.commit(replace(self.catalog, saves=others + (replace(entry, extents=extents),)), writes)

    def replace_entry(self, old: Save, new: Save) -> tuple[list[Op], CardState]:
        """Plan changing a save's entry only (a rename): its data stays where it is. A save that
        already has the new name is replaced."""
        saves = tuple(s for s in self.saves if s is not old and s.key != new.key)
        return self.commit(replace(self.catalog, saves=saves + (replace(new, extents=old.extents),)))

    def remove(self, title_id: str, name: str | None = None) -> tuple[list[Op], CardState, list[Save]]:
        """Plan removing one save of a title, or all of them (``name`` None)."""
        gone = [s for s in self.saves if s.title_id == title_id and (name is None or s.name == name)]
        kept = tuple(s for s in self.saves if s not in gone)
        ops, state = self.commit(replace(self.catalog, saves=kept))
        return ops, state, gone

    # -- checks -------------------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Structural inconsistencies of the save directory (fsck's pass); empty when sound."""
        out, seen = [], set()
        end = SAVE_START + self.sb.capacity
        owned: list[tuple[Extent, str]] = []
        for s in self.saves:
            name = f"save {s.title_id}/{s.name}"
            if not valid_title_id(s.title_id) or not valid_save_name(s.name) or s.key in seen:
                out.append(f"{name}: invalid or duplicate title ID or name")
            seen.add(s.key)
            if sum(e.length for e in s.extents) != s.layout.sealed_size:
                out.append(f"{name}: its extents do not hold its data")
            for e in s.extents:
                if e.offset < SAVE_START or e.end > end or e.length <= 0 or e.offset % BLOCK_SIZE:
                    out.append(f"{name}: extent {e.offset}+{e.length} out of the save area")
                owned.append((e, name))
        owned.sort()
        for (a, an), (b, bn) in zip(owned, owned[1:], strict=False):
            if b.offset < _blocks(a.end - SAVE_START) + SAVE_START:
                out.append(f"{bn} overlaps {an}")
        return out


def format_plan(sb: Superblock, card: Card) -> tuple[list[Op], CardState]:
    """Plan a new card: its items committed twice, so both slots and halves start out valid."""
    return commit_twice(CardState(replace(sb, generation=0), Catalog(0, card)), Catalog(0, card))


LAYOUT: Layout[Superblock, Catalog, CardState] = Layout(
    format=fmt,
    state=CardState,
    lost_hint="a save or licensing item written since may be missing; a title's key"
    " deleted since may show again: install the title from its disc again if needed",
)
