"""Memory card images: format, open (choosing the current superblock), apply plans, read saves.

The logic is in :mod:`vhw.stores.card`; this module owns the file descriptor, the lock and the
executor. A card image is a sparse file of its own, or a region of an HDD image (an HDD's internal
memory, :meth:`CardImage.open_region`): the same bytes either way, at another base offset.

Writers hold an exclusive ``flock`` on a sidecar lock file for as long as they have the card open
for writing (``.NAME.lock`` beside a card, ``.NAME.memory.lock`` beside an HDD image), so two
processes never commit to one card at once and each commit starts from the state the last one
left. Locks die with their process.

:func:`load`, :func:`save`, :func:`transaction` and :func:`create` are the short forms the flows
use for the licensing items.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path

from .. import bindings, crypto, saves
from ..errors import ImageError, StateError
from ..formats import card as fmt
from ..formats.common import BLOCK_SIZE
from ..plans import Op, shifted
from ..stores.card import LAYOUT, CardState, format_plan
from ..stores.ditto import Opened, commit_twice, read_current, rolled_back
from .files import OpenDevice, apply_ops, check_regular, create_image, describe_os_error, locked, open_regular

__all__ = ["CardImage", "create", "load", "transaction"]


def read_state(read: Callable[[int, int], bytes], path: object, size: int) -> Opened[CardState]:
    """The current generation of a card image of ``size`` bytes (:func:`vhw.stores.ditto.read_current`).
    ``read(length, offset)`` reads the image."""
    return read_current(LAYOUT, read, path, size)


def format_ops(card: fmt.Card, capacity: int) -> list[Op]:
    """The plan that formats a card image (or an HDD's internal memory) with these items and a save
    area of ``capacity`` bytes."""
    if capacity < 0 or capacity > fmt.MAX_CAPACITY:
        raise ImageError(fmt.WHAT, f"a card's save area holds 0 to {fmt.MAX_CAPACITY // 2**20} MiB")
    capacity = -(-capacity // BLOCK_SIZE) * BLOCK_SIZE
    ops, _ = format_plan(fmt.Superblock(card.mc_id, card.mc_key, card.formatted, capacity), card)
    return ops


class CardImage(OpenDevice):
    """An open card image. Open with :meth:`open` or :meth:`open_region`; use as a context manager."""

    what = fmt.WHAT

    def __init__(
        self, path: Path, fd: int, base: int, opened: Opened[CardState], stack: ExitStack, shown: object = None
    ):
        super().__init__(path if shown is None else shown, fd, stack)
        self.path = path
        self._base = base
        self.state = opened.state
        self.notes = opened.notes
        self.damage = opened.damage

    # -- life cycle ---------------------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, card: fmt.Card, *, capacity: int = fmt.DEFAULT_CAPACITY) -> None:
        """Make a new card image file (sparse), never over an existing file."""
        ops = format_ops(card, capacity)
        create_image(path, fmt.image_size(-(-capacity // BLOCK_SIZE) * BLOCK_SIZE), ops, fmt.WHAT)

    @classmethod
    def open(cls, path: Path, *, write: bool = False, wait: bool = True, damaged: bool = False) -> CardImage:
        """Open and check a card image file; ``write`` takes the card's lock. A card whose newest
        metadata is lost (both copies damaged) is refused, in one line that says it rolled back and
        what to do, unless ``damaged`` (the checks: fsck, info)."""
        path = Path(path)
        check_regular(path, fmt.WHAT)
        lock = path.parent / f".{path.name}.lock"
        return cls._open(path, path, 0, None, lock=lock, write=write, wait=wait, damaged=damaged)

    @classmethod
    def open_region(
        cls,
        path: Path,
        offset: int,
        length: int,
        *,
        what: str,
        write: bool = False,
        wait: bool = True,
        damaged: bool = False,
    ) -> CardImage:
        """Open the card image in ``length`` bytes at ``offset`` of the file ``path`` (an HDD's
        internal memory); ``what`` names it in messages."""
        path = Path(path)
        lock = path.parent / f".{path.name}.memory.lock"
        return cls._open(path, what, offset, length, lock=lock, write=write, wait=wait, damaged=damaged)

    @classmethod
    def _open(
        cls,
        path: Path,
        shown: object,
        base: int,
        length: int | None,
        *,
        lock: Path,
        write: bool,
        wait: bool,
        damaged: bool,
    ) -> CardImage:
        stack = ExitStack()
        try:
            if write:
                try:
                    lock_fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
                except OSError as exc:
                    raise ImageError(path, f"cannot lock {fmt.WHAT}: {describe_os_error(exc)}") from None
                stack.callback(os.close, lock_fd)
                stack.enter_context(locked(lock_fd, path, fmt.WHAT, wait=wait))
            fd = open_regular(path, os.O_RDWR if write else os.O_RDONLY, fmt.WHAT)
            stack.callback(os.close, fd)
            size = os.fstat(fd).st_size - base if length is None else length
            opened = read_state(lambda n, off: os.pread(fd, n, base + off), shown, size)
            if opened.damage and not damaged:
                repair = f"vhw card fsck --repair {path}" if base == 0 else f"vhw hdd fsck --repair {path}"
                raise rolled_back(shown, opened.damage, opened.state.sb.generation, repair=repair)
        except BaseException:
            stack.close()
            raise
        return cls(path, fd, base, opened, stack, shown)

    # -- reading ------------------------------------------------------------------------------

    @property
    def card(self) -> fmt.Card:
        return self.state.card

    @property
    def saves(self) -> tuple[fmt.Save, ...]:
        return self.state.saves

    def read_sealed(self, save: fmt.Save) -> bytes:
        out = bytearray()
        for e in save.extents:
            data = os.pread(self._fd, e.length, self._base + e.offset)
            if len(data) != e.length:
                raise ImageError(self.shown, f"truncated {fmt.WHAT}")
            out += data
        return bytes(out)

    def check(self) -> list[str]:
        """fsck: every inconsistency, one line each (a damaged superblock slot is a note)."""
        return self.damage + self.state.problems()

    def repair(self) -> list[str]:
        """Make the generation in use current in every copy: a superblock slot or catalog copy
        that is damaged or out of date is written anew, and a card that rolled back (:attr:`damage`)
        is accepted as it now is. Returns what was done."""
        if not (self.notes or self.damage):
            return []
        done = [
            f"accepted generation {self.state.sb.generation}" + (" (what was newer is lost)" if self.damage else "")
        ]
        self.apply(*commit_twice(self.state, self.state.catalog))  # both slots, every copy, anew
        self.notes, self.damage = [], []
        return [*done, "rewrote the superblocks and the catalog as a new generation"]

    # -- writing ------------------------------------------------------------------------------

    def apply(self, ops: Iterable[Op], state: CardState) -> None:
        """Apply a plan made from this image's state, and adopt the state it leads to."""
        self._write(lambda: apply_ops(self._fd, shifted(ops, self._base)))
        self.state = state

    def save_card(self, card: fmt.Card) -> None:
        """Commit new licensing items."""
        self.apply(*self.state.with_card(card))

    # -- saves ----------------------------------------------------------------------------------

    def save_key(self) -> bytes:
        """This card's save key (:mod:`vhw.saves`); a card keeps saves once it is registered."""
        card = self.card
        try:
            user = bindings.card_user(card.mc_key, card.mc_id, card.user_id)
        except crypto.Invalid:
            raise StateError(f"memory card {card.mc_id}: its User ID does not open (damaged card)") from None
        if user is None:
            raise StateError(
                f"memory card {card.mc_id} is not registered: a card keeps saves once its user is registered",
                hint="run `vhw console register` first",
            )
        return saves.save_key(card.mc_key, card.mc_id, user)

    def find(self, title_id: str, name: str) -> fmt.Save:
        found = self.state.catalog.save(title_id, name)
        if found is None:
            raise StateError(f"{self.shown}: no save {title_id}/{name} on this card")
        return found

    def read_save(self, entry: fmt.Save, key: bytes | None = None) -> bytes:
        """A save's plaintext, or SaveInvalid in one line (edited, or copied from another card)."""
        return saves.open_save(key or self.save_key(), entry, self.read_sealed(entry), where=self.shown)

    def write_save(
        self, title_id: str, name: str, data: bytes, *, modified: int, meta: bytes = b"", key: bytes | None = None
    ) -> fmt.Save:
        """Seal and commit one save (a new one, or the next version of one); CardFull if it does not fit."""
        self.write_saves([(title_id, name, data, modified, meta)], key=key)
        return self._saved(title_id, name)

    def write_saves(self, items: list[tuple[str, str, bytes, int, bytes]], *, key: bytes | None = None) -> None:
        """Seal and commit several saves (title ID, name, data, modified, meta), one commit each.
        All of them are planned before anything is written: if one does not fit, none is written."""
        key = key or self.save_key()
        ops, state = [], self.state
        for title_id, name, data, modified, meta in items:
            sealed = saves.seal(key, title_id, name, data, modified=modified, meta=meta)
            more, state = state.put(sealed.entry, sealed.data)
            ops += more
        self.apply(ops, state)

    def rename_save(self, entry: fmt.Save, name: str, *, modified: int, key: bytes | None = None) -> fmt.Save:
        key = key or self.save_key()
        if not saves.verify_entry(key, entry):
            raise saves.SaveInvalid(self.shown, f"save {entry.title_id}/{entry.name} does not verify")
        new = saves.retagged(key, entry, name=name, modified=modified)
        self.apply(*self.state.replace_entry(entry, new))
        return self._saved(entry.title_id, name)

    def _saved(self, title_id: str, name: str) -> fmt.Save:
        """The entry of a save just committed."""
        entry = self.state.catalog.save(title_id, name)
        assert entry is not None, "a committed save is in the catalog"
        return entry

    def remove_saves(self, title_id: str, name: str | None = None) -> list[fmt.Save]:
        ops, state, gone = self.state.remove(title_id, name)
        if gone:
            self.apply(ops, state)
        return gone


# -- the short forms the flows use ---------------------------------------------------------------------


def create(path: Path, card: fmt.Card, *, capacity: int = fmt.DEFAULT_CAPACITY) -> None:
    CardImage.create(path, card, capacity=capacity)


def load(path: Path) -> fmt.Card:
    with CardImage.open(path) as img:
        return img.card


def save(path: Path, card: fmt.Card) -> None:
    with CardImage.open(path, write=True) as img:
        img.save_card(card)


@contextlib.contextmanager
def transaction(path: Path, *, wait: bool = True) -> Iterator[CardImage]:
    """Lock the card and yield it open for writing; ``img.save_card(card)`` commits a change."""
    with CardImage.open(path, write=True, wait=wait) as img:
        yield img
