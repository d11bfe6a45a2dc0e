"""Publisher's tools: ``vhw disc master|press|info|verify|extract``."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import click

from .. import protocol as proto
from ..devices.disc import DiscImage
from ..devices.files import refuse_existing
from ..errors import VhwError
from ..formats import disc as fmt
from ..ids import Id
from ..publisher import mastering
from ..publisher.keystore import KeyStore
from . import App, emit, pass_app, progress_bar, vhw
from .params import FOLDER, PATH, TITLE_ID, PathType, human, json_option, when
from .roles import credential_option, role_client, server_option

MIDS_PER_REQUEST = 1000  # the server's limit per registration request

keystore_option = click.option(
    "--keystore", type=FOLDER, help="The publisher's key store folder (default: $VHW_HOME/publisher)."
)


def open_keystore(app: App, path: Path | None) -> KeyStore:
    return KeyStore(path or app.keystore_dir)


@vhw.group()
def disc() -> None:
    """Discs: `master` a title into a master image, `press` discs with unique MIDs from it,
    `register` both with the server (if not done then), `info` and `verify` discs, `extract` a
    disc's files with the publisher's key store (to check it)."""


@disc.command("master")
@click.argument("src", type=PathType(path_type=Path, file_okay=False, exists=True))
@click.option("-o", "--out", type=PATH, required=True, help="The master image to write.")
@click.option("--title-id", type=TITLE_ID, required=True, help="The title's ID, e.g. VHW-00001.")
@click.option("--name", help="The title's name (default: from vhw-title.json, else the title ID).")
@click.option("--kind", type=click.Choice(fmt.KINDS), help="What the title is (default: from vhw-title.json).")
@click.option("--entry", help="The file that plays the title (default: from vhw-title.json).")
@keystore_option
@credential_option
@server_option
@pass_app
def disc_master(
    app: App,
    src: Path,
    out: Path,
    title_id: str,
    name: str | None,
    kind: str | None,
    entry: str | None,
    keystore: Path | None,
    credential: Path | None,
    server_url: str | None,
) -> None:
    """Encrypt the title files in SRC into a master image under a fresh Content-Key.

    The Content-Key stays in the publisher's key store (never on the disc); the manifest is signed
    with the publisher's key. With --credential (the publisher's), the title's Content-Key and
    digest are registered with the licensing server: the credential and the server are checked
    before anything is written, and if the registration fails after all, the master is kept and
    `vhw disc register` registers it later.
    """
    ks = open_keystore(app, keystore)
    if credential:  # a wrong credential or an unreachable server: said before an hour of mastering
        check_publisher(credential, server_url)
    total = sum(f.size for f in mastering.scan(src))
    with progress_bar(total, f"mastering {title_id}") as bar:
        d = mastering.master(
            src, out, title_id=title_id, name=name, keystore=ks, kind=kind, entry=entry, progress=bar.update
        )
    click.echo(
        f"master {out}: {d.manifest.title_id} {d.manifest.name!r}, {len(d.manifest.files)} files,"
        f" {human(sum(f.size for f in d.manifest.files))}"
    )
    if credential:
        try:
            register_title(ks, title_id, credential, server_url)
        except VhwError as exc:
            exc.hint = (
                f"the master {out} is written and its key kept: `vhw disc register {out} --credential"
                f" {credential}` registers it when the server answers"
            )
            raise
        click.echo(f"registered {title_id} with the licensing server")


def check_publisher(credential: Path, server_url: str | None) -> None:
    """The publisher's credential loads and is the publisher's, and its server answers over TLS
    with the platform's certificate (the token itself is checked by the first call that uses it)."""
    with role_client(credential, server_url, "publisher") as c:
        c.get("/v1/health", proto.Health)


def register_title(ks: KeyStore, title_id: str, credential: Path, server_url: str | None) -> None:
    keys = ks.title(title_id)
    with role_client(credential, server_url, "publisher") as c:
        c.call(
            "/v1/publisher/titles",
            proto.RegisterTitle(title_id, keys.name, keys.content_key, keys.title_digest),
            proto.Done,
        )
    keys.registered = True
    ks.save_title(keys)


def register_mids(title_id: str, discs: list[tuple[Id, bytes]], credential: Path, server_url: str | None) -> None:
    """Register pressed MIDs, each with the public key of its disc's secret."""
    items = [proto.PressedDisc(mid, key) for mid, key in discs]
    with role_client(credential, server_url, "publisher") as c:
        for i in range(0, len(items), MIDS_PER_REQUEST):
            c.call(
                "/v1/publisher/media", proto.RegisterMedia(title_id, tuple(items[i : i + MIDS_PER_REQUEST])), proto.Done
            )


@disc.command("press")
@click.argument("master", type=PATH)
@click.option("--count", type=click.IntRange(1, 100000), default=1, show_default=True)
@click.option("-o", "--out", "out_dir", type=FOLDER, required=True, help="Folder for the pressed disc images.")
@click.option("--no-mid", is_flag=True, help="Press discs without a MID (installed for a fee).")
@keystore_option
@credential_option
@server_option
@pass_app
def disc_press(
    app: App,
    master: Path,
    count: int,
    out_dir: Path,
    no_mid: bool,
    keystore: Path | None,
    credential: Path | None,
    server_url: str | None,
) -> None:
    """Press COUNT discs from MASTER, each with its own MID (signed by the publisher).

    With --credential, the new MIDs are registered with the licensing server before any disc is
    written.
    """
    ks = open_keystore(app, keystore)
    register = (lambda title_id, mids: register_mids(title_id, mids, credential, server_url)) if credential else None
    try:
        total = count * master.stat().st_size
    except OSError:
        total = 0  # (press names what is wrong with the master)
    with progress_bar(total, f"pressing {count} disc{'s' if count > 1 else ''}") as bar:
        made = mastering.press(
            master, out_dir, count=count, keystore=ks, with_mid=not no_mid, register=register, progress=bar.update
        )
    for path, mid in made:
        click.echo(f"{path}  MID {mid}" if mid else f"{path}  (no MID)")


def disc_summary(image: DiscImage) -> dict[str, Any]:
    d, m = image.disc, image.manifest
    return {
        "title_id": m.title_id,
        "name": m.name,
        "kind": m.kind,
        "entry": m.entry,
        "pressing": d.pressing.name.lower().replace("_", "-"),
        "mid": str(d.mid) if d.mid else None,
        "files": len(m.files),
        "size": sum(f.size for f in m.files),
        "image_size": d.image_size,
        "mastered": when(m.mastered),
        "title_version": m.title_version,
        "installer": {"name": m.installer_name, "version": m.installer_version, "required_space": m.data_length},
        "publisher_key": hashlib.sha256(m.publisher_key).hexdigest()[:32],
        "title_digest": d.title_digest.hex(),
        "metadata": m.metadata,
        "format_version": fmt.VERSION,
    }


@disc.command("register")
@click.argument("title", metavar="MASTER_OR_TITLE_ID")
@keystore_option
@credential_option
@server_option
@pass_app
def disc_register(app: App, title: str, keystore: Path | None, credential: Path | None, server_url: str | None) -> None:
    """Register a title (Content-Key, digest) and every MID pressed of it with the licensing server.

    Safe to repeat: what the server already has is left as it is.
    """
    if not credential:
        raise click.UsageError("--credential (the publisher's) is required")
    ks = open_keystore(app, keystore)
    if Path(title).is_file():
        with DiscImage.open(Path(title)) as img:
            title = img.manifest.title_id
    title = title.upper()
    register_title(ks, title, credential, server_url)
    discs = [(Id.parse(m), bytes.fromhex(k)) for m, k in ks.title(title).discs.items()]
    if discs:
        register_mids(title, discs, credential, server_url)
    click.echo(f"registered {title} and {len(discs)} MIDs with the licensing server")


@disc.command("info")
@click.argument("images", metavar="IMAGE...", type=PATH, nargs=-1, required=True)
@json_option
@click.option("--files", "list_files", is_flag=True, help="Also list the title's files.")
def disc_info(images: tuple[Path, ...], as_json: bool, list_files: bool) -> None:
    """Show discs: title, MID, files, sizes, publisher (one after another; --json: a list when
    several are given)."""
    shown = []
    for image in images:
        with DiscImage.open(image) as img:
            d = disc_summary(img)
            if list_files:
                d["file_list"] = [{"path": f.path, "size": f.size} for f in img.manifest.files]
        shown.append((image, d))
    if as_json:
        emit(shown[0][1] if len(shown) == 1 else {"discs": [d for _, d in shown]}, as_json=True)
        return
    for n, (image, d) in enumerate(shown):
        if n:
            click.echo("")
        emit(d, as_json=False, lines=_info_lines(image, d))


def _info_lines(image: Path, d: dict[str, Any]) -> list[str]:
    return [
        f"disc image   {image}",
        f"title        {d['title_id']}  {d['name']!r}  ({d['kind']}, entry {d['entry'] or '-'})",
        f"MID          {d['mid'] or ('none: ' + d['pressing'])}",
        f"contents     {d['files']} files, {human(d['size'])}; image {human(d['image_size'])}",
        f"mastered     {d['mastered']}, publisher key {d['publisher_key'][:16]}",
        f"installer    {d['installer']['name']} v{d['installer']['version']},"
        f" needs {human(d['installer']['required_space'])} on the HDD",
        *(f"  {f['path']}  {human(f['size'])}" for f in d.get("file_list", [])),
    ]


@disc.command("verify")
@click.argument("images", metavar="IMAGE...", type=PATH, nargs=-1, required=True)
@keystore_option
@pass_app
def disc_verify(app: App, images: tuple[Path, ...], keystore: Path | None) -> None:
    """Check discs completely: signatures, every byte against the signed manifest and, when the
    key store holds the title's Content-Key, every chunk's authentication. Stops at the first
    that fails, naming it."""
    ks = open_keystore(app, keystore)
    for image in images:
        _verify(ks, image)


def _verify(ks: KeyStore, image: Path) -> None:
    with DiscImage.open(image) as img:
        m = img.manifest
        with progress_bar(m.data_length, "verifying") as bar:
            img.verify(progress=bar.update)
        decrypted = False
        if ks.has_title(m.title_id):
            key = ks.title(m.title_id).content_key
            for f in m.files:
                for _ in img.decrypt(f, key):
                    pass
            decrypted = True
    click.echo(f"{image}: OK" + (" (decrypted with the publisher's Content-Key)" if decrypted else ""))


@disc.command("extract")
@click.argument("image", type=PATH)
@click.option("-o", "--out", "out_dir", type=FOLDER, required=True)
@keystore_option
@pass_app
def disc_extract(app: App, image: Path, out_dir: Path, keystore: Path | None) -> None:
    """Decrypt a disc's files into OUT with the publisher's Content-Key (publisher's check)."""
    ks = open_keystore(app, keystore)
    refuse_existing(out_dir, "folder")
    with DiscImage.open(image) as img:
        key = ks.title(img.manifest.title_id).content_key
        tmp = out_dir.parent / f".{out_dir.name}.{os.getpid()}.tmp"
        tmp.mkdir(parents=True)
        try:
            with progress_bar(sum(f.size for f in img.manifest.files), "extracting") as bar:
                for f in img.manifest.files:
                    target = tmp / f.path
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with open(target, "wb") as w:
                        for _, chunk in img.decrypt(f, key):
                            w.write(chunk)
                            bar.update(len(chunk))
                    if f.executable:
                        target.chmod(0o755)
            tmp.rename(out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    click.echo(f"extracted {len(img.manifest.files)} files into {out_dir}")
