"""The emulated console and the flows that run on it (the patent's), each a thin shell around
:mod:`vhw.console.decisions` (what the console decides), :mod:`vhw.client` (the modem) and the
device files. Its folder, slots and tray are :mod:`vhw.console.slots`; the processes it starts
(its mounts) :mod:`vhw.console.processes`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .. import protocol as p
from ..devices import card as card_dev
from ..devices.disc import DiscImage
from ..devices.files import now, refuse_other_console
from ..devices.hdd import HddImage
from ..devices.holders import alive
from ..errors import FileError, ImageError, ReproductionNotPermitted, StateError
from ..formats.card import Card
from ..ids import Id
from . import decisions, processes
from .copying import Copying, Progress, note_epoch
from .media import REPLACED_HINT, check_disc_is_registered, disc_medium, hardware
from .mountpoints import answers, clear_stale, unmount
from .playing import Playing
from .slots import SLOTS, CardMemory, ConsoleConfig, ConsoleFolder

__all__ = ["SLOTS", "CardMemory", "ConsoleConfig", "Machine", "check_disc_is_registered", "disc_medium", "hardware"]


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

    def install(self, slot: str = "1", *, wait: bool = False, progress: Progress | None = None) -> tuple[str, str]:
        """The copy, S21-S28 (:class:`~vhw.console.copying.Copying`), with its acquisition first when
        the card has no key for the disc. Returns (title ID, what happened: "installed", "resumed"
        or "confirmed")."""
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
                self.card(slot).transaction() as mem,  # opened once, written at S16 and S28
            ):
                return Copying(self, mem, rom, disc, hdd).run(progress)

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
                note_epoch(img, self.reproduction_key(slot, img, view=view))
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

    def unmount(self, mountpoint: Path) -> None:
        mountpoint = Path(mountpoint).resolve()
        unmount(mountpoint)
        pid = self.mounts.remove(mountpoint)
        if pid:
            processes.wait_gone(pid)

    def active_mount(self) -> Path | None:
        """A mount of this console's HDD that is up, if any (``play`` reuses it)."""
        for where, pid in self.mounts.load().items():
            if alive(pid) and answers(Path(where)):  # (a process may outlive its mount a moment)
                return Path(where)
        return None

    def play(self, title_id: str, args: list[str], slot: str = "1", *, save_slot: str | None = None) -> int:
        """S35: run the title (:class:`~vhw.console.playing.Playing`); its exit code."""
        return Playing(self).run(title_id, args, slot, save_slot=save_slot)
