"""The decrypting, read-only FUSE mount of a console's HDD (S31-S35): pyfuse3 + trio.

Layout of the mount: one folder per installed title (named by its title ID) holding the title's
original files and folders. The caller has already done S31-S34 (the card's Content-Gen-Key opens
on this console and HDD and its sealed Client ID and HDD-ID are theirs) and hands over the
:class:`~vhw.bindings.TitleBinding` the user's titles are encrypted under; titles bound otherwise
(another user's, or installed before a repair) are listed, but opening them fails with EACCES.

How it is arranged (after s3ql's ``fs.py``):

* :class:`Tree` is plain data: inodes, names, attributes, built once from the catalog (installed
  titles never change).
* :class:`OpenFile` reads a byte range of one file: it fetches the sealed chunks the range touches
  with one ``pread`` per contiguous run and decrypts them inline into one buffer, returning a
  memoryview of it (no further copy). A chunk that fails authentication gives EIO for that read
  and a log line naming the title, the file and the chunk; the mount stays up.
* :class:`TitleFS` has one thin async method per FUSE request, each wrapped by
  :func:`fuse_errors`, the one place where any exception becomes an errno: an exception escaping
  a pyfuse3 handler can hang or kill the mount.

Performance by design (../shared/PERFORMANCE-NOTES.md): every handler runs inline on the trio loop
(decrypting in a thread halves throughput), the kernel keeps its page cache (``keep_cache``) and
entries and attributes are cached for an hour, since titles are immutable once installed.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import signal
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyfuse3
import trio

from . import crypto
from .bindings import TitleBinding
from .devices.hdd import HddImage
from .errors import StateError
from .formats.hdd import Catalog, HddFile, Title

log = logging.getLogger(__name__)

CACHE_TIMEOUT = 3600.0  # seconds the kernel may trust entries and attributes: titles never change
BLOCK = 4096
# What stat() says on a mount whose process died: ENOTCONN, or ECONNABORTED on newer kernels.
DEAD_MOUNT = (errno.ENOTCONN, errno.ECONNABORTED)


@dataclass
class Node:
    inode: int
    parent: int
    name: bytes
    title: Title | None = None
    file: HddFile | None = None  # None: a folder
    children: dict[bytes, int] = field(default_factory=dict)
    readable: bool = True  # False: another card's title (listed, not readable)


class Tree:
    """The mount's directory tree, built from the catalog: plain data, no I/O."""

    def __init__(self, catalog: Catalog, bound_to: bytes):
        self.nodes: dict[int, Node] = {pyfuse3.ROOT_INODE: Node(pyfuse3.ROOT_INODE, pyfuse3.ROOT_INODE, b"")}
        self._next = pyfuse3.ROOT_INODE + 1
        for title in sorted(catalog.titles, key=lambda t: t.title_id):
            if not title.complete:
                continue  # an interrupted install is not a title yet
            mine = crypto.equal(title.bound_to, bound_to)
            top = self._add(pyfuse3.ROOT_INODE, title.title_id.encode(), title, None, mine)
            for f in title.files:
                parent = top
                parts = f.path.encode().split(b"/")
                for part in parts[:-1]:
                    node = self.nodes[parent]
                    parent = node.children.get(part) or self._add(parent, part, title, None, mine)
                self._add(parent, parts[-1], title, f, mine)

    def _add(self, parent: int, name: bytes, title: Title | None, f: HddFile | None, readable: bool) -> int:
        inode = self._next
        self._next += 1
        self.nodes[inode] = Node(inode, parent, name, title, f, readable=readable)
        self.nodes[parent].children[name] = inode
        return inode

    def attributes(self, inode: int) -> pyfuse3.EntryAttributes:
        node = self.nodes[inode]
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.generation = 0
        a.entry_timeout = CACHE_TIMEOUT
        a.attr_timeout = CACHE_TIMEOUT
        a.st_uid, a.st_gid = os.getuid(), os.getgid()
        stamp = (node.title.installed if node.title else 0) * 10**9
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = stamp
        a.st_blksize = BLOCK
        if node.file is None:
            a.st_mode = stat.S_IFDIR | (0o555 if node.readable else 0o111)
            a.st_nlink = 2 + sum(1 for c in node.children.values() if self.nodes[c].file is None)
            a.st_size = 0
        else:
            a.st_mode = stat.S_IFREG | ((0o555 if node.file.executable else 0o444) if node.readable else 0)
            a.st_nlink = 1
            a.st_size = node.file.size
        a.st_blocks = -(-a.st_size // 512)
        return a


class OpenFile:
    """One open file: reads decrypt exactly the chunks the range touches."""

    def __init__(self, fd: int, title: Title, f: HddFile, key: bytes):
        self.fd = fd
        self.title = title
        self.file = f
        self.cipher = crypto.ChunkCipher(key, f.stream_id, f.size)
        self.layout = self.cipher.layout

    def read(self, off: int, size: int) -> memoryview:
        chunks = self.layout.chunks_for(off, size)
        if not chunks:
            return memoryview(b"")
        cs = self.layout.chunk_size
        out = bytearray(len(chunks) * cs)
        pos = 0
        i = chunks.start
        while i < chunks.stop:
            # a run of chunks that lie one after the other on the image: one pread for all
            where = self.file.locate(self.layout.sealed_offset(i))
            j, length = i, 0
            while j < chunks.stop and self.file.locate(self.layout.sealed_offset(j)) == where + length:
                length += self.layout.sealed_length(j)
                j += 1
            sealed = memoryview(os.pread(self.fd, length, where))
            if len(sealed) != length:
                raise OSError(errno.EIO, "short read from the HDD image")
            at = 0
            for k in range(i, j):
                n = self.layout.sealed_length(k)
                try:
                    pos += self.cipher.open_into(k, sealed[at : at + n], memoryview(out)[pos:])
                except crypto.Invalid:
                    log.error("title %s, file %s: chunk %d failed authentication (damaged HDD); read refused",
                              self.title.title_id, self.file.path, k)
                    raise
                at += n
            i = j
        start = off - chunks.start * cs
        return memoryview(out)[start : start + min(size, self.file.size - off)]


def fuse_errors(handler):
    """The one place where exceptions become errnos. Nothing else may escape a handler."""

    @functools.wraps(handler)
    async def wrapper(*args, **kwargs):
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        except crypto.Invalid:
            raise pyfuse3.FUSEError(errno.EIO) from None
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("internal error in %s", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


class TitleFS(pyfuse3.Operations):
    """The FUSE request handlers: thin wrappers over :class:`Tree` and :class:`OpenFile`."""

    def __init__(self, image: HddImage, binding: TitleBinding):
        super().__init__()
        self.image = image
        self._binding = binding
        self.tree = Tree(image.volume.catalog, binding.owner)
        self._keys: dict[str, bytes] = {}
        self._open: dict[int, OpenFile] = {}
        self._next_fh = 1

    def _key(self, title: Title) -> bytes:
        if title.title_id not in self._keys:
            self._keys[title.title_id] = self._binding.title_key(title.title_id, title.key_salt)
        return self._keys[title.title_id]

    @fuse_errors
    async def lookup(self, parent_inode, name, ctx=None):
        node = self.tree.nodes[parent_inode]
        if name == b".":
            return self.tree.attributes(parent_inode)
        if name == b"..":
            return self.tree.attributes(node.parent)
        if name not in node.children:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.tree.attributes(node.children[name])

    @fuse_errors
    async def getattr(self, inode, ctx=None):
        return self.tree.attributes(inode)

    @fuse_errors
    async def opendir(self, inode, ctx):
        node = self.tree.nodes[inode]
        if node.file is not None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if not node.readable:
            raise pyfuse3.FUSEError(errno.EACCES)
        return inode

    @fuse_errors
    async def readdir(self, fh, start_id, token):
        node = self.tree.nodes[fh]
        entries = sorted(node.children.items())
        for index, (name, inode) in enumerate(entries[start_id:], start_id + 1):
            if not pyfuse3.readdir_reply(token, name, self.tree.attributes(inode), index):
                break

    @fuse_errors
    async def releasedir(self, fh):
        pass

    @fuse_errors
    async def open(self, inode, flags, ctx):
        node = self.tree.nodes[inode]
        if node.file is None:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        if not node.readable:  # another card's title: listed, never decrypted
            raise pyfuse3.FUSEError(errno.EACCES)
        fh = self._next_fh
        self._next_fh += 1
        self._open[fh] = OpenFile(self.image.fd, node.title, node.file, self._key(node.title))
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @fuse_errors
    async def read(self, fh, off, size):
        return self._open[fh].read(off, size)

    @fuse_errors
    async def release(self, fh):
        self._open.pop(fh, None)

    @fuse_errors
    async def access(self, inode, mode, ctx):
        node = self.tree.nodes[inode]
        if mode & os.W_OK:
            return False
        return node.readable or mode == os.F_OK

    @fuse_errors
    async def statfs(self, ctx):
        vol = self.image.volume
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = BLOCK
        s.f_blocks = vol.sb.nominal_size // BLOCK
        s.f_bfree = s.f_bavail = 0  # read-only
        s.f_files = len(self.tree.nodes)
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    @fuse_errors
    async def listxattr(self, inode, ctx):
        return []

    @fuse_errors
    async def getxattr(self, inode, name, ctx):
        raise pyfuse3.FUSEError(errno.ENODATA)


# -- running a mount ------------------------------------------------------------------------------


def clear_stale(mountpoint: Path) -> None:
    """A mount whose process died leaves a dead mount point behind: lift it."""
    try:
        os.stat(mountpoint)
    except OSError as exc:
        if exc.errno in DEAD_MOUNT:
            log.warning("%s: clearing a mount left by a process that died", mountpoint)
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
        else:
            raise StateError(f"{mountpoint}: cannot use as a mount point ({exc.strerror})") from None
    if os.path.ismount(mountpoint):
        raise StateError(f"{mountpoint} is already a mount point", hint="vhw console unmount it first")
    if not mountpoint.is_dir():
        raise StateError(f"{mountpoint} is not a folder")


def unmount(mountpoint: Path) -> None:
    proc = subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise StateError(f"{mountpoint}: cannot unmount ({proc.stderr.strip() or 'not mounted'})")


def serve(image: HddImage, mountpoint: Path, binding: TitleBinding, *, ready: Callable[[], None]) -> None:
    """Mount the titles and serve until unmounted, SIGINT or SIGTERM; always unmounts on the way out."""
    serve_operations(TitleFS(image, binding), mountpoint, {"fsname=vhw", "subtype=vhw", "ro"}, ready=ready)


def serve_operations(fs: pyfuse3.Operations, mountpoint: Path, options: set[str], *,
                     ready: Callable[[], None]) -> None:
    """Mount ``fs`` at ``mountpoint`` and serve it until unmounted, SIGINT, SIGTERM or SIGHUP;
    always unmounts on the way out (the title mount and the save folder both run this way)."""
    clear_stale(mountpoint)
    try:
        pyfuse3.init(fs, str(mountpoint), set(pyfuse3.default_options) | options)
    except RuntimeError as exc:
        raise StateError(f"{mountpoint}: cannot mount ({exc})") from None
    try:
        trio.run(_serve, ready)
    finally:
        pyfuse3.close(unmount=True)


async def _serve(ready: Callable[[], None]) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signals)
        ready()
        await pyfuse3.main()  # returns when the file system is unmounted or terminated
        nursery.cancel_scope.cancel()


async def _stop_on_signals() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for sig in signals:
            log.info("signal %d: unmounting", sig)
            pyfuse3.terminate()
            return
