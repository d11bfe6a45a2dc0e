"""The decrypting, read-only FUSE mount of a console's HDD (S31-S35), served by compiled code.

Layout of the mount: one folder per installed title (named by its title ID) holding the title's
original files and folders. The caller has already done S31-S34 (the card's Content-Gen-Key opens
on this console and HDD and its sealed Client ID and HDD-ID are theirs) and hands over the
:class:`~vhw.bindings.TitleBinding` the user's titles are encrypted under; titles bound otherwise
(another user's, or installed before a repair) are listed, but opening them fails with EACCES.

Python keeps the brain: :class:`Tree` lays the catalog out as folders and files (plain data, no
I/O), :func:`serve` derives each readable file's stream key and hands the tree, the files' extents
and their keys to the compiled file system (:class:`vhw.datapath.TitleMount`), which serves every
request on its own threads (README, "Performance": why, and what a miss costs). A block that fails
authentication gives EIO for that read and a line in the log naming the title, the file and the
block; the mount stays up.

Keys leave with the card (S31-S34 hold only while the card is in): :func:`serve` watches the slot
every :data:`WATCH_INTERVAL`; when the card is ejected, moved away or replaced by another, the
compiled side wipes every key and refuses every open and read, the kernel drops its cached pages
and attributes of the titles, and the titles are unmounted, the log saying why. A file opened after
that finds no mount; one held open reads nothing more. SIGINT, SIGTERM and SIGHUP unmount too.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from .. import crypto
from ..bindings import TitleBinding
from ..datapath import MountFile, MountNode, TitleMount
from ..devices.hdd import HddImage
from ..formats.hdd import Catalog, HddFile, Title
from .mountpoints import clear_stale, raise_readahead
from .slots import WATCH_INTERVAL  # (keys are gone well within a second)

log = logging.getLogger(__name__)

OPTIONS = "ro,default_permissions,fsname=vhw,subtype=vhw"
ROOT = 1  # the root folder's inode
NO_KEY = crypto.StreamSecret(bytes(crypto.KEY_SIZE), b"")  # another user's file: never opened, no key


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
    """The mount's folders and files, built from the catalog: plain data, no I/O. Inodes count
    from the root (1) in the order nodes are made, so a node's parent always comes before it."""

    def __init__(self, catalog: Catalog, bound_to: bytes):
        self.nodes: dict[int, Node] = {ROOT: Node(ROOT, ROOT, b"")}
        for title in sorted(catalog.titles, key=lambda t: t.title_id):
            if not title.complete:
                continue  # an interrupted install is not a title yet
            mine = crypto.equal(title.bound_to, bound_to)
            top = self._add(ROOT, title.title_id.encode(), title, None, mine)
            for f in title.files:
                parent = top
                parts = f.path.encode().split(b"/")
                for part in parts[:-1]:
                    node = self.nodes[parent]
                    parent = node.children.get(part) or self._add(parent, part, title, None, mine)
                self._add(parent, parts[-1], title, f, mine)

    def _add(self, parent: int, name: bytes, title: Title | None, f: HddFile | None, readable: bool) -> int:
        inode = len(self.nodes) + 1
        self.nodes[inode] = Node(inode, parent, name, title, f, readable=readable)
        self.nodes[parent].children[name] = inode
        return inode

    def files(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.file is not None]


def mount_plan(tree: Tree, binding: TitleBinding) -> tuple[list[MountNode], list[MountFile]]:
    """What the compiled file system is handed: every node, and for every file its sizes, extents
    and stream secret (derived here; another user's files get none: they are never opened)."""
    keys: dict[str, bytes] = {}
    files: list[MountFile] = []
    index: dict[int, int] = {}
    for node in tree.files():
        assert node.file is not None and node.title is not None  # every file lies in a title
        t, f = node.title, node.file
        secret = NO_KEY
        if node.readable:
            if t.title_id not in keys:
                keys[t.title_id] = binding.title_key(t.title_id, t.key_salt)
            secret = f.cipher(keys[t.title_id]).secret
        index[node.inode] = len(files)
        files.append(MountFile(f.size, f.block_size, f.extents, secret, f"{t.title_id}, file {f.path}"))
    nodes = [
        MountNode(
            n.parent,
            n.name,
            index.get(n.inode, -1),
            (n.title.installed if n.title else 0) * 10**9,
            n.readable,
            bool(n.file and n.file.executable),
        )
        for n in tree.nodes.values()
    ]
    return nodes, files


def serve(
    image: HddImage,
    mountpoint: Path,
    binding: TitleBinding,
    *,
    ready: Callable[[], None],
    watch: Callable[[], str | None] | None = None,
) -> None:
    """Mount the titles and serve until unmounted, SIGINT, SIGTERM or SIGHUP; always unmounts on
    the way out. ``watch`` says why the keys must go (the card left its slot), or None while they
    may stay."""
    nodes, files = mount_plan(Tree(image.volume.catalog, binding.owner), binding)
    clear_stale(mountpoint)
    fs = TitleMount(image.fd, image.volume.sb.nominal_size, nodes, files)
    del files  # (the keys now live in the compiled side's locked memory)
    signalled: list[int] = []

    def on_signal(sig: int, frame: FrameType | None) -> None:
        signalled.append(sig)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        fs.start(str(mountpoint), OPTIONS)
        where = Path(os.path.abspath(mountpoint))  # (resolve() would stat the mount: served by now)
        threading.Thread(target=raise_readahead, args=(where,), name="vhw-readahead", daemon=True).start()
        ready()
        while not fs.wait(WATCH_INTERVAL):
            if signalled:
                log.info("signal %d: unmounting", signalled[0])
                break
            reason = watch() if watch else None
            if reason:
                fs.revoke()
                fs.invalidate()
                log.warning("%s: every key is dropped and the titles are unmounted", reason)
                break
    finally:
        fs.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
