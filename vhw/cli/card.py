"""The memory card's tools: ``vhw card format|info|fsck`` (its saves: :mod:`.saves`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .. import bindings, crypto
from .. import protocol as proto
from ..devices import card as card_dev
from ..devices.card import CardImage
from ..devices.files import now, refuse_existing
from ..errors import ImageError, VhwError
from ..formats import card as card_fmt
from ..ids import Id, IdKind
from . import emit, vhw
from .params import FOLDER, PATH, SIZE, human_binary, json_option, when
from .roles import credential_option, register_with_server, server_option

# -- memory cards --------------------------------------------------------------------------------


@vhw.group()
def card() -> None:
    """Memory cards: `format` one (manufacturer), `info` shows what its owner may see, `fsck`
    checks it, `saves` manages the game saves on it."""


F = TypeVar("F", bound=Callable[..., Any])


def save_area_option(flag: str, help: str) -> Callable[[F], F]:
    """The capacity of a card's save area (a card's, or an internal memory's), 8 MiB unless told."""
    return click.option(flag, "capacity", type=SIZE, default="8MiB", show_default=True, help=help)


@card.command("format")
@click.argument("out", type=PATH)
@save_area_option("--size", "Capacity of the save area (the file is sparse and holds only what is written).")
@credential_option
@server_option
def card_format(out: Path, capacity: int, credential: Path | None, server_url: str | None) -> None:
    """Format a new memory card OUT with a fresh MC-ID, a secret MC-Key and an empty save area.

    The MC-ID is printed (it goes on the card's label); the MC-Key is never shown. With
    --credential, the card's MC-ID and MC-Key are registered with the licensing server first.
    """
    refuse_existing(out, card_fmt.WHAT)
    check_capacity(capacity)
    c = new_card(credential, server_url)
    card_dev.create(out, c, capacity=capacity)
    click.echo(f"MC-ID {c.mc_id}  (memory card {out}, {human_binary(capacity)} for saves)")


def check_capacity(capacity: int) -> None:
    if not 0 <= capacity <= card_fmt.MAX_CAPACITY:
        raise click.BadParameter(f"a save area holds 0 to {card_fmt.MAX_CAPACITY // 2**20} MiB", param_hint="--size")


def _user_of(card: card_fmt.Card) -> Id | None:
    try:
        return bindings.card_user(card.mc_key, card.mc_id, card.user_id)
    except crypto.Invalid:  # a damaged card: `problems` says so
        return None


def card_replaced(card: card_fmt.Card, console_dir: Path | None) -> bool | None:
    """Whether the console (named, or found as every console command finds it) has seen a newer
    card of this card's user (FIG. 14): None when there is no console to ask, or the card is not
    its user's there."""
    from ..console.machine import Machine  # (loaded only by the commands that need it: start-up time)

    try:
        return Machine.find(console_dir).card_replaced(card)
    except VhwError:
        if console_dir is not None:
            raise
        return None  # (no console here, or not one this card can be asked about: the card alone cannot tell)


def card_summary(img: CardImage) -> dict[str, Any]:
    """What `card info` shows of an open card image."""
    c, state = img.card, img.state
    return {
        "capacity": state.sb.capacity,
        "used": state.used_bytes,
        "free": state.free_bytes,
        "saves": len(state.saves),
        "mc_id": str(c.mc_id),
        "user_id": str(_user_of(c)) if c.registered and _user_of(c) else None,  # the owner's own: shown
        "formatted": when(c.formatted),
        "registered": c.registered,
        "content_gen_key": bool(c.content_gen_key),
        "sealed_ids": bool(c.sealed_ids),
        "licenses": [
            {"title_id": x.title_id, "acquired": when(x.acquired), "content_key_pending": bool(x.content_key)}
            for x in c.licenses
        ],
        "format_version": card_fmt.VERSION,
        "notes": img.notes,
        "problems": img.check(),
    }


@card.command("info")
@click.argument("image", type=PATH)
@click.option(
    "--console",
    "console_dir",
    type=FOLDER,
    help="A console to ask whether the card was replaced by a reissued one (default: $VHW_CONSOLE, else"
    " the current folder, if one is set up there).",
)
@json_option
def card_info(image: Path, console_dir: Path | None, as_json: bool) -> None:
    """Show what a memory card's owner may see: MC-ID, registration, licenses, space. Never a key."""
    with CardImage.open(image, damaged=True) as img:
        d = card_summary(img)
        d["replaced"] = card_replaced(img.card, console_dir) if img.card.registered else False
    registered = "yes" if d["registered"] else "no"
    if d["replaced"]:
        registered = "yes, but replaced by a reissued card: refused on this console and at the server"
    lines = [
        f"memory card  {image}",
        f"MC-ID        {d['mc_id']}",
        f"formatted    {d['formatted']}",
        f"registered   {registered}",
        f"saves        {d['saves']}; {human_binary(d['used'])} used, {human_binary(d['free'])} free"
        f" of {human_binary(d['capacity'])}",
        f"Content-Gen-Key {'stored' if d['content_gen_key'] else 'none'};"
        f" sealed IDs {'stored' if d['sealed_ids'] else 'none'}",
        f"licenses     {len(d['licenses'])}",
        *(
            f"  {x['title_id']:<16} acquired {x['acquired']}"
            + ("  (Content-Key waiting for install)" if x["content_key_pending"] else "")
            for x in d["licenses"]
        ),
        *(f"note: {n}" for n in d["notes"]),
        *(f"problem: {p}" for p in d["problems"]),
    ]
    emit(d, as_json=as_json, lines=lines)
    if d["problems"]:
        raise ImageError(image, f"{len(d['problems'])} problem(s) found")


REPAIR = "Write the generation in use anew into every copy; a card that rolled back is accepted as it is."


@card.command("fsck")
@click.argument("image", type=PATH)
@click.option("--repair", is_flag=True, help=REPAIR)
def card_fsck(image: Path, repair: bool) -> None:
    """Check a memory card image; exit 3 if it has problems."""
    with CardImage.open(image, write=repair, damaged=True) as img:
        for note in img.notes:
            click.echo(f"note: {note}")
        if repair:
            for line in img.repair():
                click.echo(f"repaired: {line}")
        problems = img.check()
    if problems:
        for p in problems:
            click.echo(f"problem: {p}")
        raise ImageError(image, f"{len(problems)} problem(s) found", hint="`vhw card fsck --repair` accepts it")
    click.echo(f"{image}: clean")


def new_card(credential: Path | None, server_url: str | None) -> card_fmt.Card:
    """A fresh card record (MC-ID, MC-Key), registered with the server when a credential is given."""
    c = card_fmt.Card(Id.random(IdKind.CARD), crypto.random_key(), formatted=now())
    register_with_server(credential, server_url, "/v1/manufacturer/cards", proto.RegisterCard(c.mc_id, c.mc_key))
    return c
