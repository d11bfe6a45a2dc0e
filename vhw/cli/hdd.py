"""The HDD's tools: ``vhw hdd format|info|ls|rm|fsck``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from .. import crypto
from .. import protocol as proto
from ..devices.files import now, refuse_existing
from ..devices.hdd import HddImage
from ..errors import ImageError, InputError, StateError
from ..formats import hdd as hdd_fmt
from ..ids import Id, IdKind
from . import emit, progress_bar, vhw
from .card import check_capacity, new_card, save_area_option
from .params import FOLDER, PATH, SIZE, human, json_option, when
from .roles import credential_option, register_with_server, server_option

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
@save_area_option("--memory-size", "With --with-memory: the capacity of its save area.")
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
@click.option("--console", "console_dir", type=FOLDER, help="List this console's HDD (when IMAGE is not given).")
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
@click.option("--console", "console_dir", type=FOLDER)
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
