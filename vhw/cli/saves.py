"""The card manager: ``vhw card saves ls|export|import|rm|copy`` (like PCSX2's memory card manager)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from .. import saves as sv
from ..console import decisions
from ..devices.card import CardImage
from ..devices.files import atomic_write, read_small, refuse_existing
from ..errors import StateError
from ..formats.card import Save
from . import emit
from .card import card
from .params import PATH, TITLE_ID, json_option
from .params import human_binary as human

MAX_EXPORT = 1024 * 1024 * 1024 + 4096  # the largest save a card holds, and its envelope


def open_card(path: Path, *, write: bool = False) -> CardImage:
    """A memory card image, or the internal memory of an HDD image (card-less consoles)."""
    from ..console.machine import CardMemory  # (loaded only by the commands that need it: start-up time)
    from ..formats import hdd as hdd_fmt  # (loaded only by the commands that need it: start-up time)

    try:
        with open(path, "rb") as f:
            is_hdd = f.read(len(hdd_fmt.MAGIC)) == hdd_fmt.MAGIC
    except OSError:
        is_hdd = False
    return CardMemory(path, in_hdd=is_hdd).open(write=write)


def modified(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ns else "-"


def meta_text(meta: bytes) -> str:
    return meta.decode("utf-8", errors="replace")


@card.group("saves")
def saves_group() -> None:
    """Game saves on a memory card: `ls` them, `export` and `import` one, `rm` one, `copy` a
    title's saves between a user's cards.

    CARD may also be an HDD image with an internal memory (the saves of a card-less console)."""


def entry_dict(s: Save, ok: bool) -> dict[str, Any]:
    return {
        "title_id": s.title_id,
        "name": s.name,
        "size": s.size,
        "modified": modified(s.modified),
        "meta": meta_text(s.meta),
        "verified": ok,
    }


@saves_group.command("ls")
@click.argument("image", metavar="CARD", type=PATH)
@json_option
def saves_ls(image: Path, as_json: bool) -> None:
    """List the saves on CARD, with the space used and free. A save that does not verify (edited,
    or copied from another card) is marked."""
    with open_card(image) as img:
        state = img.state
        key = img.save_key() if img.card.registered else None
        rows = [entry_dict(s, key is not None and sv.verify_entry(key, s)) for s in img.saves]
    d = {"saves": rows, "capacity": state.sb.capacity, "used": state.used_bytes, "free": state.free_bytes}
    lines = [
        f"{r['title_id']:<16} {r['name']:<20} {human(r['size']):>10}  {r['modified']}  {r['meta']}"
        + ("" if r["verified"] else "  [does not verify: edited, or from another card]")
        for r in rows
    ]
    used, free, capacity = state.used_bytes, state.free_bytes, state.sb.capacity
    lines = (lines or ["(no saves)"]) + [f"{human(used)} used, {human(free)} free of {human(capacity)}"]
    emit(d, as_json=as_json, lines=lines)


def pick(img: CardImage, title_id: str, name: str | None) -> Save:
    """The save NAME of a title, or its only save when no name is given."""
    if name is not None:
        return img.find(title_id, name)
    mine = [s for s in img.saves if s.title_id == title_id]
    if not mine:
        raise StateError(f"{img.shown}: no saves of {title_id} on this card")
    if len(mine) > 1:
        raise StateError(
            f"{img.shown}: {title_id} has {len(mine)} saves; name one of " + ", ".join(s.name for s in mine)
        )
    return mine[0]


@saves_group.command("export")
@click.argument("image", metavar="CARD", type=PATH)
@click.argument("title_id", type=TITLE_ID)
@click.argument("name", required=False)
@click.option("-o", "--out", type=PATH, required=True, help="The export file to write (a new file).")
def saves_export(image: Path, title_id: str, name: str | None, out: Path) -> None:
    """Write one save of TITLE_ID from CARD to a file: the owner's copy, for a backup or another
    card of theirs (`import`). NAME may be left out when the title has one save."""
    refuse_existing(out, sv.EXPORT_WHAT)
    with open_card(image) as img:
        entry = pick(img, title_id, name)
        data = img.read_save(entry)
        user = decisions.CardView.open(img.card).require_user()
    atomic_write(
        out,
        sv.encode_export(sv.Exported(user, entry.title_id, entry.name, entry.modified, entry.meta, data)),
        mode=0o600,
    )
    click.echo(f"exported {entry.title_id}/{entry.name} ({human(entry.size)}) to {out}")


@saves_group.command("import")
@click.argument("image", metavar="CARD", type=PATH)
@click.argument("file", type=PATH)
@click.option("--force", is_flag=True, help="Replace the card's save even if it is newer than the export.")
def saves_import(image: Path, file: Path, force: bool) -> None:
    """Put a save exported by `export` onto CARD (a card of the same user), replacing the save of
    that title and name if there is one, unless the card's is newer (then only with --force)."""
    exported = sv.decode_export(read_small(file, sv.EXPORT_WHAT, limit=MAX_EXPORT), path=file)
    with open_card(image, write=True) as img:
        user = decisions.CardView.open(img.card).require_user()
        if exported.user != user:
            raise StateError(f"{file} is another user's save: saves go only to cards of their own user")
        refuse_going_back(img, image, [(exported.title_id, exported.name, exported.modified)], "the export", force)
        img.write_save(exported.title_id, exported.name, exported.data, modified=exported.modified, meta=exported.meta)
    click.echo(f"imported {exported.title_id}/{exported.name} ({human(len(exported.data))}) onto {image}")


@saves_group.command("rm")
@click.argument("image", metavar="CARD", type=PATH)
@click.argument("title_id", type=TITLE_ID)
@click.argument("name", required=False)
def saves_rm(image: Path, title_id: str, name: str | None) -> None:
    """Remove save NAME of TITLE_ID from CARD, or all of the title's saves."""
    with open_card(image, write=True) as img:
        gone = img.remove_saves(title_id, name)
        if not gone:
            raise StateError(f"{image}: no save {title_id}{'/' + name if name else ''} on this card")
    click.echo(f"removed {', '.join(f'{s.title_id}/{s.name}' for s in gone)} from {image}")


def refuse_going_back(
    img: CardImage, image: Path, incoming: list[tuple[str, str, int]], source: str, force: bool
) -> None:
    """Refuse to put a save over one of the same title and name that is newer (a step back in the
    game, lost without a word), unless ``force``; names the first such save."""
    if force:
        return
    for title_id, name, modified in incoming:
        present = img.state.catalog.save(title_id, name)
        if present is not None and present.modified > modified:
            raise StateError(
                f"{image}: its save {title_id}/{name} is newer than {source}'s (it would go back in the game)",
                hint="pass --force to replace it all the same",
            )


@saves_group.command("copy")
@click.argument("src", type=PATH)
@click.argument("dst", type=PATH)
@click.argument("title_id", type=TITLE_ID, required=False)
@click.option("--force", is_flag=True, help="Replace DST's saves even where they are newer than SRC's.")
def saves_copy(src: Path, dst: Path, title_id: str | None, force: bool) -> None:
    """Copy the saves of TITLE_ID (or all saves) from card SRC to card DST of the same user: each
    opened with SRC's key and sealed anew with DST's. Saves of the same name on DST are replaced,
    unless one of them is newer than SRC's (then nothing is copied, unless --force)."""
    if src.resolve() == dst.resolve():
        raise StateError("SRC and DST are the same card")
    with open_card(src) as a:
        user = decisions.CardView.open(a.card).require_user()
        chosen = [s for s in a.saves if title_id is None or s.title_id == title_id]
        if not chosen:
            raise StateError(f"{src}: no saves{' of ' + title_id if title_id else ''} to copy")
        plain = [(s, a.read_save(s)) for s in chosen]  # every one verified before anything is written
    with open_card(dst, write=True) as b:
        if decisions.CardView.open(b.card).require_user() != user:
            raise StateError(f"{dst} is another user's card: saves go only to cards of their own user")
        refuse_going_back(b, dst, [(s.title_id, s.name, s.modified) for s, _ in plain], str(src), force)
        b.write_saves([(s.title_id, s.name, data, s.modified, s.meta) for s, data in plain])  # all fit, or none
    click.echo(f"copied {len(plain)} save(s) from {src} to {dst}")
