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

Performance by design (measured on this kind of machine, see README's table and
``tools/bench.py``):

* every handler runs inline on the trio loop (decrypting in a thread per request cost more than
  it saved: the thread hand-off per 128 KiB request doubled the CPU per byte, and random 4 KiB
  misses served in four worker threads ran at 0.57× of inline with one reader and gained nothing
  with eight);
* decryption reuses per-thread buffers: a fresh buffer per read cost a page fault per 4 KiB, more
  than the decryption itself;
* sequential readers get 1 MiB requests: the mount raises its readahead to 1 MiB
  (:func:`raise_readahead`, root only), so a gigabyte costs ~1,000 requests instead of ~8,000;
* a random 4 KiB read decrypts its whole 64 KiB chunk and answers the 4 KiB asked for; the rest
  is not pushed into the kernel's page cache (``notify_store`` from a worker thread, as an earlier
  version did: on two cores it competed with the readers, and misses ran at 0.77× with one reader
  and 0.61× with eight, for 8% more on random reads that often fall in a chunk read before);
* the kernel keeps its page cache between opens (``keep_cache``) and entries and attributes are
  cached for an hour, since titles are immutable once installed.

Keys leave with the card (S31-S34 hold only while the card is in): the mount watches the slot
(:func:`serve`'s ``watch``, polled every :data:`WATCH_INTERVAL`); when the card is ejected, moved
away or replaced by another, it drops every key, makes every node unreadable, has the kernel drop
its cached pages and attributes of the titles, and unmounts, saying why in its log. A file opened
after that finds no mount; one held open reads nothing more.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import signal
import stat
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import pyfuse3
import trio

from .. import crypto
from ..bindings import TitleBinding
from ..devices.hdd import HddImage
from ..errors import StateError
from ..formats.hdd import Catalog, HddFile, Title
from .mountpoints import clear_stale, mount_fields

log = logging.getLogger(__name__)

CACHE_TIMEOUT = 3600.0  # seconds the kernel may trust entries and attributes: titles never change
WATCH_INTERVAL = 0.2  # seconds between looks at the card slot: keys are gone well within a second
BLOCK = 4096


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

    def __init__(self, fd: int, inode: int, title: Title, f: HddFile, key: bytes):
        self.fd = fd
        self.inode = inode
        self.title = title
        self.file = f
        self.cipher = crypto.ChunkCipher(key, f.stream_id, f.size)
        self.layout = self.cipher.layout

    def decrypt(self, chunks: range) -> memoryview:
        """The plaintext of these chunks, one after the other, in this thread's scratch buffer:
        valid until this thread decrypts again. Safe to call from any thread.

        Every buffer is reused (:data:`_scratch`): a fresh 1 MiB buffer per read costs a page fault
        per 4 KiB the first time it is touched, which cost more than the decryption (measured: 1 GiB
        decrypted from the page cache at 0.7-1.0 GiB/s with fresh buffers, 2.6-3.6 GiB/s reused).
        """
        layout = self.layout
        sealed, out = _scratch(len(chunks) * (layout.chunk_size + crypto.TAG_SIZE), len(chunks) * layout.chunk_size)
        pos = 0
        i = chunks.start
        while i < chunks.stop:
            # a run of chunks that lie one after the other on the image: one pread for all
            where = self.file.locate(layout.sealed_offset(i))
            j, length = i, 0
            while j < chunks.stop and self.file.locate(layout.sealed_offset(j)) == where + length:
                length += layout.sealed_length(j)
                j += 1
            if os.preadv(self.fd, [sealed[:length]], where) != length:
                raise OSError(errno.EIO, "short read from the HDD image")
            at = 0
            for k in range(i, j):
                n = layout.sealed_length(k)
                try:
                    pos += self.cipher.open_into(k, sealed[at : at + n], out[pos:])
                except crypto.Invalid:
                    log.error(
                        "title %s, file %s: chunk %d failed authentication (damaged HDD); read refused",
                        self.title.title_id,
                        self.file.path,
                        k,
                    )
                    raise
                at += n
            i = j
        return out[:pos]

    def read(self, off: int, size: int) -> memoryview:
        """Bytes [off, off + size), in this thread's scratch buffer (the loop replies before it
        reads again)."""
        chunks = self.layout.chunks_for(off, size)
        if not chunks:
            return memoryview(b"")
        plain = self.decrypt(chunks)
        start = off - chunks.start * self.layout.chunk_size
        return plain[start : start + min(size, self.file.size - off)]


_local = threading.local()


def _scratch(sealed_size: int, plain_size: int) -> tuple[memoryview, memoryview]:
    """This thread's reusable buffers for sealed and plain chunks, at least this large."""
    have = getattr(_local, "buffers", None)
    if have is None or len(have[0]) < sealed_size or len(have[1]) < plain_size:
        big = max(sealed_size, 16 * (crypto.CHUNK_SIZE + crypto.TAG_SIZE))
        have = (memoryview(bytearray(big)), memoryview(bytearray(max(plain_size, 16 * crypto.CHUNK_SIZE))))
        _local.buffers = have
    return have


def raise_readahead(mountpoint: Path, kib: int = 1024) -> None:
    """Let the kernel read ahead ``kib`` KiB of a sequentially read file, in requests of up to
    1 MiB (FUSE's max_pages): with the default 128 KiB, a sequential reader costs the mount a
    request per 128 KiB, and the mount is CPU-bound. Measured cold over 1 GiB: 0.6-1.1 GB/s with
    128 KiB, 1.0-1.3 GB/s with 1 MiB (fio, which asks for sequential readahead and so doubles the
    window: 1.3-1.4), and less again with 2 and 4 MiB (0.7-1.0 with fio), against 1.0-1.6 GB/s
    for the plain file. The knob is the mount's backing device info in sysfs, which only root
    may change; others keep the default."""
    # Run beside the loop: the stat is answered by the loop once it serves, which completes
    # FUSE's INIT (that caps readahead at 128 KiB); only then does the new value hold.
    try:
        os.stat(mountpoint)
        fields = mount_fields(mountpoint)
        if fields:
            Path(f"/sys/class/bdi/{fields[2]}/read_ahead_kb").write_text(f"{kib}\n")
    except OSError as exc:
        log.debug("%s: readahead left at the default (%s)", mountpoint, exc.strerror)


Handler = Callable[..., Awaitable[Any]]
H = TypeVar("H", bound=Handler)


def errno_guard(translate: Callable[[Exception], int | None], logger: logging.Logger) -> Callable[[H], H]:
    """A decorator for FUSE handlers, the one place where exceptions become errnos: ``translate``
    gives the errno of the exceptions a file system knows (None: not one of them), an OSError keeps
    its own, anything else is logged as an internal error and becomes EIO. Nothing else escapes."""

    def decorate(handler: H) -> H:
        @functools.wraps(handler)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return await handler(*args, **kwargs)
            except pyfuse3.FUSEError:
                raise
            except Exception as exc:
                code = translate(exc)
                if code is None and isinstance(exc, OSError):
                    code = exc.errno or errno.EIO
                if code is None:
                    logger.exception("internal error in %s", handler.__name__)
                    code = errno.EIO
                raise pyfuse3.FUSEError(code) from None

        return cast(H, wrapper)

    return decorate


def _title_errno(exc: Exception) -> int | None:
    if isinstance(exc, KeyError):
        return errno.ENOENT
    if isinstance(exc, crypto.Invalid):
        return errno.EIO
    return None


fuse_errors = errno_guard(_title_errno, log)


class TitleFS(pyfuse3.Operations):
    """The FUSE request handlers: thin wrappers over :class:`Tree` and :class:`OpenFile`."""

    def __init__(self, image: HddImage, binding: TitleBinding):
        super().__init__()
        self.image = image
        self._binding: TitleBinding | None = binding
        self.tree = Tree(image.volume.catalog, binding.owner)
        self._keys: dict[str, bytes] = {}
        self._open: dict[int, OpenFile] = {}
        self._next_fh = 1

    def _key(self, title: Title) -> bytes:
        if self._binding is None:
            raise pyfuse3.FUSEError(errno.EACCES)
        if title.title_id not in self._keys:
            self._keys[title.title_id] = self._binding.title_key(title.title_id, title.key_salt)
        return self._keys[title.title_id]

    @property
    def revoked(self) -> bool:
        return self._binding is None

    def revoke(self) -> None:
        """The card left: forget every key (the binding, the titles' keys, the open files'
        ciphers) and refuse every open and read from now on. Runs on the loop, between requests."""
        self._binding = None
        self._keys.clear()
        self._open.clear()
        for node in self.tree.nodes.values():
            if node.inode != pyfuse3.ROOT_INODE:
                node.readable = False

    def invalidate_all(self) -> None:
        """Have the kernel drop its cached pages, attributes and entries of every title (from a
        worker thread: the kernel asks the loop while it invalidates)."""
        for node in self.tree.nodes.values():
            try:
                pyfuse3.invalidate_inode(node.inode, attr_only=False)
            except OSError as exc:  # ENOENT: the kernel never looked this one up
                log.debug("invalidate %d: %s", node.inode, exc)

    @fuse_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        node = self.tree.nodes[parent_inode]
        if name == b".":
            return self.tree.attributes(parent_inode)
        if name == b"..":
            return self.tree.attributes(node.parent)
        if name not in node.children:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.tree.attributes(node.children[name])

    @fuse_errors
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self.tree.attributes(inode)

    @fuse_errors
    async def opendir(self, inode: int, ctx: Any) -> int:
        node = self.tree.nodes[inode]
        if node.file is not None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if not node.readable:
            raise pyfuse3.FUSEError(errno.EACCES)
        return inode

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        node = self.tree.nodes[fh]
        entries = sorted(node.children.items())
        for index, (name, inode) in enumerate(entries[start_id:], start_id + 1):
            if not pyfuse3.readdir_reply(token, name, self.tree.attributes(inode), index):
                break

    @fuse_errors
    async def releasedir(self, fh: int) -> None:
        pass

    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        node = self.tree.nodes[inode]
        if node.file is None:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        if not node.readable:  # another card's title: listed, never decrypted
            raise pyfuse3.FUSEError(errno.EACCES)
        fh = self._next_fh
        self._next_fh += 1
        assert node.title is not None  # every file lies in a title
        self._open[fh] = OpenFile(self.image.fd, inode, node.title, node.file, self._key(node.title))
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @fuse_errors
    # a memoryview saves a copy per read (pyfuse3 takes any buffer; its stub says bytes)
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:  # type: ignore[override]
        if self._binding is None:
            raise pyfuse3.FUSEError(errno.EACCES)
        return self._open[fh].read(off, size)

    @fuse_errors
    async def release(self, fh: int) -> None:
        self._open.pop(fh, None)

    @fuse_errors
    async def access(self, inode: int, mode: int, ctx: Any) -> bool:
        node = self.tree.nodes[inode]
        if mode & os.W_OK:
            return False
        return node.readable or mode == os.F_OK

    @fuse_errors
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
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
    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        return []

    @fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        raise pyfuse3.FUSEError(errno.ENODATA)


# -- running a mount ------------------------------------------------------------------------------


def serve(
    image: HddImage,
    mountpoint: Path,
    binding: TitleBinding,
    *,
    ready: Callable[[], None],
    watch: Callable[[], str | None] | None = None,
) -> None:
    """Mount the titles and serve until unmounted, SIGINT or SIGTERM; always unmounts on the way out.
    ``watch`` says why the keys must go (the card left its slot), or None while they may stay."""
    fs = TitleFS(image, binding)

    def mounted() -> None:
        where = Path(os.path.abspath(mountpoint))  # (resolve() would stat the mount: not served yet)
        threading.Thread(target=raise_readahead, args=(where,), name="vhw-readahead", daemon=True).start()
        ready()

    tasks = [functools.partial(_watch_card, fs, watch)] if watch else []
    serve_operations(fs, mountpoint, {"fsname=vhw", "subtype=vhw", "ro"}, ready=mounted, tasks=tasks)


async def _watch_card(fs: TitleFS, watch: Callable[[], str | None]) -> None:
    """Poll the card slot; when the card is gone, drop the keys and the kernel's cached plaintext,
    then unmount."""
    while True:
        reason = await trio.to_thread.run_sync(watch)
        if reason:
            break
        await trio.sleep(WATCH_INTERVAL)
    fs.revoke()
    await trio.to_thread.run_sync(fs.invalidate_all)
    log.warning("%s: every key is dropped and the titles are unmounted", reason)
    pyfuse3.terminate()


def serve_operations(
    fs: pyfuse3.Operations,
    mountpoint: Path,
    options: set[str],
    *,
    ready: Callable[[], None],
    tasks: Sequence[Callable[[], Awaitable[object]]] | None = None,
) -> None:
    """Mount ``fs`` at ``mountpoint`` and serve it until unmounted, SIGINT, SIGTERM or SIGHUP;
    always unmounts on the way out (the title mount and the save folder both run this way)."""
    clear_stale(mountpoint)
    try:
        pyfuse3.init(fs, str(mountpoint), set(pyfuse3.default_options) | options)
    except RuntimeError as exc:
        raise StateError(f"{mountpoint}: cannot mount ({exc})") from None
    try:
        trio.run(_serve, ready, tasks or [])
    finally:
        pyfuse3.close(unmount=True)


async def _serve(ready: Callable[[], None], tasks: Sequence[Callable[[], Awaitable[object]]]) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signals)
        for task in tasks:
            nursery.start_soon(task)
        ready()
        await pyfuse3.main()  # returns when the file system is unmounted or terminated
        nursery.cancel_scope.cancel()


async def _stop_on_signals() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for sig in signals:
            log.info("signal %d: unmounting", sig)
            pyfuse3.terminate()
            return
