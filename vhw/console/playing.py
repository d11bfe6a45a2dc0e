"""Playing a title, S35: its entry point run from the mount (mounted for the time being if it is
not up), in its sandbox (:mod:`vhw.console.sandbox`), with a save folder on a card, for as long as
the cards it depends on stay in their slots."""

from __future__ import annotations

import contextlib
import json
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from .. import crypto
from ..bindings import title_tag
from ..devices.hdd import HddImage
from ..errors import IntegrityError, ReproductionNotPermitted, StateError
from ..formats.common import valid_relpath
from ..formats.hdd import Title
from . import decisions, processes, sandbox
from .mountpoints import unmount
from .slots import WATCH_INTERVAL, CardMemory

__all__ = ["Playing"]


class Console(Protocol):
    """What playing asks of the console it runs on."""

    root: Path

    @property
    def hdd_path(self) -> Path: ...

    @property
    def mounts(self) -> processes.MountTable: ...

    def reproduction_key(self, slot: str = "1") -> decisions.Match: ...

    def active_mount(self) -> Path | None: ...

    def mount(self, mountpoint: Path, slot: str = "1", *, checked: bool = False) -> int: ...

    def unmount(self, mountpoint: Path) -> None: ...

    def card(self, slot: str = "1") -> CardMemory: ...

    def has_card(self, slot: str = "1") -> bool: ...

    def card_view(self, slot: str = "1") -> decisions.CardView | None: ...

    def card_watch(self, slot: str, view: decisions.CardView | None) -> Callable[[], str | None] | None: ...

    def log(self, message: str) -> None: ...


class Playing:
    def __init__(self, console: Console):
        self.console = console

    def run(self, title_id: str, args: list[str], slot: str = "1", *, save_slot: str | None = None) -> int:
        """S35: run the title's entry point from the mount (mounting it for the time being), in
        its sandbox (:mod:`vhw.console.sandbox`), with a save folder on the card in ``save_slot``
        (default: the same slot). Returns the title's exit code; a read of the title that failed
        authentication is reported and fails the play, even when the title went on."""
        title_id = title_id.upper()
        match = self.console.reproduction_key(slot)  # S31-S34 first: without the right card, nothing else is told
        with HddImage.open(self.console.hdd_path) as img:
            title = img.volume.catalog.title(title_id)
        if title is None or not title.complete:
            raise StateError(f"{title_id} is not installed on this console's HDD", hint="vhw hdd ls")
        if not title.entry:
            raise StateError(f"{title_id} has no entry point to run")
        if not crypto.equal(title.bound_to, match.binding.owner):
            if crypto.equal(title.owner, match.owner):  # this user's, bound to devices since exchanged
                raise ReproductionNotPermitted(
                    hint=f"{title_id} was installed before a repair of this console or"
                    " HDD: install it again from its disc (`vhw console install`)"
                )
            raise ReproductionNotPermitted()  # another card's title on a shared HDD
        meta = self._checked_entry(title, match)
        runner = sandbox.bwrap()
        where = self.console.active_mount()
        temporary = None
        if where is None:
            temporary = Path(tempfile.mkdtemp(prefix="vhw-play-"))
            self.console.mount(temporary, slot, checked=True)
            where = temporary
        log_path = self.console.root / "mount.log"
        seen = log_path.stat().st_size if log_path.exists() else 0
        try:
            title_dir = where / title_id
            entry = (title_dir / title.entry).resolve()
            if not entry.is_relative_to(title_dir.resolve()) or not entry.is_file():
                raise IntegrityError(self.console.hdd_path, f"{title_id}: its entry point is not a file of the title")
            with self.save_folder(title_id, save_slot or slot) as saves:
                if meta.get("network") is True:
                    self.console.log(f"{title_id} asks for the network; titles run without it")
                cmd = sandbox.command(
                    title_dir=title_dir,
                    entry=title.entry,
                    args=args,
                    saves=saves,
                    saves_on=self.console.card(save_slot or slot).called if saves is not None else "the memory card",
                    title_id=title_id,
                    kind=title.kind,
                )
                code = self._run_title(title_id, cmd, runner, self._play_watches(slot, save_slot or slot))
        finally:
            failed = _read_errors(log_path, seen, title_id)
            if temporary is not None:
                self._lift(temporary)
                temporary.rmdir()
        if failed:
            raise IntegrityError(
                self.console.hdd_path,
                f"{failed[0]} (the title ended with exit code {code})",
                hint="`vhw hdd fsck --deep` checks the HDD; install the title again from its disc",
            )
        return code

    def _play_watches(self, *slots: str) -> list[Callable[[], str | None]]:
        """What tells that a card the title reads its keys or writes its saves with has left."""
        watches = []
        for slot in dict.fromkeys(slots):
            watch = self.console.card_watch(slot, self.console.card_view(slot)) if self.console.has_card(slot) else None
            if watch is not None:
                watches.append(watch)
        return watches

    def _run_title(
        self, title_id: str, cmd: sandbox.Sandbox, runner: str, watches: list[Callable[[], str | None]]
    ) -> int:
        """Run the title until it ends; its exit status. If a card it depends on leaves meanwhile,
        the title is stopped at once and play says so (its saves until then are on the card)."""
        with sandbox.start(cmd, bwrap_path=runner) as proc:
            while True:
                try:
                    code = proc.wait(timeout=WATCH_INTERVAL)
                except subprocess.TimeoutExpired:
                    code = None
                reason = next((r for r in (w() for w in watches) if r), None)
                if reason:  # (also when the title ended first: a save it tried after was refused)
                    if code is None:
                        proc.kill()  # (bubblewrap takes the title with it: --die-with-parent)
                        proc.wait()
                    ended = "it was stopped" if code is None else f"it ended (status {code})"
                    raise StateError(
                        f"{reason} while {title_id} was playing: {ended}",
                        hint="what it saved before is on the card; put the card back and play again",
                    )
                if code is not None:
                    return code

    def _lift(self, mountpoint: Path) -> None:
        """Unmount a mount of this console's, whether it is still up or has ended itself (a mount
        ends when its card leaves)."""
        try:
            self.console.unmount(mountpoint)
        except StateError:
            pid = self.console.mounts.remove(Path(mountpoint).resolve())
            if pid:
                processes.wait_gone(pid)

    def _checked_entry(self, title: Title, match: decisions.Match) -> dict[str, Any]:
        """The title's metadata, once its catalog entry is shown to be the one its owner
        installed: entry point, kind, metadata and digest authenticated under the title's key (a
        second user of the HDD can rewrite the catalog, not this tag), the entry a path inside
        the title."""
        key = match.binding.title_key(title.title_id, title.key_salt)
        tag = title_tag(key, title.title_id, title.entry, title.kind, title.title_digest, title.metadata)
        if (
            not crypto.equal(tag, title.entry_tag)
            or not valid_relpath(title.entry)
            or not any(f.path == title.entry for f in title.files)
        ):
            raise IntegrityError(
                self.console.hdd_path,
                f"the catalog entry of {title.title_id} was modified (it names another entry point than its disc did)",
                hint="install the title again from its disc",
            )
        try:
            meta = json.loads(title.metadata)
        except ValueError:
            meta = None
        return meta if isinstance(meta, dict) else {}

    @contextlib.contextmanager
    def save_folder(self, title_id: str, slot: str) -> Iterator[Path | None]:
        """The running title's save folder for as long as the block runs (None: no card to save
        on, which the user is told). Afterwards the user is told of every save that failed."""
        if not self.console.has_card(slot):
            self.console.log(f"no memory card in slot {slot}: {title_id} runs, but cannot save its progress")
            yield None
            return
        where = Path(tempfile.mkdtemp(prefix="vhw-saves-"))
        log_path = where.with_name(where.name + ".log")
        try:
            proc = processes.spawn(
                ["console", "saves-mount", str(where), "--title", title_id, "--slot", slot],
                self.console.root,
                where,
                log_path,
                tell=self.console.log,
            )
        except BaseException:
            where.rmdir()
            log_path.unlink(missing_ok=True)
            raise
        try:
            yield where
        finally:
            try:
                unmount(where)
            except StateError:  # its process died (it was killed): lift what it left behind
                subprocess.run(["fusermount3", "-u", "-z", str(where)], capture_output=True)
            proc.wait(30)
            where.rmdir()
            told = [
                line.split(": ", 1)[-1]
                for line in log_path.read_text(errors="replace").splitlines()
                if line.startswith(("WARNING", "ERROR"))
            ]  # a save that did not fit, or a damaged one
            for line in dict.fromkeys(told):
                self.console.log("vhw: " + line)
            log_path.unlink(missing_ok=True)


def _read_errors(log_path: Path, since: int, title_id: str) -> list[str]:
    """What the mount logged, since ``since``, of reads of ``title_id`` that failed authentication."""
    try:
        with open(log_path, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    return [
        line.split(": ", 1)[-1]
        for line in text.splitlines()
        if line.startswith("ERROR") and f"title {title_id}," in line
    ]
