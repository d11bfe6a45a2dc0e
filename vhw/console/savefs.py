"""The running title's save folder: a writable FUSE view of its saves on a memory card (pyfuse3).

``vhw console play`` mounts it for the time the title runs and tells the title where it is in
``VHW_SAVE_DIR`` (README, "For title authors"). The folder is flat: one file per save of the
running title, named by the save's name. A title reads and writes them as plain files:

* A file is buffered while it is open and lands on the card as one save when it is closed, or
  when the title calls ``fsync``: a crash-safe card commit (:mod:`vhw.stores.card`), so the card
  holds either the old save or the new one, never a torn one.
* ``close`` (or ``fsync``) fails with ENOSPC when the save does not fit on the card, and the user
  is told in a line after the title ends.
* ``rename`` replaces a save atomically; ``unlink`` removes one. No folders, links or devices.
* The extended attribute ``user.vhw.meta`` holds a few bytes of the title's own metadata shown by
  ``vhw card saves ls`` ("level 3"), at most 64 bytes.

Handlers are thin wrappers over :class:`SaveFolder` (plain Python, no FUSE) and map errors in one
place (:func:`fuse_errors`), as the title mount does.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyfuse3

from ..devices.card import CardImage
from ..errors import VhwError
from ..formats.card import META_SIZE, valid_save_name
from ..saves import SaveInvalid
from ..stores.card import CardFull
from .fuseloop import errno_guard, serve_operations

log = logging.getLogger(__name__)

META_XATTR = b"user.vhw.meta"
BLOCK = 4096


class SaveError(Exception):
    """A save operation failed with this errno; ``message`` says why, for the log."""

    def __init__(self, code: int, message: str = "", *, told: bool = False):
        super().__init__(message or os.strerror(code))
        self.errno = code
        self.told = told  # the user was told of it already (a failed write)


@dataclass
class Handle:
    """One open save file: its name, its contents while open, and whether they changed."""

    name: str
    data: bytearray | None = None  # loaded on first use
    dirty: bool = False
    meta: bytes | None = None  # set while open: committed with the data
    failed: int = 0  # the errno of a write that failed: this version never lands on the card


class SaveFolder:
    """The saves of one title on one card, as files: the logic behind :class:`SaveFS`."""

    def __init__(
        self,
        open_card: Callable[..., CardImage],
        title_id: str,
        *,
        clock: Callable[[], int] = time.time_ns,
        called: str = "the memory card",
        gone: Callable[[], str | None] | None = None,
    ):
        self.open_card = open_card
        self.title_id = title_id
        self.clock = clock
        self.called = called  # "the memory card", or a card-less console's memory
        self.gone = gone  # why the card is no longer the one the title plays with (it left), or None
        with open_card() as img:
            self.key = img.save_key()
            self.capacity = img.state.sb.capacity
            self._refresh(img)

    def _refresh(self, img: CardImage) -> None:
        self.entries = {s.name: s for s in img.saves if s.title_id == self.title_id}
        self.free = img.state.free_bytes

    def refresh(self) -> None:
        with self.open_card() as img:
            self._refresh(img)

    def names(self) -> list[str]:
        return sorted(self.entries)

    def load(self, name: str) -> bytes:
        entry = self.entries.get(name)
        if entry is None:
            return b""
        with self.open_card() as img:
            try:
                return img.read_save(entry, self.key)
            except SaveInvalid as exc:
                raise SaveError(errno.EIO, str(exc)) from None

    def _writable(self, name: str) -> None:
        """Refuse a change once the card has left its slot (EIO, and a line the user is told after
        the title ends): a save is never written to a card that is not in the console."""
        reason = self.gone() if self.gone else None
        if reason:
            raise SaveError(errno.EIO, f"{reason}: the title's save {name!r} was not written")

    def commit(self, name: str, data: bytes, meta: bytes | None) -> None:
        self._writable(name)
        old = self.entries.get(name)
        meta = (old.meta if old else b"") if meta is None else meta
        with self.open_card(write=True) as img:
            try:
                img.write_save(self.title_id, name, data, modified=self.clock(), meta=meta, key=self.key)
            except CardFull as exc:
                self._refresh(img)
                raise SaveError(
                    errno.ENOSPC, f"{self.called} is full: the title's save {name!r} was not written ({exc.message})"
                ) from None
            self._refresh(img)

    def remove(self, name: str) -> None:
        self._writable(name)
        with self.open_card(write=True) as img:
            if not img.remove_saves(self.title_id, name):
                raise SaveError(errno.ENOENT)
            self._refresh(img)

    def rename(self, old: str, new: str) -> None:
        self._writable(new)
        with self.open_card(write=True) as img:
            entry = img.state.catalog.save(self.title_id, old)
            if entry is None:
                raise SaveError(errno.ENOENT)
            try:
                img.rename_save(entry, new, modified=self.clock(), key=self.key)
            except SaveInvalid as exc:
                raise SaveError(errno.EIO, str(exc)) from None
            self._refresh(img)

    def set_meta(self, name: str, meta: bytes) -> None:
        entry = self.entries.get(name)
        if entry is None:
            raise SaveError(errno.ENOENT)
        self.commit(name, self.load(name), meta)

    def room_for(self, name: str, size: int) -> bool:
        """Whether a save of ``size`` bytes could be written now (next to its old version)."""
        return size + 16 * (size // (64 * 1024) + 1) <= self.free


def _save_errno(exc: Exception) -> int | None:
    if isinstance(exc, SaveError):
        if exc.errno in (errno.ENOSPC, errno.EIO) and not getattr(exc, "told", False):
            log.warning("%s", exc)
        return exc.errno
    if isinstance(exc, VhwError):
        log.error("%s", exc)
        return errno.EIO
    return None


fuse_errors = errno_guard(_save_errno, log)


class Inodes:
    """The inode number of each save name the kernel has seen, for as long as the folder is mounted."""

    def __init__(self) -> None:
        self._of: dict[str, int] = {}
        self._name_of: dict[int, str] = {}
        self._next = pyfuse3.ROOT_INODE + 1

    def of(self, name: str) -> int:
        if name not in self._of:
            self._of[name] = self._next
            self._name_of[self._next] = name
            self._next += 1
        return self._of[name]

    def name(self, inode: int) -> str:
        try:
            return self._name_of[inode]
        except KeyError:
            raise SaveError(errno.ENOENT) from None

    def rename(self, old: str, new: str) -> None:
        """``old``'s inode is ``new``'s now (a save that had the name ``new`` is gone)."""
        inode = self._of.pop(old, None)
        if inode is not None:
            self._name_of[inode] = new
            stale = self._of.pop(new, None)
            if stale is not None:
                self._name_of.pop(stale, None)
            self._of[new] = inode


class SaveFS(pyfuse3.Operations):
    """FUSE handlers over a :class:`SaveFolder`: one method per operation of the FUSE protocol that
    the folder answers (the protocol's table, so the class holds as many as it answers)."""

    enable_writeback_cache = False

    def __init__(self, folder: SaveFolder):
        super().__init__()
        self.folder = folder
        self.inodes = Inodes()
        self._handles: dict[int, Handle] = {}
        self._next_fh = 1

    def _open_handle(self, name: str) -> Handle | None:
        for h in self._handles.values():
            if h.name == name:
                return h
        return None

    def _attrs(self, inode: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.entry_timeout = a.attr_timeout = 0  # other vhw processes may change the card
        a.st_uid, a.st_gid = os.getuid(), os.getgid()
        a.st_blksize = BLOCK
        if inode == pyfuse3.ROOT_INODE:
            a.st_mode = stat.S_IFDIR | 0o755
            a.st_nlink = 2
            a.st_size = 0
            stamp = 0
        else:
            name = self.inodes.name(inode)
            handle = self._open_handle(name)
            entry = self.folder.entries.get(name)
            if entry is None and handle is None:
                raise SaveError(errno.ENOENT)
            a.st_mode = stat.S_IFREG | 0o644
            a.st_nlink = 1
            a.st_size = len(handle.data) if handle and handle.data is not None else (entry.size if entry else 0)
            stamp = entry.modified if entry else self.folder.clock()
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = stamp
        a.st_blocks = -(-a.st_size // 512)
        return a

    def _data(self, h: Handle) -> bytearray:
        if h.data is None:
            h.data = bytearray(self.folder.load(h.name))
        return h.data

    def _commit(self, h: Handle) -> None:
        if h.failed:
            raise SaveError(h.failed, f"the save {h.name!r} was not written: a write to it failed", told=True)
        if h.dirty:
            self.folder.commit(h.name, bytes(self._data(h)), h.meta)
            h.dirty, h.meta = False, None

    # -- handlers -----------------------------------------------------------------------------

    @fuse_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        if parent_inode != pyfuse3.ROOT_INODE:
            raise SaveError(errno.ENOTDIR)
        text = name.decode(errors="replace")
        if name in (b".", b".."):
            return self._attrs(pyfuse3.ROOT_INODE)
        self.folder.refresh()
        if text not in self.folder.entries and self._open_handle(text) is None:
            raise SaveError(errno.ENOENT)
        return self._attrs(self.inodes.of(text))

    @fuse_errors
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._attrs(inode)

    @fuse_errors
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None, ctx: Any) -> pyfuse3.EntryAttributes:
        if fields.update_size:
            name = self.inodes.name(inode)
            h = self._handles.get(fh) if fh is not None else None
            temporary = h is None
            h = h or Handle(name)
            data = self._data(h)
            if attr.st_size > len(data) and not self.folder.room_for(name, attr.st_size):
                raise SaveError(errno.ENOSPC, f"{self.folder.called} is full")
            del data[attr.st_size :]
            data.extend(bytes(attr.st_size - len(data)))
            h.dirty = True
            if temporary:
                self._commit(h)
        return self._attrs(inode)

    @fuse_errors
    async def opendir(self, inode: int, ctx: Any) -> int:
        if inode != pyfuse3.ROOT_INODE:
            raise SaveError(errno.ENOTDIR)
        self.folder.refresh()
        return inode

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        names = sorted(set(self.folder.names()) | {h.name for h in self._handles.values()})
        for index, name in enumerate(names[start_id:], start_id + 1):
            if not pyfuse3.readdir_reply(token, name.encode(), self._attrs(self.inodes.of(name)), index):
                break

    @fuse_errors
    async def releasedir(self, fh: int) -> None:
        pass

    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        h = Handle(self.inodes.name(inode))
        if flags & os.O_TRUNC:
            h.data, h.dirty = bytearray(), True
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = h
        return pyfuse3.FileInfo(fh=fh, direct_io=True)  # every read and write reaches the buffer

    @fuse_errors
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        text = name.decode(errors="replace")
        if parent_inode != pyfuse3.ROOT_INODE:
            raise SaveError(errno.ENOTDIR)
        if not valid_save_name(text):
            raise SaveError(errno.EINVAL, f"{text!r} is not a save name")
        if not stat.S_ISREG(mode):
            raise SaveError(errno.EPERM)
        h = Handle(text, bytearray(), dirty=True)
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = h
        return pyfuse3.FileInfo(fh=fh, direct_io=True), self._attrs(self.inodes.of(text))

    @fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        data = self._data(self._handles[fh])
        return bytes(data[off : off + size])

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self._handles[fh]
        data = self._data(h)
        end = off + len(buf)
        if end > len(data) and not self.folder.room_for(h.name, end):
            h.failed = errno.ENOSPC
            raise SaveError(errno.ENOSPC, f"{self.folder.called} is full: the save {h.name!r} does not fit")
        if off > len(data):
            data.extend(bytes(off - len(data)))
        data[off:end] = buf
        h.dirty = True
        return len(buf)

    @fuse_errors
    async def flush(self, fh: int) -> None:
        self._commit(self._handles[fh])  # close() reports what this raises

    @fuse_errors
    async def fsync(self, fh: int, datasync: int) -> None:
        self._commit(self._handles[fh])

    @fuse_errors
    async def release(self, fh: int) -> None:
        h = self._handles.pop(fh, None)
        if h is not None and h.dirty and not h.failed:
            try:
                self._commit(h)
            except SaveError as exc:  # nobody to tell but the log: flush already failed the same way
                log.warning("%s", exc)

    @fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self.folder.remove(name.decode(errors="replace"))

    @fuse_errors
    async def rename(
        self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes, flags: int, ctx: Any
    ) -> None:
        old, new = name_old.decode(errors="replace"), name_new.decode(errors="replace")
        if flags:
            raise SaveError(errno.EINVAL)
        if not valid_save_name(new):
            raise SaveError(errno.EINVAL, f"{new!r} is not a save name")
        for h in self._handles.values():  # an open, changed file goes to the card first
            if h.name == old:
                self._commit(h)
        self.folder.rename(old, new)
        self.inodes.rename(old, new)
        for h in self._handles.values():
            if h.name == old:
                h.name = new

    @fuse_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        raise SaveError(errno.EPERM)

    @fuse_errors
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = BLOCK
        s.f_blocks = self.folder.capacity // BLOCK
        s.f_bfree = s.f_bavail = self.folder.free // BLOCK
        s.f_files = len(self.folder.entries)
        s.f_ffree = s.f_favail = 256 - len(self.folder.entries)
        s.f_namemax = 64
        return s

    @fuse_errors
    async def access(self, inode: int, mode: int, ctx: Any) -> bool:
        return True

    @fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        if name != META_XATTR or inode == pyfuse3.ROOT_INODE:
            raise SaveError(errno.ENODATA)
        n = self.inodes.name(inode)
        h = self._open_handle(n)
        if h is not None and h.meta is not None:
            return h.meta
        entry = self.folder.entries.get(n)
        if entry is None or not entry.meta:
            raise SaveError(errno.ENODATA)
        return entry.meta

    @fuse_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        if name != META_XATTR:
            raise SaveError(errno.ENOTSUP)
        if len(value) > META_SIZE:
            raise SaveError(errno.E2BIG)
        n = self.inodes.name(inode)
        h = self._open_handle(n)
        if h is not None:
            h.meta, h.dirty = bytes(value), True
        else:
            self.folder.set_meta(n, bytes(value))

    @fuse_errors
    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        if inode == pyfuse3.ROOT_INODE:
            return []
        entry = self.folder.entries.get(self.inodes.name(inode))
        return [META_XATTR] if entry is not None and entry.meta else []


# -- running ----------------------------------------------------------------------------------------------


def serve(folder: SaveFolder, mountpoint: Path, *, ready: Callable[[], None]) -> None:
    """Mount the save folder and serve it until unmounted, SIGINT or SIGTERM."""
    serve_operations(SaveFS(folder), mountpoint, {"fsname=vhw-saves", "subtype=vhw-saves"}, ready=ready)
