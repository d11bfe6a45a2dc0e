"""Manufacturer's tools and device inspection: ``vhw card``, ``vhw hdd``, ``vhw console rom``."""

from __future__ import annotations

import hashlib
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from .. import bindings, crypto
from .. import protocol as proto
from ..devices import card as card_dev
from ..devices import rom as rom_dev
from ..devices.card import CardImage
from ..devices.files import now, refuse_existing
from ..devices.hdd import HddImage
from ..errors import ImageError, InputError, StateError, VhwError
from ..formats import card as card_fmt
from ..formats import hdd as hdd_fmt
from ..formats import rom as rom_fmt
from ..ids import Id, IdKind
from . import emit, progress_bar, vhw
from .params import SIZE
from .roles import credential_option, role_client, server_option

PATH = click.Path(path_type=Path)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


def when(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "-"


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return str(n)


def human_binary(n: float) -> str:
    """Sizes of memory cards, in the binary units their capacity is given in (8 MiB)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


# -- memory cards --------------------------------------------------------------------------------


@vhw.group()
def card() -> None:
    """Memory cards: `format` one (manufacturer), `info` shows what its owner may see, `fsck`
    checks it, `saves` manages the game saves on it."""


def register_with_server(credential: Path | None, server_url: str | None, path: str, msg: object) -> None:
    """The manufacturer's registration of a new ID, done before the device file is written."""
    if credential:
        with role_client(credential, server_url, "manufacturer") as c:
            c.call(path, msg, proto.Done)


save_size_option = click.option(
    "--size",
    "capacity",
    type=SIZE,
    default="8MiB",
    show_default=True,
    help="Capacity of the save area (the file is sparse and holds only what is written).",
)


@card.command("format")
@click.argument("out", type=PATH)
@save_size_option
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
    type=click.Path(path_type=Path, file_okay=False),
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


@card.command("fsck")
@click.argument("image", type=PATH)
@click.option(
    "--repair",
    is_flag=True,
    help="Write the generation in use anew into every copy; a card that rolled back is accepted as it is.",
)
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


# -- hard disks ------------------------------------------------------------------------------


@vhw.group()
def hdd() -> None:
    """HDD images: `format` one (manufacturer), `info` and `ls` show it and its titles, `rm`
    removes a title, `fsck` checks it."""


@hdd.command("format")
@click.argument("out", type=PATH)
@click.option(
    "--size",
    type=SIZE,
    default="40G",
    show_default=True,
    help="Nominal size; the image is sparse and holds only what is written.",
)
@click.option(
    "--with-memory",
    is_flag=True,
    help="Give the HDD an internal memory that holds a card's items and saves (card-less consoles).",
)
@click.option(
    "--memory-size",
    "capacity",
    type=SIZE,
    default="8MiB",
    show_default=True,
    help="With --with-memory: the capacity of its save area.",
)
@click.option(
    "--block-size",
    type=click.Choice(["4K", "16K", "64K"]),
    default="4K",
    show_default=True,
    help="The blocks installed titles are encrypted in: what a read authenticates at the least.",
)
@credential_option
@server_option
def hdd_format(
    out: Path,
    size: int,
    with_memory: bool,
    capacity: int,
    block_size: str,
    credential: Path | None,
    server_url: str | None,
) -> None:
    """Format a new, empty HDD image OUT with a fresh HDD-ID and a secret key.

    The secret is never shown; with --credential the HDD-ID and the secret's public key are
    registered with the licensing server first (keys it issues are sealed to it).
    """
    hdd_id, secret = Id.random(IdKind.HDD), crypto.device_secret()
    refuse_existing(out, hdd_fmt.WHAT)
    public = crypto.device_public(secret)
    register_with_server(credential, server_url, "/v1/manufacturer/hdds", proto.RegisterHdd(hdd_id, public))
    check_capacity(capacity)
    memory = new_card(credential, server_url) if with_memory else None
    HddImage.format(
        out,
        hdd_id=hdd_id,
        secret=secret,
        size=size,
        formatted=now(),
        memory=memory,
        memory_capacity=capacity,
        block_size=int(block_size[:-1]) * 1024,
    )
    click.echo(
        f"HDD-ID {hdd_id}  ({human(size)} HDD {out}, key {crypto.fingerprint(public)})"
        + (f", internal memory {memory.mc_id}" if memory else "")
    )


def new_card(credential: Path | None, server_url: str | None) -> card_fmt.Card:
    """A fresh card record (MC-ID, MC-Key), registered with the server when a credential is given."""
    c = card_fmt.Card(Id.random(IdKind.CARD), crypto.random_key(), formatted=now())
    register_with_server(credential, server_url, "/v1/manufacturer/cards", proto.RegisterCard(c.mc_id, c.mc_key))
    return c


def hdd_summary(image: HddImage) -> dict[str, Any]:
    vol = image.volume
    st = os.fstat(image.fd)
    return {
        "hdd_id": str(vol.sb.hdd_id),
        "key_fingerprint": crypto.fingerprint(image.public_key),
        "nominal_size": vol.sb.nominal_size,
        "allocated_on_host": st.st_blocks * 512,
        "free": vol.free_bytes,
        "generation": vol.sb.generation,
        "block_size": vol.sb.block_size,
        "formatted": when(vol.sb.formatted),
        "titles": [
            {
                "title_id": t.title_id,
                "name": t.name,
                "kind": t.kind,
                "state": "complete" if t.complete else f"interrupted at {t.share_done}%",
                "size": sum(f.size for f in t.files),
                "files": len(t.files),
                "installed": when(t.installed),
                "mid": str(t.mid) if t.mid else None,
            }
            for t in vol.catalog.titles
        ],
        "format_version": hdd_fmt.VERSION,
        "notes": image.notes,
        "problems": image.damage,
    }


@hdd.command("info")
@click.argument("image", type=PATH)
@json_option
def hdd_info(image: Path, as_json: bool) -> None:
    """Show an HDD image's ID, sizes and titles; exit 3 if it rolled back."""
    with HddImage.open(image, damaged=True) as img:
        d = hdd_summary(img)
    lines = [
        f"HDD image    {image}",
        f"HDD-ID       {d['hdd_id']}",
        f"device key   {d['key_fingerprint']}  (fingerprint of its public key; the secret is never shown)",
        f"size         {human(d['nominal_size'])} nominal, {human(d['allocated_on_host'])} on the host,"
        f" {human(d['free'])} free",
        f"blocks       {d['block_size'] // 1024} KiB  (titles are encrypted and read in blocks of this size)",
        f"formatted    {d['formatted']}  (generation {d['generation']})",
        f"titles       {len(d['titles'])}",
        *(f"  {t['title_id']:<16} {t['name']}  [{t['state']}]" for t in d["titles"]),
        *(f"note: {n}" for n in d["notes"]),
        *(f"problem: {p}" for p in d["problems"]),
    ]
    emit(d, as_json=as_json, lines=lines)
    if d["problems"]:
        raise ImageError(image, f"{len(d['problems'])} problem(s) found", hint="`vhw hdd fsck --repair` accepts it")


def hdd_image_path(image: Path | None, console_dir: Path | None) -> Path:
    """An HDD image given by path, or the one attached to the console."""
    if image:
        return image
    from ..console.machine import Machine  # (loaded only by the commands that need it: start-up time)

    return Machine.find(console_dir).hdd_path


@hdd.command("ls")
@click.argument("image", type=PATH, required=False)
@click.option(
    "--console",
    "console_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="List this console's HDD (when IMAGE is not given).",
)
@json_option
def hdd_ls(image: Path | None, console_dir: Path | None, as_json: bool) -> None:
    """List the titles on an HDD (the console's, unless IMAGE is given)."""
    with HddImage.open(hdd_image_path(image, console_dir)) as img:
        d = hdd_summary(img)
    emit({"titles": d["titles"]}, as_json=as_json, lines=title_table(d["titles"]))


def title_table(titles: list[dict[str, Any]]) -> list[str]:
    """The titles as a table under a header, each column as wide as its widest value."""
    if not titles:
        return ["(no titles)"]
    heads = ("title", "size", "kind", "state", "name")
    rows = [(t["title_id"], human(t["size"]), t["kind"], t["state"], t["name"]) for t in titles]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads[:-1])]

    def line(cells: tuple[str, ...]) -> str:
        size = cells[1].rjust(widths[1])
        rest = [cells[0].ljust(widths[0]), size, cells[2].ljust(widths[2]), cells[3].ljust(widths[3]), cells[4]]
        return "  ".join(rest)

    return [line(heads), *(line(r) for r in rows)]


@hdd.command("rm")
@click.argument("title_id")
@click.option("--image", type=PATH, help="The HDD image (default: the console's).")
@click.option("--console", "console_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--wait", is_flag=True, help="If another process is writing the HDD, wait for it.")
@click.option("--yes", is_flag=True, help="Remove without asking.")
def hdd_rm(title_id: str, image: Path | None, console_dir: Path | None, wait: bool, yes: bool) -> None:
    """Remove a title from an HDD; its space is reused by later installs. Its owner may install it
    again from the disc onto this HDD; asks first unless --yes."""
    path = hdd_image_path(image, console_dir)
    if not yes:
        if not sys.stdin.isatty():
            raise InputError(f"removing {title_id.upper()} from {path} needs --yes (there is no terminal to ask)")
        click.confirm(
            f"Remove {title_id.upper()} from {path}? (it installs again from its disc, onto this HDD only)",
            abort=True,
        )
    with HddImage.open(path, write=True, wait=wait, on_wait=lambda m: click.echo(m, err=True)) as img:
        title_id = title_id.upper()
        if img.volume.catalog.title(title_id) is None:
            raise StateError(f"{path}: no title {title_id} on this HDD")
        ops, vol = img.volume.remove(title_id)
        img.apply(ops, vol)
    click.echo(f"removed {title_id} from {path}")


@hdd.command("fsck")
@click.argument("image", type=PATH)
@click.option("--deep", is_flag=True, help="Also read every complete title and check its data.")
@click.option(
    "--repair",
    is_flag=True,
    help="Drop only what is unreachable (never a complete title) and rewrite damaged superblocks.",
)
def hdd_fsck(image: Path, deep: bool, repair: bool) -> None:
    """Check an HDD image (and its internal memory); exit 3 if it has problems."""
    with HddImage.open(image, write=repair, damaged=True) as img:
        total = sum(t.size for t in img.volume.catalog.titles if t.complete) if deep else 0
        if deep and total:
            with progress_bar(total, "checking") as bar:
                problems = img.check(deep=True, progress=bar.update)
        else:
            problems = img.check(deep=deep)
        for note in img.notes:
            click.echo(f"note: {note}")
        for t in img.volume.catalog.titles:
            if not t.complete:
                click.echo(
                    f"note: {t.title_id}: install interrupted at {t.share_done}%; `vhw console install` resumes it"
                )
        if repair:
            for line in img.repair():
                click.echo(f"repaired: {line}")
            problems = img.check(deep=deep)
    if problems:
        for p in problems:
            click.echo(f"problem: {p}")
        raise ImageError(image, f"{len(problems)} problem(s) found")
    click.echo(f"{image}: clean")


# -- consoles ---------------------------------------------------------------------------------


@vhw.group()
def console() -> None:
    """The console: a folder that holds its ROM, HDD, card slots and disc tray.

    The manufacturer burns a `rom`; `info` shows one. A user `setup`s the console folder (and
    `replace`s a device after a repair), puts cards and discs in and out (`insert-card`,
    `eject-card`, `insert-disc`, `eject-disc`), sees it all with `status`, `register`s the card,
    `acquire`s a disc's keys or `install`s its title onto the HDD, `mount`s and `unmount`s the HDD,
    and `play`s a title. With a broker, `account` signs the console in to the user's account.
    """


@console.command("rom")
@click.argument("out", type=PATH)
@click.option(
    "--ca",
    "ca_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The platform CA certificate (PEM) the console will trust; from `vhw server init`.",
)
@click.option(
    "--signing-cert",
    "signing_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The platform's signing certificate (PEM: signing.pem of the server home) that card tokens verify with.",
)
@click.option("--server", "server_url", default="", help="Default licensing server URL (https://...).")
@click.option("--model", default="VHW-1000", show_default=True, help="Model name in the ROM.")
@click.option(
    "--memory",
    "memory_path",
    type=PATH,
    help="Also make the console's internal memory here (it holds a card's items and saves: card-less).",
)
@click.option(
    "--memory-size",
    "capacity",
    type=SIZE,
    default="8MiB",
    show_default=True,
    help="With --memory: the capacity of its save area.",
)
@credential_option
def console_rom(
    out: Path,
    ca_path: Path | None,
    signing_path: Path | None,
    server_url: str,
    model: str,
    memory_path: Path | None,
    capacity: int,
    credential: Path | None,
) -> None:
    """Burn a console ROM OUT with a fresh Client ID and a secret key.

    The secret is never shown. With --credential (the manufacturer's), the Client ID and the
    secret's public key are registered with the licensing server first, and the ROM trusts the
    credential's CA and signing certificate and names its server unless --ca/--signing-cert/--server
    say otherwise.
    """
    from cryptography import x509  # (loaded only by the commands that need it: start-up time)
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
    )  # (loaded only by the commands that need it: start-up time)

    from ..server.home import Credential  # (loaded only by the commands that need it: start-up time)

    anchor = load_ca(ca_path) if ca_path else b""
    signer = load_ca(signing_path) if signing_path else b""
    if credential:
        cred = Credential.load(credential)
        server_url = server_url or cred.server
        if not anchor:
            anchor = x509.load_pem_x509_certificate(cred.ca.encode()).public_bytes(Encoding.DER)
        if not signer and cred.signing:
            signer = x509.load_pem_x509_certificate(cred.signing.encode()).public_bytes(Encoding.DER)
    rom = rom_fmt.Rom(
        Id.random(IdKind.CLIENT),
        now(),
        crypto.device_secret(),
        model=model,
        server_url=server_url,
        trust_anchor=anchor,
        token_anchor=signer,
    )
    refuse_existing(out, rom_fmt.WHAT)
    if memory_path:
        refuse_existing(memory_path, "console memory")
        check_capacity(capacity)
    register_with_server(
        credential,
        server_url or None,
        "/v1/manufacturer/consoles",
        proto.RegisterConsole(rom.client_id, rom.public_key),
    )
    if memory_path:
        card_dev.create(memory_path, new_card(credential, server_url or None), capacity=capacity)
    rom_dev.burn(out, rom)
    click.echo(
        f"Client ID {rom.client_id}  (console ROM {out}, key {crypto.fingerprint(rom.public_key)})"
        + (f", internal memory {memory_path}" if memory_path else "")
    )


def load_ca(path: Path) -> bytes:
    """A CA certificate (PEM or DER) as DER; refuses anything that is not one."""
    from cryptography import x509  # (loaded only by the commands that need it: start-up time)
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
    )  # (loaded only by the commands that need it: start-up time)

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(path, f"cannot read CA certificate: {exc.strerror}") from None
    try:
        cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except ValueError:
        raise ImageError(path, "not an X.509 certificate") from None
    return cert.public_bytes(Encoding.DER)


def rom_summary(rom: rom_fmt.Rom) -> dict[str, Any]:
    from cryptography import x509  # (loaded only by the commands that need it: start-up time)

    anchor = signer = None
    if rom.trust_anchor:
        cert = x509.load_der_x509_certificate(rom.trust_anchor)
        anchor = {"subject": cert.subject.rfc4514_string(), "sha256": hashlib.sha256(rom.trust_anchor).hexdigest()}
    if rom.token_anchor:
        cert = x509.load_der_x509_certificate(rom.token_anchor)
        signer = {"subject": cert.subject.rfc4514_string(), "sha256": hashlib.sha256(rom.token_anchor).hexdigest()}
    return {
        "client_id": str(rom.client_id),
        "key_fingerprint": crypto.fingerprint(rom.public_key),
        "model": rom.model,
        "manufactured": when(rom.manufactured),
        "server_url": rom.server_url or None,
        "trust_anchor": anchor,
        "token_anchor": signer,
        "hardware_ids": {k: f"{v:08X}" for k, v in rom.hardware_ids.items()},
        "format_version": rom_fmt.VERSION,
    }


@console.command("info")
@click.argument("rom_path", metavar="ROM", type=PATH)
@json_option
def console_info(rom_path: Path, as_json: bool) -> None:
    """Show a console ROM: Client ID, model, trusted CA, server address."""
    d = rom_summary(rom_dev.load(rom_path))
    anchor, signer = d["trust_anchor"], d["token_anchor"]
    lines = [
        f"console ROM  {rom_path}",
        f"Client ID    {d['client_id']}",
        f"device key   {d['key_fingerprint']}  (fingerprint of its public key; the secret is never shown)",
        f"model        {d['model']}, made {d['manufactured']}",
        f"server       {d['server_url'] or '(none)'}",
        f"trusts CA    {anchor['subject'] + ' sha256 ' + anchor['sha256'][:16] if anchor else '(none yet)'}",
        f"tokens from  {signer['subject'] + ' sha256 ' + signer['sha256'][:16] if signer else '(none yet)'}",
        "hardware IDs " + ", ".join(f"{k} {v}" for k, v in d["hardware_ids"].items()),
    ]
    emit(d, as_json=as_json, lines=lines)
