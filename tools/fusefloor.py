#!/usr/bin/env python3
"""The ceiling of a pyfuse3 + trio mount on this machine: one file served the way vhw's mount
serves a title, minus everything vhw adds (no keys, no catalog, no decryption).

    .venv/bin/python tools/fusefloor.py MODE BACKING MOUNTPOINT

Serves ``MOUNTPOINT/f.bin``, as large as the plain file BACKING, until unmounted (or SIGINT or
SIGTERM), with the vhw mount's options (read-only, ``keep_cache``, attributes trusted for an hour,
1 MiB readahead). Each read request is answered by MODE:

* ``memory``: bytes from memory, no disk: what pyfuse3, trio and the kernel's FUSE round trip
  cost per request;
* ``pread-4k``: one ``pread`` of exactly the bytes asked for, from BACKING: the least a miss can
  read (gocryptfs reads a 4 KiB block plus its 32 bytes);
* ``pread-chunk``: one ``pread`` of the whole 64 KiB + 16 byte sealed chunks the request touches,
  at the offsets a vhw HDD keeps them (chunk *i* at *i* x 65,552 bytes): the disk work of vhw's
  miss, without decrypting it.

`tools/bench.py` runs fio's misses-only rows against each mode, beside the vhw mount and
gocryptfs, so the table shows how much of a miss is the stack's and the disk's, and how much is
vhw's (decryption and its own request handling). It prints the request sizes the kernel asked for
on its way out (one line to stderr).
"""

from __future__ import annotations

import collections
import errno
import os
import stat
import sys
import threading
from pathlib import Path
from typing import Any

import pyfuse3

from vhw import crypto
from vhw.console.fuseloop import serve_operations
from vhw.console.mountpoints import raise_readahead
from vhw.errors import StateError

CHUNK = crypto.CHUNK_SIZE
SEALED = CHUNK + crypto.TAG_SIZE  # a chunk and its GCM tag, as on a vhw HDD
MODES = ("memory", "pread-4k", "pread-chunk")
FILE = b"f.bin"


class FloorFS(pyfuse3.Operations):
    def __init__(self, mode: str, backing: Path):
        super().__init__()
        self.mode = mode
        self.fd = os.open(backing, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size
        self.buffer = memoryview(bytearray(16 * SEALED + (1 << 20)))
        self.sizes: collections.Counter[int] = collections.Counter()

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.entry_timeout = a.attr_timeout = 3600
        a.st_blksize = 4096
        if inode == pyfuse3.ROOT_INODE:
            a.st_mode, a.st_nlink = stat.S_IFDIR | 0o555, 2
        else:
            a.st_mode, a.st_nlink, a.st_size = stat.S_IFREG | 0o444, 1, self.size
        return a

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        if parent_inode != pyfuse3.ROOT_INODE or name != FILE:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self.getattr(pyfuse3.ROOT_INODE + 1)

    async def opendir(self, inode: int, ctx: Any) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        if start_id == 0:
            pyfuse3.readdir_reply(token, FILE, await self.getattr(pyfuse3.ROOT_INODE + 1), 1)

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> memoryview:  # type: ignore[override]
        self.sizes[size] += 1
        size = max(0, min(size, self.size - off))
        if self.mode == "memory":
            return self.buffer[:size]
        if self.mode == "pread-4k":
            return self.buffer[: os.preadv(self.fd, [self.buffer[:size]], off)]
        first, last = off // CHUNK, (off + size - 1) // CHUNK
        length = (last - first + 1) * SEALED
        os.preadv(self.fd, [self.buffer[:length]], max(0, min(first * SEALED, self.size - length)))
        return self.buffer[off - first * CHUNK : off - first * CHUNK + size]

    async def release(self, fh: int) -> None:
        pass


def main() -> int:
    if len(sys.argv) != 4 or sys.argv[1] not in MODES:
        print(f"usage: fusefloor.py {{{','.join(MODES)}}} BACKING MOUNTPOINT", file=sys.stderr)
        return 2
    mode, backing, mountpoint = sys.argv[1], Path(sys.argv[2]), Path(os.path.abspath(sys.argv[3]))

    def ready() -> None:  # as vhw's mount does once it serves
        threading.Thread(target=raise_readahead, args=(mountpoint,), daemon=True).start()

    try:
        fs = FloorFS(mode, backing)
        serve_operations(fs, mountpoint, {"fsname=fusefloor", "ro"}, ready=ready)
    except OSError as exc:
        print(f"fusefloor.py: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    except StateError as exc:
        print(f"fusefloor.py: {exc}", file=sys.stderr)
        return 1
    print(f"fusefloor {mode}: request sizes {dict(fs.sizes.most_common(4))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
