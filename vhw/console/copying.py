"""The copy, S21-S28, as the console runs it: the disc's keys acquired first when the card has
none for it (S11-S17, or bought for a disc without a MID), checked against this console and HDD
(S21-S23), the title written onto the HDD (S24-S26, :mod:`vhw.console.install`), then the flag
made final and the key dropped from the card (S27-S28)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .. import crypto
from .. import protocol as p
from ..client import Client
from ..devices.card import CardImage
from ..devices.disc import DiscImage
from ..devices.files import now
from ..devices.hdd import HddImage
from ..errors import NoSpaceError, StateError
from ..formats.card import License
from ..formats.disc import Pressing
from ..formats.hdd import Title
from ..formats.rom import Rom
from ..ids import Id, IdKind
from . import decisions, install
from .media import check_disc_is_registered, disc_medium, hardware

__all__ = ["Copying", "note_epoch"]

Progress = Callable[[int, int], None]


class Console(Protocol):
    """What the copy asks of the console it runs on."""

    @property
    def hdd_path(self) -> Path: ...

    def client(self, rom: Rom) -> AbstractContextManager[Client]: ...

    def log(self, message: str) -> None: ...


@dataclass
class Copying:
    """One install of the disc in the tray onto the HDD, for the card ``mem`` (opened once: written
    at S16 and S28)."""

    console: Console
    mem: CardImage
    rom: Rom
    disc: DiscImage
    hdd: HddImage

    def run(self, progress: Progress | None) -> tuple[str, str]:
        """Returns (title ID, what happened: "installed", "resumed" or "confirmed")."""
        title_id = self.disc.manifest.title_id
        view = decisions.CardView.open(self.mem.card)
        hw = hardware(self.rom, self.hdd)
        on_hdd = self.hdd.volume.catalog.title(title_id)
        view, medium, purchase = self._medium(view, on_hdd)
        self._refuse_what_is_done(view, hw, medium.mid, on_hdd)
        view, req = self._acquire(view, hw, medium, purchase)
        content_key, match = decisions.copy_keys(view, hw, medium.mid, title_id)  # S21-S23
        note_epoch(self.hdd, match)
        outcome = self._copy(content_key, match, medium.mid, progress)  # S24-S26
        # S27-S28: the copy is complete and durable: make the flag final, then drop the key
        with self.console.client(self.rom) as c:
            c.call("/v1/console/confirm", decisions.confirm_request(view, hw, medium), p.Done)
        self.mem.save_card(decisions.drop_content_key(view, medium.mid).card)
        return title_id, outcome

    def _medium(
        self, view: decisions.CardView, on_hdd: Title | None
    ) -> tuple[decisions.CardView, decisions.Medium, bool]:
        """The disc as the acquisition proves it; for a disc without a MID, the license to buy (its
        fresh MID is on the card before it is asked for). Whether it is a purchase."""
        if self.disc.disc.pressing is not Pressing.NO_MID:
            return view, disc_medium(self.disc), False
        if on_hdd and on_hdd.complete:
            raise StateError(f"{self.disc.manifest.title_id} is already installed on this HDD")
        view, mid = _purchase_mid(view, self.disc.manifest.title_id)
        self.mem.save_card(view.card)
        return view, decisions.Medium(mid, self.disc.disc.title_digest), True

    def _refuse_what_is_done(
        self, view: decisions.CardView, hw: decisions.Hardware, mid: Id, on_hdd: Title | None
    ) -> None:
        """Refuse, before any key is asked for: a title installed already (from this disc, for this
        card, with nothing left to confirm), an HDD or a host disk without room, keys acquired
        elsewhere that would copy where they were not meant to."""
        title_id = self.disc.manifest.title_id
        if on_hdd and on_hdd.complete:
            if on_hdd.mid != mid:
                raise StateError(f"{title_id} is already installed on this HDD (from another disc)")
            match = decisions.devices_match(view, hw)
            lic = view.license_for(mid)
            if match and crypto.equal(on_hdd.bound_to, match.binding.owner) and not (lic and lic.content_key):
                raise StateError(f"{title_id} is already installed on this HDD")
        else:
            self._check_host_space(on_hdd.progress if on_hdd else 0)
        pending = view.license_for(mid)
        if pending and pending.content_key:
            # S21-S23 before anything else: keys acquired elsewhere copy only where they were meant to
            decisions.copy_keys(view, hw, mid, title_id)
        elif on_hdd is None:
            install.check_space(self.hdd.volume, self.disc)  # a full HDD refuses before any MID is flagged

    def _acquire(
        self, view: decisions.CardView, hw: decisions.Hardware, medium: decisions.Medium, purchase: bool
    ) -> tuple[decisions.CardView, p.AcquireRequest]:
        """S11-S17: register the MID and fetch the keys (again: until confirmed, that is allowed,
        and a card rolled back to before its confirm is refused here); the keys go on the card."""
        req = decisions.acquisition_request(view, hw, medium)
        with self.console.client(self.rom) as c:
            if purchase:  # FIG. 15: a disc without a MID: the license is bought (through a broker)
                req = p.PurchaseRequest(**req.__dict__, title_id=self.disc.manifest.title_id)
                resp = c.call("/v1/console/purchase", req, p.AcquireResponse)
            else:
                resp = c.call("/v1/console/acquire", req, p.AcquireResponse)
        check_disc_is_registered(self.disc, resp)
        view = decisions.accept_acquisition(view, req, resp, medium.mid, hw, acquired=now())
        self.mem.save_card(view.card)  # S16
        return view, req

    def _copy(self, content_key: bytes, match: decisions.Match, mid: Id, progress: Progress | None) -> str:
        """S24-S26: write the title onto the HDD (or go on with an interrupted install of it)."""
        m, hdd = self.disc.manifest, self.hdd
        on_hdd = hdd.volume.catalog.title(m.title_id)
        if on_hdd is not None and on_hdd.complete and crypto.equal(on_hdd.bound_to, match.binding.owner):
            return "confirmed"  # copied before (a crash before the confirm)
        outcome = "installed"
        if on_hdd is not None and install.resumable(on_hdd, self.disc, match.binding):
            outcome = "resumed"
            self.console.log(f"resuming the install of {m.title_id}: {on_hdd.share_done}% of it was already on the HDD")
        total = sum(f.size for f in m.files)
        done = [on_hdd.progress if outcome == "resumed" and on_hdd is not None else 0]
        if progress:
            progress(done[0], total)

        def tick(n: int) -> None:
            done[0] += n
            if progress:
                progress(done[0], total)

        plan = install.install_plan(
            hdd.volume,
            self.disc,
            content_key=content_key,
            owner=match.owner,
            binding=match.binding,
            installed=now(),
            progress=tick,
            mid=mid,
            reuse=True,
        )
        hdd.run(plan)
        return outcome

    def _check_host_space(self, durable: int) -> None:
        """Refuse, before anything is asked or written, an install the disk holding the HDD image
        has no room for (the image is sparse: its blocks take room there as they are written)."""
        need = install.host_space_needed(self.disc, self.hdd.volume.sb.block_size, durable)
        where = self.console.hdd_path
        free = shutil.disk_usage(where.parent).free
        if free < need:
            raise NoSpaceError(
                f"{where}: the disk that holds it has {_mb(free)} free; installing"
                f" {self.disc.manifest.title_id} needs {_mb(need)}",
                hint="free space on that disk (`df` shows it), or move the HDD image to a larger one",
            )


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


def note_epoch(hdd: HddImage, match: decisions.Match) -> None:
    """A newer card of this user was used here: from now on this HDD refuses older ones."""
    if match.epoch > hdd.volume.catalog.epochs().get(match.owner, 0):
        hdd.apply(*hdd.volume.with_card_epoch(match.owner, match.epoch))


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"
