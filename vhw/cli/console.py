"""The console's tools: the manufacturer's ``vhw console rom|info``, and the user's ``vhw console
setup|replace|insert-card|eject-card|insert-disc|eject-disc|status|register|acquire|install|mount|
unmount|play|account``."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import click

from .. import crypto
from .. import protocol as proto
from ..console import decisions, processes
from ..console.machine import SLOTS, Machine
from ..devices import card as card_dev
from ..devices import holders
from ..devices import rom as rom_dev
from ..devices.disc import DiscImage
from ..devices.files import now, read_small, refuse_existing
from ..errors import ImageError, TitleEnded
from ..formats import rom as rom_fmt
from ..ids import Id, IdKind
from . import ProgressBar, emit, progress_bar, vhw
from .card import check_capacity, new_card, save_area_option
from .params import FILE, FOLDER, PATH, json_option, password_option, when
from .roles import credential_option, register_with_server


@vhw.group()
def console() -> None:
    """The console: a folder that holds its ROM, HDD, card slots and disc tray.

    The manufacturer burns a `rom`; `info` shows one. A user `setup`s the console folder (and
    `replace`s a device after a repair), puts cards and discs in and out (`insert-card`,
    `eject-card`, `insert-disc`, `eject-disc`), sees it all with `status`, `register`s the card,
    `acquire`s a disc's keys or `install`s its title onto the HDD, `mount`s and `unmount`s the HDD,
    and `play`s a title. With a broker, `account` signs the console in to the user's account. `trust`
    shows the platform CAs it trusts (and adds one by hand after a CA rollover it missed).
    """


@console.command("rom")
@click.argument("out", type=PATH)
@click.option(
    "--ca",
    "ca_path",
    type=FILE,
    help="The platform CA certificate (PEM) the console will trust; from `vhw server init`.",
)
@click.option(
    "--signing-cert",
    "signing_path",
    type=FILE,
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
@save_area_option("--memory-size", "With --memory: the capacity of its save area.")
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

    from ..server.credentials import Credential  # (loaded only by the commands that need it: start-up time)

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

    data = read_small(path, "CA certificate")
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


# -- the user's console ---------------------------------------------------------------------------

console_option = click.option(
    "--console",
    "console_dir",
    type=FOLDER,
    help="The console's folder (default: $VHW_CONSOLE, else the current folder).",
)
slot_option = click.option("--slot", type=click.Choice(SLOTS), default="1", show_default=True, help="Memory card slot.")


def machine(console_dir: Path | None) -> Machine:
    m = Machine.find(console_dir)
    m.log = lambda msg: click.echo(msg, err=True)
    holders.act_for(m.root, click.get_current_context().command_path)  # (named to whoever waits for a lock)
    return m


@console.command("setup")
@click.argument("folder", type=FOLDER)
@click.option("--rom", type=PATH, required=True, help="The console's ROM (vhw console rom).")
@click.option("--hdd", type=PATH, required=True, help="The HDD attached to it (vhw hdd format).")
@click.option("--server", help="Licensing server or broker URL, if not the one in the ROM.")
@click.option(
    "--memory",
    help="Card-less: keep the card's items in the HDD's internal memory (`hdd`) or"
    " in the console's (the file made by `vhw console rom --memory`).",
)
def console_setup(folder: Path, rom: Path, hdd: Path, server: str | None, memory: str | None) -> None:
    """Set up a console in FOLDER: which ROM it has and which HDD is attached.

    Afterwards the everyday commands need no paths: run them in FOLDER, or pass --console FOLDER,
    or set VHW_CONSOLE=FOLDER.
    """
    m = Machine.setup(folder, rom=rom, hdd=hdd, server=server, memory=memory)
    click.echo(f"console set up in {m.root}: Client ID {m.rom().client_id}, HDD-ID {m.hdd_id()}")
    unreachable = m.modem.unreachable()
    if unreachable:  # (set up all the same: a console may be set up offline)
        click.echo(
            f"note: {unreachable}: the console is set up, and needs the server to register and install", err=True
        )


@console.command("trust")
@click.option(
    "--add",
    "add",
    type=PATH,
    help="Also trust this CA certificate (PEM or DER), as the operator hands it out: for a console"
    " that was offline through a CA rollover.",
)
@console_option
@json_option
def console_trust(add: Path | None, console_dir: Path | None, as_json: bool) -> None:
    """Show the platform CAs this console trusts: its ROM's, or those it took in a CA rollover
    (it follows one by itself whenever it talks to the service)."""
    from cryptography import x509  # (loaded only by the commands that need it: start-up time)

    from .. import pki

    m = machine(console_dir)
    rom = m.rom()
    anchors = m.modem.anchors(rom)
    if add is not None:
        der = load_ca(add)
        if not pki.is_ca(x509.load_der_x509_certificate(der)):
            raise ImageError(add, "not a CA certificate valid today (self-signed, CA:TRUE)")
        if der not in anchors:
            anchors = [*anchors, der]
            m.modem.trust(anchors)
    rows = []
    for der in anchors:
        cert = x509.load_der_x509_certificate(der)
        rows.append(
            {
                "subject": cert.subject.rfc4514_string(),
                "sha256": hashlib.sha256(der).hexdigest(),
                "expires": cert.not_valid_after_utc.strftime("%Y-%m-%d"),
                "from": "ROM" if der == rom.trust_anchor else "rollover",
            }
        )
    lines = [f"{r['subject']}  sha256 {r['sha256'][:16]}  until {r['expires']}  ({r['from']})" for r in rows]
    emit({"anchors": rows}, as_json=as_json, lines=lines)


@console.command("replace")
@click.option("--rom", type=PATH, help="The repaired or exchanged console's new ROM.")
@click.option("--hdd", type=PATH, help="The exchanged HDD.")
@console_option
def console_replace(rom: Path | None, hdd: Path | None, console_dir: Path | None) -> None:
    """After a repair (FIG. 13): put the new ROM or HDD into this console's set-up, keeping its
    slots, tray and server. Then install again from the discs (`vhw console install`)."""
    if not rom and not hdd:
        raise click.UsageError("name the new device: --rom and/or --hdd")
    m = machine(console_dir)
    m.replace_device(rom=rom, hdd=hdd)
    click.echo(f"console {m.root}: Client ID {m.rom().client_id}, HDD-ID {m.hdd_id()}")


@console.command("insert-card")
@click.argument("card", type=PATH)
@slot_option
@console_option
def console_insert_card(card: Path, slot: str, console_dir: Path | None) -> None:
    """Put memory card CARD into a slot."""
    c = machine(console_dir).insert_card(card, slot)
    click.echo(f"memory card {c.mc_id} in slot {slot}")


@console.command("eject-card")
@slot_option
@console_option
def console_eject_card(slot: str, console_dir: Path | None) -> None:
    """Take the memory card out of a slot."""
    was = machine(console_dir).eject_card(slot)
    click.echo(f"ejected {was} from slot {slot}" if was else f"slot {slot} was empty")


@console.command("insert-disc")
@click.argument("disc", type=PATH)
@console_option
def console_insert_disc(disc: Path, console_dir: Path | None) -> None:
    """Put disc DISC into the tray."""
    d = machine(console_dir).insert_disc(disc)
    click.echo(f"disc {d.manifest.title_id} {d.manifest.name!r} in the tray")


@console.command("eject-disc")
@console_option
def console_eject_disc(console_dir: Path | None) -> None:
    """Take the disc out of the tray."""
    was = machine(console_dir).eject_disc()
    click.echo(f"ejected {was}" if was else "the tray was empty")


@console.command("status")
@console_option
@json_option
def console_status(console_dir: Path | None, as_json: bool) -> None:
    """Show the console: ROM, HDD, cards in the slots, disc in the tray."""
    m = machine(console_dir)
    cfg = m.config()
    rom = m.rom()
    d: dict[str, Any] = {
        "folder": str(m.root),
        "client_id": str(rom.client_id),
        "hdd": cfg.hdd,
        "hdd_id": str(m.hdd_id()),
        "server": m.modem.url(rom) or None,
        "slots": {},
        "tray": None,
    }
    if cfg.memory:
        view = decisions.CardView.open(m.card().load())
        d["memory"] = {
            "where": cfg.memory,
            "mc_id": str(view.card.mc_id),
            "user_id": str(view.require_user()) if view.card.registered else None,
        }
    for slot, path in cfg.slots.items():
        if path:
            view = decisions.CardView.open(card_dev.load(Path(path)))
            user = str(view.require_user()) if view.card.registered else None
            d["slots"][slot] = {"path": path, "mc_id": str(view.card.mc_id), "user_id": user}
        else:
            d["slots"][slot] = None
    if cfg.tray:
        with DiscImage.open(Path(cfg.tray)) as disc:
            d["tray"] = {
                "path": cfg.tray,
                "title_id": disc.manifest.title_id,
                "mid": str(disc.disc.mid) if disc.disc.mid else None,
            }
    lines = [
        f"console      {d['folder']}",
        f"Client ID    {d['client_id']}",
        f"HDD          {d['hdd_id']}  ({d['hdd']})",
        f"server       {d['server'] or '(none)'}",
        *(
            f"slot {s}       "
            + (
                f"{v['mc_id']}  " + (f"User ID {v['user_id']}" if v["user_id"] else "not registered")
                if v
                else "(empty)"
            )
            for s, v in d["slots"].items()
        ),
        "tray         " + (f"{d['tray']['title_id']}  MID {d['tray']['mid']}" if d["tray"] else "(empty)"),
        *([f"memory       card-less, in {d['memory']['where']}: {d['memory']['mc_id']}"] if d.get("memory") else []),
    ]
    emit(d, as_json=as_json, lines=lines)


@console.command("register")
@slot_option
@console_option
def console_register(slot: str, console_dir: Path | None) -> None:
    """Register the user of the card in SLOT with the licensing server (S1-S7).

    Prints the User ID: write it down, it is what a lost card is reissued with.
    """
    user = machine(console_dir).register(slot)
    click.echo(f"registered: User ID {user}  (write it down: a lost card is reissued with it)")


@console.command("acquire")
@slot_option
@console_option
def console_acquire(slot: str, console_dir: Path | None) -> None:
    """Register the disc in the tray and acquire its keys onto the card (S11-S17).

    `vhw console install` does this itself; this command is the first half alone.
    """
    m = machine(console_dir)
    title_id, mid = m.acquire(slot)
    click.echo(f"acquired the keys of {title_id} for disc {mid}; they are on {m.card(slot).called}")


@console.command("install")
@slot_option
@click.option("--wait", is_flag=True, help="If another process is writing the HDD, wait for it.")
@console_option
def console_install(slot: str, wait: bool, console_dir: Path | None) -> None:
    """Install the disc in the tray onto the HDD (S21-S28).

    Acquires the disc's keys first when the card has none for it (S11-S17), checks that the card's
    keys were issued for this console and this HDD, re-encrypts the title onto the HDD, and once
    the copy is complete and durable confirms with the server and deletes the Content-Key from
    the card. An interrupted install is resumed by running this again.
    """
    m = machine(console_dir)
    bar: ProgressBar | None = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = progress_bar(total, "installing").__enter__()
        bar.update(done - bar.done)

    try:
        title_id, outcome = m.install(slot, wait=wait, progress=progress)
    except KeyboardInterrupt:
        raise KeyboardInterrupt("run the same command again to resume the install where it stopped") from None
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    said = {
        "installed": "installed",
        "resumed": "resumed and installed",
        "confirmed": "was already copied; the install is now confirmed",
    }[outcome]
    click.echo(f"{title_id} {said}; its Content-Key is deleted from {m.card(slot).called}")


@console.command("mount")
@click.argument("mountpoint", type=FOLDER)
@click.option("--foreground", is_flag=True, help="Stay in the foreground until unmounted (Ctrl-C unmounts).")
@click.option("--nonempty", is_flag=True, help="Mount over a folder that holds files (hidden while mounted).")
@slot_option
@console_option
def console_mount(mountpoint: Path, foreground: bool, nonempty: bool, slot: str, console_dir: Path | None) -> None:
    """Mount the console's HDD at MOUNTPOINT, read-only, one folder per title (S31-S35).

    Only when the memory card's sealed Client ID and HDD-ID are this console's and this HDD's;
    otherwise no title can be read. Titles installed with another card are listed, not readable.
    """
    m = machine(console_dir)
    if foreground:
        spawned = _spawned(m)

        def ready() -> None:
            click.echo(f"mounted {m.hdd_path.name} at {mountpoint}")
            sys.stdout.flush()
            if spawned:  # a parent waiting for this line: nothing more on this pipe
                _mounted()

        m.serve_mount(mountpoint, slot, ready=ready)
        return
    pid = m.mount(mountpoint, slot, nonempty=nonempty)
    click.echo(f"mounted at {mountpoint} (process {pid}); `vhw console unmount {mountpoint}` ends it")


@console.command("unmount")
@click.argument("mountpoint", type=FOLDER)
@console_option
def console_unmount(mountpoint: Path, console_dir: Path | None) -> None:
    """Unmount a mount made by `vhw console mount`."""
    from ..console.machine import Machine  # (loaded only by the commands that need it: start-up time)

    try:
        m = Machine.find(console_dir)
    except Exception:
        from ..console.mountpoints import unmount  # (loaded only by the commands that need it: start-up time)

        unmount(mountpoint)
    else:
        m.unmount(mountpoint)
    click.echo(f"unmounted {mountpoint}")


PLAY_OPTIONS = ("--console", "--slot", "--save-slot")  # vhw's own, which the title does not get


@console.command("play", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("title_id")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@slot_option
@click.option(
    "--save-slot",
    type=click.Choice(SLOTS),
    help="Keep the title's saves on the card in this slot (default: the --slot card).",
)
@console_option
def console_play(
    title_id: str, args: tuple[str, ...], slot: str, save_slot: str | None, console_dir: Path | None
) -> None:
    """Play TITLE_ID: run its entry point from the mount (mounting the HDD for as long as it runs).

    The title gets a writable save folder on the memory card (VHW_SAVE_DIR); with no card in the
    save slot it runs, but cannot save. Anything after the title ID goes to the title, so put vhw's
    own options before it: `vhw console play --console DIR VHW-GAME-1 --moves ddss` (one of them
    after the title ID is refused, not passed on). A title that ends with a status of its own other
    than 0 (an unfinished game) ends play with exit code 18, and the status is shown.
    """
    own = [a for a in args if a.split("=", 1)[0] in PLAY_OPTIONS]
    if own:
        raise click.UsageError(
            f"{own[0].split('=', 1)[0]} comes after the title ID, where everything goes to the title:"
            f" put vhw's own options before it (`vhw console play {own[0].split('=', 1)[0]} ... {title_id}`)"
        )
    rc = machine(console_dir).play(title_id, list(args), slot, save_slot=save_slot)
    if rc < 0:
        raise TitleEnded(f"{title_id} was stopped by signal {-rc}")
    if rc:
        raise TitleEnded(f"{title_id} ended with status {rc} (its own: an unfinished game, or the title failed)")


@console.command("saves-mount", hidden=True)
@click.argument("mountpoint", type=FOLDER)
@click.option("--title", "title_id", required=True)
@slot_option
@console_option
def console_saves_mount(mountpoint: Path, title_id: str, slot: str, console_dir: Path | None) -> None:
    """Serve the save folder of TITLE on the card in SLOT at MOUNTPOINT until unmounted (play runs this)."""
    m = machine(console_dir)
    _spawned(m)

    def ready() -> None:
        click.echo(f"mounted the save folder of {title_id} at {mountpoint}")
        sys.stdout.flush()
        _mounted()

    m.serve_saves(mountpoint, title_id.upper(), slot, ready=ready)


def _spawned(m: Machine) -> bool:
    """In a mount that a vhw process started and waits for: it ends with that process until it has
    mounted, and what it would tell the user (a lock it waits for) goes to that process at once."""
    if not os.environ.get(processes.SPAWNED_BY):
        return False
    processes.die_with_parent()

    def tell(msg: str) -> None:
        click.echo(msg)
        sys.stdout.flush()

    m.log = tell
    return True


def _mounted() -> None:
    """The parent has its "mounted" line: nothing more on this pipe, and the mount stays on its own."""
    processes.outlive_parent()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


@console.command("account")
@click.argument("name")
@password_option("The account's password (asked when not given).")
@console_option
def console_account(name: str, password: str, console_dir: Path | None) -> None:
    """Sign this console in to its broker as account NAME, which it then pays with (FIG. 15).

    Set the console up with `--server BROKER_URL` first. The broker checks the name and password
    and answers with a token: the console keeps the token (never the password), and every request
    carries it.
    """
    name = machine(console_dir).modem.sign_in(name, password)
    click.echo(f"this console uses broker account {name} (signed in: it keeps a token, not the password)")
