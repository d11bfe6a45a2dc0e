"""File handling every device shares: reading with clear errors, atomic writes, locks.

* :func:`read_small` reads a whole small device file (ROM, card) or says in one line why it can't.
* :func:`atomic_write` writes a file so that it is either the old or the new one after a crash:
  a temporary file in the same folder, fsync, rename over, fsync the folder.
* :func:`apply_ops` is the executor of plans (:mod:`vhw.plans`): ``pwrite`` each Write, ``fsync``
  at each Sync.
* :func:`create_image` makes a new card or HDD image from its format plan, never over a file;
  :class:`OpenDevice` is what an open one shares (closing, one line for a failed write).
* :func:`locked` takes an exclusive ``flock`` on a device file, so two processes never write one
  device at once; the second is told who holds it, or waits when asked to. Locks die with their
  process, so a killed command never leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Self, TypeVar

from ..errors import FileError, ImageError, InUseError, NoSpaceError, PathError, VhwError
from ..plans import Op, Sync, Write
from . import holders

__all__ = [
    "atomic_write",
    "describe_os_error",
    "fsync_dir",
    "load_json",
    "locked",
    "now",
    "open_regular",
    "read_small",
    "refuse_existing",
    "refuse_other_console",
    "write_error",
]


T = TypeVar("T")
D = TypeVar("D")

MAX_SMALL = 16 * 1024 * 1024  # no ROM or card is near this; refuses to slurp a wrong, huge file


def describe_os_error(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "no such file"
    if exc.errno == errno.EISDIR:
        return "is a folder, not a device file"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.ENOSPC:
        return "no space left on the device holding it"
    return exc.strerror or str(exc)


def write_error(path: object, what: str, exc: OSError, *, kind: type[PathError] = ImageError) -> VhwError:
    """The error for a write of ``what`` that failed: a full disk is its own (:class:`NoSpaceError`,
    exit 8: free space and run the command again), anything else ``kind`` naming the file."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpaceError(
            f"{path}: the disk that holds it is full: cannot write {what}",
            hint="free space on that disk (`df` shows it), then run the command again",
        )
    return kind(path, f"cannot write {what}: {describe_os_error(exc)}")


def check_regular(path: Path, what: str) -> os.stat_result:
    try:
        st = path.stat()
    except OSError as exc:
        raise ImageError(path, f"cannot open {what}: {describe_os_error(exc)}") from None
    if not os.path.isfile(path):
        kind = "a folder" if path.is_dir() else "not a regular file"
        raise ImageError(path, f"is {kind}, not a {what}")
    return st


def open_regular(path: Path, flags: int, what: str, *, kind: type[PathError] = ImageError) -> int:
    """``os.open`` of a file read as ``what``, refused in one line unless it is a regular file.

    Opened without blocking (opening a FIFO to read waits for a writer, without a word), then
    checked on the descriptor itself, so that what was checked is what is read."""
    try:
        fd = os.open(path, flags | os.O_NONBLOCK)
    except OSError as exc:
        raise kind(path, f"cannot open {what}: {describe_os_error(exc)}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise kind(path, f"is {'a folder' if stat.S_ISDIR(mode) else 'not a regular file'}, not a {what}")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_small(path: Path, what: str, *, limit: int = MAX_SMALL, kind: type[PathError] = ImageError) -> bytes:
    """The whole of a small regular file read as ``what``; one line naming it otherwise."""
    fd = open_regular(path, os.O_RDONLY, what, kind=kind)
    try:
        chunks, total = [], 0
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
            if total > limit:
                raise kind(path, f"not a {what} (far too large: over {limit} bytes)")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise kind(path, f"cannot read {what}: {describe_os_error(exc)}") from None
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600, size: int | None = None) -> None:
    """Replace ``path`` by ``data`` all at once; ``size`` extends it sparsely. Owner-only unless
    told otherwise: device files hold secrets (a ROM its console's, a card its MC-Key)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    tmp = parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if size is not None:
                os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise write_error(path, "it", exc) from None
    fsync_dir(parent)


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot fsync a folder; the rename stands
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def refuse_existing(path: Path, what: str) -> None:
    """New devices are never made over an existing file (it could be someone's HDD)."""
    if path.exists() or path.is_symlink():
        raise ImageError(path, f"already exists; refusing to overwrite it with a new {what}")


def refuse_other_console(path: Path, what: str, *, note_at: Path | None = None) -> None:
    """Refuse at once, naming it, a device that a process acting for another console folder holds
    (:mod:`vhw.devices.holders`): a device belongs to one console at a time."""
    other = holders.other_console(note_at or path)
    if other is not None:
        raise InUseError(
            f"{path}: {what} is in use by {other}",
            hint="a device belongs to one console at a time: stop what uses it there first",
        )


@contextlib.contextmanager
def locked(
    fd: int,
    path: Path,
    what: str,
    *,
    shared: bool = False,
    wait: bool = False,
    on_wait: Callable[[str], None] | None = None,
    note_at: Path | None = None,
) -> Iterator[None]:
    """Hold a ``flock`` on ``fd`` (the lock of the file ``path``) for the block, noted as this
    process's (:mod:`vhw.devices.holders`) beside ``note_at`` (default: ``path``).

    Without ``wait``, a lock held elsewhere is refused at once (:class:`InUseError`), naming who
    holds it: the console folder it acts for, what it does and its PID (and a file that another
    console folder holds is refused even where a shared lock would be granted: a device belongs to
    one console at a time). With ``wait``, ``on_wait`` is told at once what it waits for and who
    holds it, and the call blocks until the lock is free.
    """
    note_at = note_at or path
    if not wait:
        refuse_other_console(path, what, note_at=note_at)
    op = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        fcntl.flock(fd, op | fcntl.LOCK_NB)
    except BlockingIOError:
        held_by = holders.describe(note_at)
        if not wait:
            raise InUseError(
                f"{path}: {what} is in use by {held_by}",
                hint="wait for it to finish (or pass --wait)",
            ) from None
        if on_wait:
            on_wait(f"{path}: {what} is in use by {held_by}; waiting for it (Ctrl-C stops waiting)")
        fcntl.flock(fd, op)
    try:
        with holders.noted(note_at):
            yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def now() -> int:
    return int(time.time())


def apply_op(fd: int, op: Op) -> None:
    if isinstance(op, Write):
        view = memoryview(op.data)
        offset = op.offset
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n
    else:
        assert isinstance(op, Sync)
        os.fsync(fd)


def apply_ops(fd: int, ops: Iterable[Op]) -> None:
    for op in ops:
        apply_op(fd, op)


def create_image(path: Path, size: int, ops: Iterable[Op], what: str) -> None:
    """Make a new device image (a card, an HDD): a sparse file of ``size`` bytes that a format
    plan has written, all at once (a temporary file renamed into place), never over an existing
    file. Owner-only: it holds the device's secret."""
    path = Path(path)
    refuse_existing(path, what)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size)  # sparse: holds only what is written
            apply_ops(fd, ops)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(path, what, exc) from None
    fsync_dir(path.parent)


class OpenDevice:
    """An open device image: its descriptor and what closes it (locks, the descriptor), as a context
    manager; writes that fail say so in one line naming the device."""

    what = "device"

    def __init__(self, shown: object, fd: int, stack: contextlib.ExitStack):
        self.shown = shown  # how messages name it
        self._fd = fd
        self._stack = stack

    def close(self) -> None:
        self._stack.close()
        self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except OSError as exc:
            raise write_error(self.shown, self.what, exc) from None


def _record_problem(exc: Exception) -> str:
    """What is wrong with a JSON record, in its file's words (its keys), not the class's."""
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    if isinstance(exc, TypeError):
        if m := re.search(r"unexpected keyword argument '(\w+)'", text):
            return f"a key {m.group(1)!r} it does not have"
        if m := re.search(r"missing \d+ required \w+ arguments?: (.*)", text):
            return f"without {m.group(1).replace(' and ', ', ')}"
        if "argument after ** must be a mapping" in text:
            return "not a JSON object"
    return text


def load_json(cls: Callable[..., D], path: Path, what: str, check: Callable[[D], None] = lambda _: None) -> D:
    """A record vhw keeps as a JSON file (a console's set-up, a credential, a configuration), made
    with ``cls`` from its keys and checked by ``check`` (a ValueError: not what vhw wrote). One line
    naming the file when it cannot be read or is not one; never a traceback."""
    try:
        record = cls(**json.loads(read_small(Path(path), what, kind=FileError)))
        check(record)
    except (ValueError, TypeError) as exc:
        detail = _record_problem(exc)
        raise FileError(path, f"not a {what}" + (f" ({detail})" if detail else "")) from None
    return record
