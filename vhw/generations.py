"""Choosing the current generation of a crash-safe device file whose metadata is kept twice.

The HDD image and the memory card keep two superblock *slots* (generations alternate between
them, so a commit never overwrites the current one: LMDB's two meta pages) and, since format 3 of
the HDD and 4 of the card, two *ditto copies* of each slot and of each catalog (as ZFS keeps its
metadata and ext4 its backup superblocks). A commit writes both catalog copies, syncs, writes the
slot's first copy, syncs, then its second copy, syncs. So:

* a crash tears at most one copy of one slot, and never both copies of a slot: the other copy
  still holds that slot's previous generation;
* one damaged byte spoils one copy: its ditto copy of the same generation is used, nothing rolls
  back, and the verifier names the copy to rewrite (a *note*);
* a fall back to an older generation happens only when both copies of something are bad, which a
  crash never leaves: it is reported as *damage*, naming the generation that was lost and what to
  do, never silently.

This module is pure: it takes what the device layer read and decoded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from .errors import ImageError

COPIES = ("A", "B")


class HasGeneration(Protocol):
    @property
    def generation(self) -> int: ...


S = TypeVar("S", bound=HasGeneration)
C = TypeVar("C")


@dataclass
class Chosen(Generic[S, C]):
    """The superblock and catalog in use, what was repaired from a ditto copy (notes), and what
    could not be (damage: a fall back to an older generation, or a slot lost whole)."""

    sb: S
    catalog: C
    notes: list[str] = field(default_factory=list)
    damage: list[str] = field(default_factory=list)
    candidates: list[S] = field(default_factory=list)


def choose(
    slots: Sequence[Sequence[S | ImageError]], catalogs: Callable[[S], Sequence[Callable[[], C]]], *, lost_hint: str
) -> Chosen[S, C]:
    """``slots[i][c]``: copy ``c`` of superblock slot ``i``, decoded or the error that refused it;
    ``catalogs(sb)``: loaders of the ditto copies of ``sb``'s catalog, each returning it or raising
    :class:`ImageError`. ``lost_hint`` says what to do about a lost generation."""
    notes: list[str] = []
    damage: list[str] = []
    valid: list[S] = []
    errors: list[ImageError] = []
    for i, copies in enumerate(slots):
        good = [x for x in copies if not isinstance(x, ImageError)]
        errors += [x for x in copies if isinstance(x, ImageError)]
        valid += good
        if not good:
            damage.append(
                f"both copies of superblock slot {i} are damaged: the last change to this image"
                f" may be lost ({lost_hint})"
            )
    if not valid:
        raise errors[0]
    generations = sorted({sb.generation for sb in valid}, reverse=True)
    first_error: ImageError | None = None
    lost: list[int] = []
    for g in generations:
        sb = next(x for x in valid if x.generation == g)
        if not notes:
            notes += _slot_notes(slots)
        found: C | None = None
        bad: list[str] = []
        for c, load in enumerate(catalogs(sb)):  # every copy is read: a bad ditto copy is named too
            try:
                catalog = load()
            except ImageError as exc:
                first_error = first_error or exc
                bad.append(COPIES[c])
                problem = exc.problem
                continue
            found = catalog if found is None else found
        if found is None:
            damage.append(f"both copies of the catalog of generation {g} are damaged ({problem})")
            lost.append(g)
            continue
        if bad:
            notes.append(
                f"catalog copy {', '.join(bad)} of generation {g} is damaged; its ditto copy is in use"
                " (a repair rewrites it)"
            )
        if lost:
            damage.append(
                f"rolled back: generation {g} is in use, what changed after it (generation"
                f" {', '.join(map(str, lost))}) is lost ({lost_hint})"
            )
        return Chosen(sb, found, notes, damage, valid)
    assert first_error is not None
    raise first_error


def _slot_notes(slots: Sequence[Sequence[HasGeneration | ImageError]]) -> list[str]:
    """A copy of a slot that is damaged, or older than its ditto copy (a commit interrupted
    between the two): the ditto copy stands in for it, and a repair rewrites it."""
    out = []
    for i, copies in enumerate(slots):
        good = [x for x in copies if not isinstance(x, ImageError)]
        if not good:
            continue  # damage, said already
        newest = max(x.generation for x in good)
        for c, x in enumerate(copies):
            if isinstance(x, ImageError):
                out.append(
                    f"superblock slot {i} copy {COPIES[c]} is damaged; its ditto copy (generation"
                    f" {newest}) stands in for it (a repair rewrites it)"
                )
            elif x.generation != newest:
                out.append(
                    f"superblock slot {i} copy {COPIES[c]} is out of date (an interrupted commit); its"
                    f" ditto copy (generation {newest}) stands in for it"
                )
    return out


def rolled_back(path: object, damage: Sequence[str], generation: int, *, repair: str) -> ImageError:
    """The refusal of every command but the checks to use a device file whose newest metadata is
    lost (``damage``): it runs on an older generation, which must never happen in silence. The
    user accepts that generation explicitly, with ``repair`` (a command line), or restores the
    file; until then nothing is written to it."""
    return ImageError(
        path,
        f"rolled back to generation {generation}: {'; '.join(damage)}",
        hint=f"`{repair}` makes generation {generation} current (nothing newer comes back), or restore the"
        " file from a copy; until then vhw writes nothing to it",
    )
