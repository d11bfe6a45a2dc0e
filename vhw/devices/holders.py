"""Who holds a device file's lock: named, so that nobody waits without knowing for what.

A ``flock`` says that a file is locked, not by whom. So whoever takes a device file's lock (the
HDD's, a card's, a console folder's) also leaves a note beside it, in the folder
``.NAME.holders/`` next to the file (it stays, empty, when nobody holds it): one small JSON file
per process, with its PID, the console folder it acts for (if any) and what it does (``vhw
console mount``). Notes of processes that are gone are passed over (and removed by the next
holder). With them:

* a wait for a lock says at once who holds it: "in use by the console in /home/ann/console
  (vhw console mount, PID 4711)";
* a console folder that would use an HDD (or card) that another console folder holds is refused at
  once, naming that console: one device attached to two consoles is a mistake to show, not to
  wait for.

The process says who it acts for with :func:`act_for` (the CLI does, for each console command) or
:func:`acting_for`.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["act_for", "alive"]


@dataclass(frozen=True)
class Holder:
    pid: int
    console: str | None  # the console folder it acts for, or None
    doing: str  # what it does: "vhw console mount"

    def __str__(self) -> str:
        who = f"the console in {self.console}" if self.console else "another vhw process"
        return f"{who} ({self.doing}, PID {self.pid})"


_acting: contextvars.ContextVar[tuple[str | None, str] | None] = contextvars.ContextVar("vhw_acting", default=None)


def act_for(console: Path | None, doing: str) -> None:
    """From now on (in this thread), locks are noted as held for ``console`` (a folder, or None),
    doing ``doing``: the CLI says so as each command starts."""
    _acting.set((str(console) if console else None, doing))


@contextlib.contextmanager
def acting_for(console: Path | None, doing: str) -> Iterator[None]:
    """Locks taken in this block are noted as held for ``console`` (a folder), doing ``doing``."""
    token = _acting.set((str(console) if console else None, doing))
    try:
        yield
    finally:
        _acting.reset(token)


def me() -> Holder:
    acting = _acting.get()
    if acting is None:  # (not the vhw command: a program of its own using vhw's devices)
        return Holder(os.getpid(), None, " ".join([os.path.basename(sys.executable), *sys.argv[:2]])[:80])
    return Holder(os.getpid(), acting[0], acting[1])


def _folder(path: Path) -> Path:
    return path.parent / f".{path.name}.holders"  # (a console folder's: inside it, beside its .lock)


def holders(path: Path) -> list[Holder]:
    """The live processes that noted holding ``path``'s lock (this one's own note excluded)."""
    out = []
    try:
        notes = sorted(_folder(path).iterdir())
    except OSError:
        return []
    for note in notes:
        try:
            h = Holder(**json.loads(note.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if h.pid != os.getpid() and alive(h.pid):
            out.append(h)
    return out


def alive(pid: int) -> bool:
    """The process runs (a zombie, ended but not reaped, does not)."""
    import psutil  # (only a process that meets a holder's note needs it)

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


@contextlib.contextmanager
def noted(path: Path) -> Iterator[None]:
    """Note this process as holding ``path``'s lock for the block (best effort: a folder that cannot
    be written to just goes without notes)."""
    folder = _folder(path)
    note = folder / f"{os.getpid()}.json"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        for old in folder.iterdir():  # notes of processes that are gone
            if old.suffix == ".json" and old.stem.isdigit() and not alive(int(old.stem)):
                old.unlink(missing_ok=True)
        tmp = folder / f".{os.getpid()}.tmp"
        tmp.write_text(json.dumps(asdict(me())))
        os.replace(tmp, note)
    except OSError:
        pass
    try:
        yield
    finally:
        note.unlink(missing_ok=True)  # (the folder stays: another process may be noting itself in it)


def other_console(path: Path) -> Holder | None:
    """A live holder of ``path`` acting for another console folder than this process, if any."""
    mine = me().console
    if mine is None:
        return None
    return next((h for h in holders(path) if h.console and h.console != mine), None)


def describe(path: Path) -> str:
    found = holders(path)
    return ", ".join(map(str, found)) if found else "another vhw process"
