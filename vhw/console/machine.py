"""The emulated console and the flows that run on it (the patent's), each a thin shell around
:mod:`vhw.console.decisions` (what the console decides), :mod:`vhw.client` (the modem) and the
device files. Its folder, slots and tray are :mod:`vhw.console.slots`; the processes it starts
(its mounts) :mod:`vhw.console.processes`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .. import crypto
from .. import protocol as p
from ..bindings import DeviceSecrets, title_tag
from ..devices import card as card_dev
from ..devices.card import CardImage
from ..devices.disc import DiscImage
from ..devices.files import now, refuse_other_console
from ..devices.hdd import HddImage
from ..devices.holders import alive
from ..errors import FileError, ImageError, IntegrityError, NoSpaceError, ReproductionNotPermitted, StateError
from ..formats.card import Card, License
from ..formats.common import valid_relpath
from ..formats.disc import Pressing
from ..formats.hdd import Title
from ..formats.rom import Rom
from ..ids import Id, IdKind
from . import decisions, install, processes, sandbox
from .mountpoints import clear_stale, unmount
from .slots import SLOTS, WATCH_INTERVAL, CardMemory, ConsoleConfig, ConsoleFolder

__all__ = ["CardMemory", "ConsoleConfig", "Machine", "SLOTS", "check_disc_is_registered", "disc_medium", "hardware"]


class Machine(ConsoleFolder):
    """A console: its folder (:class:`~vhw.console.slots.ConsoleFolder`) and the flows."""

    @property
    def mounts(self) -> processes.MountTable:
        return processes.MountTable(self.root / "mounts.json")

    # -- flows -------------------------------------------------------------------------------------------

    def register(self, slot: str = "1") -> Id:
        """User registration, S1-S7: returns the User ID (stored wrapped on the card)."""
        with self.busy():
            rom, hdd_id = self.rom(), self.hdd_id()
            with self.card(slot).transaction() as img:
                req = decisions.registration_request(img.card, rom.client_id, hdd_id)
                with self.client(rom) as c:  # S1: connect
                    resp = c.call("/v1/console/register", req, p.RegisterResponse)
                card, user = decisions.accept_registration(img.card, resp)
                img.save_card(card)  # S6
        return user

    def acquire(self, slot: str = "1") -> tuple[str, Id]:
        """MID registration and key acquisition, S11-S17: the keys end up on the card."""
        with self.busy():
            rom = self.rom()
            with HddImage.open(self.hdd_path) as img:
                hw = hardware(rom, img)
            with DiscImage.open(self.disc_path()) as disc:
                medium = disc_medium(disc)
                mid = medium.mid
                with self.card(slot).transaction() as img:
                    view = decisions.CardView.open(img.card)
                    req = decisions.acquisition_request(view, hw, medium)
                    with self.client(rom) as c:
                        resp = c.call("/v1/console/acquire", req, p.AcquireResponse)
                    check_disc_is_registered(disc, resp)
                    img.save_card(decisions.accept_acquisition(view, req, resp, mid, hw, acquired=now()).card)  # S16
        return resp.title_id, mid

    def install(
        self, slot: str = "1", *, wait: bool = False, progress: Callable[[int, int], None] | None = None
    ) -> tuple[str, str]:
        """The copy, S21-S28, with its acquisition first when the card has no key for the disc.

        Returns (title ID, what happened: "installed", "resumed" or "confirmed").
        """
        with self.busy():
            mounted = self.active_mount()
            if mounted is not None:  # the mount holds the HDD (and would not show the new title)
                raise StateError(
                    f"the HDD is mounted at {mounted}: unmount it first", hint=f"vhw console unmount {mounted}"
                )
            rom = self.rom()
            with (
                DiscImage.open(self.disc_path()) as disc,
                HddImage.open(self.hdd_path, write=True, wait=wait, on_wait=self.log) as hdd,
            ):
                with self.card(slot).transaction() as mem:  # opened once, written at S16 and S28
                    return self._install(mem, decisions.CardView.open(mem.card), rom, disc, hdd, progress)

    def _install(
        self,
        mem: CardImage,
        view: decisions.CardView,
        rom: Rom,
        disc: DiscImage,
        hdd: HddImage,
        progress: Callable[[int, int], None] | None,
    ) -> tuple[str, str]:
        m = disc.manifest
        hw = hardware(rom, hdd)
        on_hdd = hdd.volume.catalog.title(m.title_id)
        purchase = disc.disc.pressing is Pressing.NO_MID
        if purchase:
            if on_hdd and on_hdd.complete:
                raise StateError(f"{m.title_id} is already installed on this HDD")
            view, mid = self._purchase_mid(view, m.title_id)
            mem.save_card(view.card)  # the fresh MID is on the card before it is asked for
            medium = decisions.Medium(mid, disc.disc.title_digest)
        else:
            medium = disc_medium(disc)
            mid = medium.mid
        if not (on_hdd and on_hdd.complete):
            self._check_host_space(disc, hdd, on_hdd.progress if on_hdd else 0)
        if on_hdd and on_hdd.complete:
            if on_hdd.mid != mid:
                raise StateError(f"{m.title_id} is already installed on this HDD (from another disc)")
            match = decisions.devices_match(view, hw)
            lic = view.license_for(mid)
            if match and crypto.equal(on_hdd.bound_to, match.binding.owner) and not (lic and lic.content_key):
                raise StateError(f"{m.title_id} is already installed on this HDD")
        pending = view.license_for(mid)
        if pending and pending.content_key:
            # S21-S23 before anything else: keys acquired elsewhere copy only where they were meant to
            decisions.copy_keys(view, hw, mid, m.title_id)
        elif on_hdd is None:
            install.check_space(hdd.volume, disc)  # a full HDD refuses before any MID is flagged
        # S11-S17: register the MID and fetch the keys (again: until confirmed, that is allowed,
        # and a card rolled back to before its confirm is refused here)
        req = decisions.acquisition_request(view, hw, medium)
        with self.client(rom) as c:
            if purchase:  # FIG. 15: a disc without a MID: the license is bought (through a broker)
                req = p.PurchaseRequest(**req.__dict__, title_id=m.title_id)
                resp = c.call("/v1/console/purchase", req, p.AcquireResponse)
            else:
                resp = c.call("/v1/console/acquire", req, p.AcquireResponse)
        check_disc_is_registered(disc, resp)
        view = decisions.accept_acquisition(view, req, resp, mid, hw, acquired=now())
        mem.save_card(view.card)  # S16
        content_key, match = decisions.copy_keys(view, hw, mid, m.title_id)  # S21-S23
        self._note_epoch(hdd, match)
        outcome = "installed"
        on_hdd = hdd.volume.catalog.title(m.title_id)
        if on_hdd is not None and on_hdd.complete and crypto.equal(on_hdd.bound_to, match.binding.owner):
            outcome = "confirmed"  # copied before (a crash before the confirm)
        else:
            if on_hdd is not None and install.resumable(on_hdd, disc, match.binding):
                outcome = "resumed"
                self.log(f"resuming the install of {m.title_id}: {on_hdd.share_done}% of it was already on the HDD")
            total = sum(f.size for f in m.files)
            done = [on_hdd.progress if outcome == "resumed" and on_hdd is not None else 0]
            if progress:
                progress(done[0], total)

            def tick(n: int) -> None:
                done[0] += n
                if progress:
                    progress(done[0], total)

            hdd.run(
                install.install_plan(
                    hdd.volume,
                    disc,
                    content_key=content_key,
                    owner=match.owner,
                    binding=match.binding,
                    installed=now(),
                    progress=tick,
                    mid=mid,
                    reuse=True,
                )
            )  # S24-S26
        # S27-S28: the copy is complete and durable: make the flag final, then drop the key
        with self.client(rom) as c:
            c.call("/v1/console/confirm", decisions.confirm_request(view, hw, medium), p.Done)
        mem.save_card(decisions.drop_content_key(view, mid).card)
        return m.title_id, outcome

    def _check_host_space(self, disc: DiscImage, hdd: HddImage, durable: int) -> None:
        """Refuse, before anything is asked or written, an install the disk holding the HDD image
        has no room for (the image is sparse: its blocks take room there as they are written)."""
        need = install.host_space_needed(disc, hdd.volume.sb.block_size, durable)
        free = shutil.disk_usage(self.hdd_path.parent).free
        if free < need:
            raise NoSpaceError(
                f"{self.hdd_path}: the disk that holds it has {_mb(free)} free; installing"
                f" {disc.manifest.title_id} needs {_mb(need)}",
                hint="free space on that disk (`df` shows it), or move the HDD image to a larger one",
            )

    @staticmethod
    def _purchase_mid(view: decisions.CardView, title_id: str) -> tuple[decisions.CardView, Id]:
        """The MID of the license to buy for a disc without one: a purchase under way (asked, or
        answered but not installed yet) goes on with its own; else a fresh one, which the caller
        keeps on the card *before* it is asked for, so a lost answer is fetched again, never
        bought twice."""
        view.require_user()
        for lic, mid in view.licenses():
            if lic.title_id == title_id and (lic.acquired == 0 or lic.content_key) and mid is not None:
                return view, mid
        mid = Id.random(IdKind.MEDIA)
        return view.with_license(License(title_id, view.wrapped_mid(mid), b"", 0), mid), mid

    @staticmethod
    def _note_epoch(hdd: HddImage, match: decisions.Match) -> None:
        """A newer card of this user was used here: from now on this HDD refuses older ones."""
        if match.epoch > hdd.volume.catalog.epochs().get(match.owner, 0):
            hdd.apply(*hdd.volume.with_card_epoch(match.owner, match.epoch))

    # -- reproduction, S31-S35 ---------------------------------------------------------------------

    def reproduction_key(
        self, slot: str = "1", hdd: HddImage | None = None, *, view: decisions.CardView | None = None
    ) -> decisions.Match:
        """S31-S34: the card's keys, if they open on this console and this HDD, its sealed IDs are
        theirs and it is the user's current card. ``view``: the card as the flow opened it."""
        rom = self.rom()
        if hdd is None:
            with HddImage.open(self.hdd_path) as img:
                return self.reproduction_key(slot, img, view=view)
        view = view or self.card_view(slot)
        hw = hardware(rom, hdd)
        try:
            return decisions.reproduction_key(view, hw)
        except ReproductionNotPermitted:
            if view is not None and decisions.replaced(view, hw):
                raise ReproductionNotPermitted(hint=REPLACED_HINT) from None
            if view is not None and view.user is not None and not view.card.content_gen_key:
                # a registered card without keys: a repair wiped them (or nothing was installed yet)
                raise ReproductionNotPermitted(
                    hint="this card holds no keys for this console: after a repair, install the titles again"
                    " from their discs (`vhw console install`)"
                ) from None
            raise

    def serve_mount(self, mountpoint: Path, slot: str = "1", *, ready: Callable[[], None]) -> None:
        """Mount in this process until unmounted (``vhw console mount --foreground``)."""
        view = self.card_view(slot)  # opened once for the whole mount
        with HddImage.open(self.hdd_path) as img:
            match = self.reproduction_key(slot, img, view=view)
        if match.epoch > 0:  # a reissued card: this HDD refuses the older ones from now on
            with HddImage.open(self.hdd_path, write=True, wait=True, on_wait=self.log) as img:
                self._note_epoch(img, self.reproduction_key(slot, img, view=view))
        with HddImage.open(self.hdd_path, shared_lock=True, wait=True, on_wait=self.log) as img:
            match = self.reproduction_key(slot, img, view=view)  # checked again under the lock
            from . import mount  # (pyfuse3 and trio: only the mounts need them)

            mount.serve(img, Path(mountpoint), match.binding, ready=ready, watch=self.card_watch(slot, view))

    def card_watch(self, slot: str, view: decisions.CardView | None) -> Callable[[], str | None] | None:
        """A check of the card slot for a mount: it says why the keys must go (the card was
        ejected, moved away or replaced by another), or None while the same card is in. None for
        a card-less console: its memory does not leave."""
        if self.config().memory or view is None:
            return None
        path = self.card_path(slot)
        mc_id = view.card.mc_id
        seen: list[tuple[int, ...]] = []

        def gone() -> str | None:
            try:
                if self.config().slots.get(slot) != str(path):
                    return f"the memory card left slot {slot}"
                st = os.stat(path)
            except (OSError, FileError, ImageError):
                return f"the memory card in slot {slot} is gone ({path})"
            stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if seen and seen[-1] == stamp:
                return None
            try:  # the file changed: is it still this card?
                if card_dev.load(path).mc_id != mc_id:
                    return f"another memory card is in slot {slot}"
            except ImageError:
                return f"the memory card in slot {slot} no longer opens ({path})"
            seen[:] = [stamp]
            return None

        return gone

    def card_replaced(self, card: Card) -> bool:
        """Whether ``card`` was replaced by a reissued card that this console has seen (FIG. 14)."""
        with HddImage.open(self.hdd_path) as img:
            return decisions.replaced(decisions.CardView.open(card), hardware(self.rom(), img))

    def mount(self, mountpoint: Path, slot: str = "1", *, checked: bool = False, nonempty: bool = False) -> int:
        """Mount in a background process; returns when the titles can be read. Returns its pid.
        ``checked``: the caller has just made the reproduction check itself. ``nonempty``: mount
        over a folder that holds files (they are hidden while mounted)."""
        mountpoint = Path(mountpoint).resolve()
        if not checked:
            self.reproduction_key(slot)  # refuse here, in the user's terminal, with the patent's words
        refuse_other_console(self.hdd_path, "HDD image")  # (before a mount process would find it so)
        already = self.active_mount()
        if already is not None:
            raise StateError(f"this console's HDD is mounted at {already} already", hint="use it, or unmount it first")
        clear_stale(mountpoint)
        if not nonempty and mountpoint.is_dir() and any(mountpoint.iterdir()):
            raise StateError(
                f"{mountpoint} is not empty: its files would be hidden while mounted",
                hint="choose an empty folder, or pass --nonempty",
            )
        proc = processes.spawn(
            ["console", "mount", str(mountpoint), "--foreground", "--slot", slot],
            self.root,
            mountpoint,
            self.root / "mount.log",
            tell=self.log,
        )
        self.mounts.add(mountpoint, proc.pid)
        return proc.pid

    # -- the running title's save folder --------------------------------------------------------

    def serve_saves(self, mountpoint: Path, title_id: str, slot: str = "1", *, ready: Callable[[], None]) -> None:
        """The save folder of ``title_id`` on the card in ``slot`` (or the internal memory), served
        in this process until unmounted (``vhw console saves-mount``)."""
        from . import savefs  # (pyfuse3 and trio: only the mounts need them)

        memory = self.card(slot)
        folder = savefs.SaveFolder(
            lambda write=False: memory.open(write=write),
            title_id,
            called=memory.called,
            gone=self.card_watch(slot, self.card_view(slot)),
        )
        savefs.serve(folder, Path(mountpoint), ready=ready)

    @contextlib.contextmanager
    def save_folder(self, title_id: str, slot: str) -> Iterator[Path | None]:
        """The running title's save folder for as long as the block runs (None: no card to save
        on, which the user is told). Afterwards the user is told of every save that failed."""
        if not self.has_card(slot):
            self.log(f"no memory card in slot {slot}: {title_id} runs, but cannot save its progress")
            yield None
            return
        where = Path(tempfile.mkdtemp(prefix="vhw-saves-"))
        log_path = where.with_name(where.name + ".log")
        try:
            proc = processes.spawn(
                ["console", "saves-mount", str(where), "--title", title_id, "--slot", slot],
                self.root,
                where,
                log_path,
                tell=self.log,
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
                self.log("vhw: " + line)
            log_path.unlink(missing_ok=True)

    def unmount(self, mountpoint: Path) -> None:
        mountpoint = Path(mountpoint).resolve()
        unmount(mountpoint)
        pid = self.mounts.remove(mountpoint)
        if pid:
            processes.wait_gone(pid)

    def active_mount(self) -> Path | None:
        """A mount of this console's HDD that is up, if any (``play`` reuses it)."""
        for where, pid in self.mounts.load().items():
            if alive(pid) and os.path.ismount(where):
                return Path(where)
        return None

    def play(self, title_id: str, args: list[str], slot: str = "1", *, save_slot: str | None = None) -> int:
        """S35: run the title's entry point from the mount (mounting it for the time being), in
        its sandbox (:mod:`vhw.console.sandbox`), with a save folder on the card in ``save_slot``
        (default: the same slot). Returns the title's exit code; a read of the title that failed
        authentication is reported and fails the play, even when the title went on."""
        title_id = title_id.upper()
        match = self.reproduction_key(slot)  # S31-S34 first: without the right card, nothing else is told
        with HddImage.open(self.hdd_path) as img:
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
        where = self.active_mount()
        temporary = None
        if where is None:
            temporary = Path(tempfile.mkdtemp(prefix="vhw-play-"))
            self.mount(temporary, slot, checked=True)
            where = temporary
        log_path = self.root / "mount.log"
        seen = log_path.stat().st_size if log_path.exists() else 0
        try:
            title_dir = where / title_id
            entry = (title_dir / title.entry).resolve()
            if not entry.is_relative_to(title_dir.resolve()) or not entry.is_file():
                raise IntegrityError(self.hdd_path, f"{title_id}: its entry point is not a file of the title")
            with self.save_folder(title_id, save_slot or slot) as saves:
                if meta.get("network") is True:
                    self.log(f"{title_id} asks for the network; titles run without it")
                cmd = sandbox.command(
                    title_dir=title_dir,
                    entry=title.entry,
                    args=args,
                    saves=saves,
                    saves_on=self.card(save_slot or slot).called if saves is not None else "the memory card",
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
                self.hdd_path,
                f"{failed[0]} (the title ended with exit code {code})",
                hint="`vhw hdd fsck --deep` checks the HDD; install the title again from its disc",
            )
        return code

    def _play_watches(self, *slots: str) -> list[Callable[[], str | None]]:
        """What tells that a card the title reads its keys or writes its saves with has left."""
        watches = []
        for slot in dict.fromkeys(slots):
            watch = self.card_watch(slot, self.card_view(slot)) if self.has_card(slot) else None
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
            self.unmount(mountpoint)
        except StateError:
            pid = self.mounts.remove(Path(mountpoint).resolve())
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
                self.hdd_path,
                f"the catalog entry of {title.title_id} was modified (it names another entry point than its disc did)",
                hint="install the title again from its disc",
            )
        try:
            meta = json.loads(title.metadata)
        except ValueError:
            meta = None
        return meta if isinstance(meta, dict) else {}


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


def hardware(rom: Rom, hdd: HddImage) -> decisions.Hardware:
    """This console as a flow sees it: the ROM's and the attached HDD's IDs and secrets, the
    platform signing certificate its ROM pins (card tokens), the card epochs the HDD has seen."""
    return decisions.Hardware(
        DeviceSecrets(rom.client_id, hdd.hdd_id, rom.secret, hdd.secret), rom.token_anchor, hdd.volume.catalog.epochs()
    )


def disc_medium(disc: DiscImage) -> decisions.Medium:
    """The disc in the tray as an acquisition proves it: its MID, title digest and own secret."""
    if disc.disc.pressing is Pressing.MASTER:
        raise StateError(f"{disc.path} is a master image, not a pressed disc")
    if disc.disc.mid is None:
        raise StateError(
            f"{disc.path} was pressed without a MID", hint="such discs install through the broker, for a fee"
        )
    return decisions.Medium(disc.disc.mid, disc.disc.title_digest, disc.disc.secret)


def check_disc_is_registered(disc: DiscImage, resp: p.AcquireResponse) -> None:
    """The disc in the tray must be the very title the publisher registered for this MID."""
    if resp.title_id != disc.manifest.title_id or resp.title_digest != disc.disc.title_digest:
        raise IntegrityError(disc.path, "this disc is not the title its publisher registered for its MID")


REPLACED_HINT = (
    "this memory card was replaced by a reissued one (the repair center's new card): put that card in;"
    " this one no longer works, here or at the server"
)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"
