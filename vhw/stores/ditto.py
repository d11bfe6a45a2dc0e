"""The store the memory card and the HDD share: metadata kept twice, the current generation, the commit.

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

Each device says where it keeps what (a :class:`Layout`); :func:`read_current` opens either
through a ``read(length, offset)`` it is handed, and :func:`commit_ops` plans either's commit. This
module is pure: the device layer (:mod:`vhw.devices`) reads and writes the files.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, Self, TypeVar

from ..errors import ImageError
from ..formats.common import BLOCK_SIZE, Extent, version_error
from ..formats.ditto import DITTO, SLOT_OFFSETS
from ..plans import SYNC, Op, Write

__all__ = ["Opened", "commit_twice", "read_current", "rolled_back"]


COPIES = ("A", "B")


class HasGeneration(Protocol):
    @property
    def generation(self) -> int: ...


class Committing(Protocol):
    """A device's state: it plans making a catalog the next generation."""

    @property
    def catalog(self) -> Any: ...

    def commit(self, catalog: Any) -> tuple[list[Op], Self]: ...


S = TypeVar("S", bound=HasGeneration)
C = TypeVar("C")
T = TypeVar("T")
SB = TypeVar("SB", bound="Superblock")
C_co = TypeVar("C_co", covariant=True)
HEAD = 4 * BLOCK_SIZE  # the superblock slots' copies lie in the first HEAD bytes of an image


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


@dataclass
class Opened(Generic[T]):
    """What opening a device found: its state (superblock and catalog in use), notes (a copy
    repaired from its ditto, or what an interrupted commit leaves) and damage (what no ditto copy
    could make good: never a crash's doing, and never passed over in silence)."""

    state: T
    notes: list[str] = field(default_factory=list)
    damage: list[str] = field(default_factory=list)


class Superblock(HasGeneration, Protocol):
    """What :func:`read_current` asks of a device's superblock."""

    @property
    def catalog_copies(self) -> Sequence[Extent]: ...  # where its catalog's two copies lie

    @property
    def image_size(self) -> int: ...  # the bytes the image takes

    @property
    def identity(self) -> object: ...  # what every superblock of one device names alike


class Format(Protocol[SB, C_co]):
    """What :func:`read_current` asks of a device's format module (:mod:`vhw.formats.card`,
    :mod:`vhw.formats.hdd`). Both keep their superblocks where :mod:`vhw.formats.ditto` says, all
    four copies in the first ``HEAD`` bytes of the image, and every format of either kept its
    ``MAGIC`` in the first 8 bytes of a slot and its version (big-endian u16) in the next 2."""

    WHAT: str
    MAGIC: bytes
    VERSION: int

    def decode_superblock(self, block: bytes, *, path: object) -> SB: ...

    def decode_catalog(self, data: bytes, sb: SB, *, path: object) -> C_co: ...


@dataclass(frozen=True)
class Layout(Generic[SB, C, T]):
    """One kind of device's store: its format, the state it opens into, what to do when a
    generation is lost."""

    format: Format[SB, C]
    state: Callable[[SB, C], T]  # the device's state of a superblock and its catalog
    lost_hint: str

    @property
    def a_what(self) -> str:
        what = self.format.WHAT
        return f"{'an' if what[0] in 'AEHIOU' else 'a'} {what}"


def read_current(layout: Layout[SB, C, T], read: Callable[[int, int], bytes], path: object, size: int) -> Opened[T]:
    """Open a device image of ``size`` bytes: the highest valid superblock copy whose catalog (either
    copy) checks (:func:`choose`). ``read(length, offset)`` reads the image (a file, a region of
    one, or bytes in memory)."""
    fmt = layout.format
    what, magic = fmt.WHAT, fmt.MAGIC
    if size == 0:
        raise ImageError(path, f"empty file, not {layout.a_what}")
    head = read(HEAD, 0)
    offsets = [(o, o + DITTO) for o in SLOT_OFFSETS]
    if not any(head[o : o + len(magic)] == magic for pair in offsets for o in pair):
        if len(head) < len(magic) and magic.startswith(head):
            raise ImageError(path, f"truncated {what} ({size} bytes)")
        raise ImageError(path, f"not {layout.a_what} (unknown format)")
    old = int.from_bytes(head[len(magic) : len(magic) + 2], "big")
    if old < fmt.VERSION and head[: len(magic)] == magic:
        raise version_error(path, what, old, fmt.VERSION)
    if size < HEAD:
        raise ImageError(path, f"truncated {what} ({size} bytes)")

    def decoded(offset: int) -> SB | ImageError:
        try:
            return fmt.decode_superblock(head[offset : offset + BLOCK_SIZE], path=path)
        except ImageError as exc:
            return exc

    def catalog_at(sb: SB, at: Extent) -> C:
        return fmt.decode_catalog(read(at.length, at.offset), sb, path=path)

    def catalogs(sb: SB) -> list[Callable[[], C]]:
        expected = sb.image_size
        if size < expected:
            raise ImageError(path, f"truncated {what} ({size} of {expected} bytes)")
        if size > expected:
            raise ImageError(path, f"{what} has {size - expected} unexpected trailing bytes")
        return [functools.partial(catalog_at, sb, at) for at in sb.catalog_copies]

    chosen = choose([[decoded(o) for o in pair] for pair in offsets], catalogs, lost_hint=layout.lost_hint)
    if any(c.identity != chosen.sb.identity for c in chosen.candidates):
        raise ImageError(path, f"corrupt {what} (its superblocks name different devices)")
    return Opened(layout.state(chosen.sb, chosen.catalog), chosen.notes, chosen.damage)


def catalog_fields(encoded: bytes) -> dict[str, Any]:
    """What a superblock records of the catalog it commits: its length and SHA-256."""
    return {"catalog_length": len(encoded), "catalog_sha256": hashlib.sha256(encoded).digest()}


def commit_ops(
    copies: Sequence[int], catalog: bytes, slot: int, superblock: bytes, data: Sequence[Op] = ()
) -> list[Op]:
    """The commit of the next generation, in order: its ``data`` (writes into free space), sync; the
    catalog's copies at ``copies``, sync; the superblock into ``slot``'s copy A, sync; its copy B
    (``DITTO`` bytes after), sync. The sync between a slot's copies is what tells a crash from
    damage (:func:`choose`)."""
    ops: list[Op] = list(data)
    if ops:
        ops.append(SYNC)
    ops += [Write(at, catalog) for at in copies]
    ops += [SYNC, Write(slot, superblock), SYNC, Write(slot + DITTO, superblock), SYNC]
    return ops


StateT = TypeVar("StateT", bound=Committing)


def commit_twice(state: StateT, catalog: Any) -> tuple[list[Op], StateT]:
    """Commit ``catalog`` into both superblock slots (every copy written anew): how a device is
    formatted, and how a repair makes the generation in use current everywhere."""
    first, state = state.commit(catalog)
    second, state = state.commit(state.catalog)
    return first + second, state


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
