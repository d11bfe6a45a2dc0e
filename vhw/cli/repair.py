"""The repair center (operator): ``vhw repair device`` (FIG. 13) and ``vhw repair card`` (FIG. 14)."""

from __future__ import annotations

from pathlib import Path

import click

from .. import crypto
from .. import protocol as proto
from ..console import decisions
from ..devices import card as card_dev
from ..devices import rom as rom_dev
from ..devices.files import now, refuse_existing
from ..devices.hdd import HddImage
from ..formats.card import WHAT as CARD
from ..ids import Id, IdKind
from . import vhw
from .params import PATH, USER_ID
from .roles import credential_option, role_client, server_option


@vhw.group()
def repair() -> None:
    """The repair center (operator credential): `device` re-registers a repaired or exchanged
    console or HDD for its user, `card` reissues a damaged or lost memory card."""


@repair.command("device")
@click.option("--card", "card_path", type=PATH, required=True, help="The user's memory card, sent in with the device.")
@click.option("--new-rom", type=PATH, help="The repaired or exchanged console's new ROM (new Client ID).")
@click.option("--new-hdd", type=PATH, help="The repaired or exchanged HDD (new HDD-ID).")
@credential_option
@server_option
def repair_device(
    card_path: Path, new_rom: Path | None, new_hdd: Path | None, credential: Path | None, server_url: str | None
) -> None:
    """Re-register a repaired or exchanged console or HDD in the card's user entry (FIG. 13).

    The old device ID is retired and gets nothing from the server any more; the user's discs stay
    reserved to the user alone, and the card's Content-Gen-Key, sealed IDs and pending keys are
    wiped: the user then installs again from the same discs onto the new devices (no one else
    ever can). The new device must have been made (and registered) by the manufacturer.
    """
    if not credential:
        raise click.UsageError("--credential (the operator's) is required")
    if not new_rom and not new_hdd:
        raise click.UsageError("name the new device: --new-rom and/or --new-hdd")
    card = card_dev.load(card_path)
    client_id = rom_dev.load(new_rom).client_id if new_rom else None
    hdd_id = None
    if new_hdd:
        with HddImage.open(new_hdd) as img:
            hdd_id = img.hdd_id
    with role_client(credential, server_url, "operator") as c:
        resp = c.call("/v1/operator/repair", proto.RepairRequest(card.mc_id, client_id, hdd_id), proto.RepairResponse)
    with card_dev.transaction(card_path) as img:  # its saves stay
        img.save_card(decisions.CardView.open(img.card).wiped().card)
    new = ", ".join(str(x) for x in (client_id, hdd_id) if x)
    click.echo(
        f"re-registered {new} for memory card {card.mc_id}; {resp.reinstallable} disc(s) may be installed"
        " again by this user from the discs; the card's Content-Gen-Key and sealed IDs are wiped"
    )


@repair.command("card")
@click.option(
    "--user-id",
    "user_id",
    type=USER_ID,
    required=True,
    help="The User ID the user wrote down (checked by its check character first).",
)
@click.option("-o", "--out", type=PATH, required=True, help="The new memory card to write.")
@credential_option
@server_option
def repair_card(user_id: Id, out: Path, credential: Path | None, server_url: str | None) -> None:
    """Make a new memory card for a user whose card was damaged or lost (FIG. 14).

    New MC-ID and MC-Key; the Content-Gen-Key re-wrapped, the unchanged Client ID and HDD-ID
    re-sealed, the user entry rewritten. Installed titles play with the new card; the old card is
    refused from now on.
    """
    if not credential:
        raise click.UsageError("--credential (the operator's) is required")
    refuse_existing(out, CARD)
    mc_id, mc_key = Id.random(IdKind.CARD), crypto.random_key()
    with role_client(credential, server_url, "operator") as c:
        resp = c.call("/v1/operator/reissue", proto.ReissueRequest(user_id, mc_id, mc_key), proto.ReissueResponse)
    card = decisions.reissued_card(user_id, mc_id, mc_key, resp, now())
    card_dev.create(out, card)
    click.echo(
        f"new memory card {out}: MC-ID {mc_id} for User ID {user_id}, {len(card.licenses)} license(s);"
        " the old card is retired"
    )
