"""What the console's flows see of its hardware and of the disc in its tray: this console and HDD
as a flow checks them, the disc as an acquisition proves it, and the check that the disc is the
title its publisher registered."""

from __future__ import annotations

from .. import protocol as p
from ..bindings import DeviceSecrets
from ..devices.disc import DiscImage
from ..devices.hdd import HddImage
from ..errors import IntegrityError, StateError
from ..formats.disc import Pressing
from ..formats.rom import Rom
from . import decisions

__all__ = ["REPLACED_HINT", "check_disc_is_registered", "disc_medium", "hardware"]


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
