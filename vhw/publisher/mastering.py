"""Mastering and pressing (FIG. 4): the publisher's side of a disc.

``master`` encrypts a folder of title files under a fresh Content-Key into a master image, streaming
one 64 KiB chunk at a time (memory stays flat whatever the title's size), signs the manifest with
the publisher's key and keeps the Content-Key in the publisher's key store, never on the disc.
``press`` makes discs from a master: each a copy whose MID area holds a new MID (or none).

A title folder may hold ``vhw-title.json`` with ``name``, ``kind`` (game, music, movie,
application), ``entry`` (the file that plays it) and anything else as metadata; it describes the
title and is not itself one of its files.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from .. import crypto
from ..devices import disc as disc_dev
from ..devices.files import describe_os_error, fsync_dir, now, refuse_existing, write_error
from ..errors import FileError, ImageError, StateError
from ..formats import disc as fmt
from ..formats.common import valid_relpath, valid_title_id
from ..ids import Id, IdKind
from .keystore import KeyStore, TitleKeys

__all__ = ["master", "press", "scan"]


TITLE_FILE = "vhw-title.json"
WRITE_BUFFER = 1024 * 1024  # batch sealed chunks into 1 MiB writes


@dataclass(frozen=True)
class SourceFile:
    path: str  # relative, '/'-separated
    real: Path
    size: int
    executable: bool


def read_title_info(src: Path) -> dict[str, Any]:
    path = src / TITLE_FILE
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FileError(path, f"not a valid title description ({exc})") from None
    if not isinstance(info, dict):
        raise FileError(path, "not a valid title description (must be a JSON object)")
    if "network" in info:
        raise FileError(
            path,
            'asks for the network ("network"): titles run without it',
            hint='remove "network" from the title description; a title reaches nothing outside its sandbox',
        )
    return info


def scan(src: Path) -> list[SourceFile]:
    """The title's files, in a stable order; symlinks and special files are refused."""
    src = Path(src)
    if not src.is_dir():
        raise FileError(src, "is not a folder of title files")
    out = []
    for folder, dirs, files in os.walk(src):
        dirs.sort()
        for name in sorted(files):
            real = Path(folder) / name
            rel = real.relative_to(src).as_posix()
            try:
                rel.encode()
            except UnicodeEncodeError:  # os.walk hands bytes that are not UTF-8 over as surrogates
                shown = os.fsencode(real).decode(errors="backslashreplace")
                raise FileError(
                    shown, "has a name that is not UTF-8 (file names on a disc are UTF-8): rename it"
                ) from None
            if rel == TITLE_FILE:
                continue
            st = real.lstat()
            if not stat.S_ISREG(st.st_mode):
                raise FileError(real, "is not a regular file (symlinks and devices cannot be mastered)")
            if not valid_relpath(rel):
                raise FileError(real, "has a name that cannot go on a disc")
            out.append(SourceFile(rel, real, st.st_size, bool(st.st_mode & 0o111)))
        for d in dirs:
            if (Path(folder) / d).is_symlink():
                raise FileError(Path(folder) / d, "is a symlink (cannot be mastered)")
    if not out:
        raise FileError(src, "holds no files to master")
    return out


def master(
    src: Path,
    out: Path,
    *,
    title_id: str,
    name: str | None,
    keystore: KeyStore,
    kind: str | None = None,
    entry: str | None = None,
    progress: Callable[[int], None] | None = None,
    clock: Callable[[], int] = now,
) -> fmt.Disc:
    """Encrypt ``src`` into the master image ``out``; return its description."""
    src, out = Path(src), Path(out)
    if not valid_title_id(title_id):
        raise StateError(f"{title_id!r} is not a valid title ID (2-32 of A-Z 0-9 . _ -)")
    refuse_existing(out, "master image")
    if keystore.has_title(title_id):
        raise StateError(
            f"title {title_id} was already mastered with this key store",
            hint="give the new master its own title ID",
        )
    files = scan(src)
    signing_key = keystore.signing_key(create=True)
    manifest = _manifest(src, files, title_id, name, kind, entry, crypto.public_bytes(signing_key), clock())
    content_key = crypto.random_key()
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    try:
        disc = _write_master(tmp, files, manifest, content_key, signing_key.sign, progress)
        keystore.save_title(TitleKeys(title_id, content_key, disc.title_digest, disc.manifest.name))
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(out, "master", exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(out.parent)
    return disc


def _manifest(
    src: Path,
    files: list[SourceFile],
    title_id: str,
    name: str | None,
    kind: str | None,
    entry: str | None,
    publisher_key: bytes,
    mastered: int,
) -> fmt.Manifest:
    """The title's manifest before its data is sealed (each file's stream ID fresh, its digest not
    known yet); what ``title.json`` in ``src`` says, unless given."""
    info = read_title_info(src)
    disc_files = fmt.layout_files(
        [fmt.DiscFile(f.path, f.size, os.urandom(crypto.STREAM_ID_SIZE), executable=f.executable) for f in files]
    )
    manifest = fmt.Manifest(
        title_id=title_id,
        name=name or info.get("name") or title_id,
        kind=kind or info.get("kind") or "application",
        entry=entry if entry is not None else info.get("entry", ""),
        publisher_key=publisher_key,
        files=disc_files,
        mastered=mastered,
        metadata={k: v for k, v in info.items() if k not in ("name", "kind", "entry")},
    )
    problem = fmt.manifest_problem(manifest)
    if problem:
        raise StateError(f"cannot master {src}: {problem}")
    return manifest


def _write_master(
    tmp: Path,
    files: list[SourceFile],
    manifest: fmt.Manifest,
    content_key: bytes,
    sign: Callable[[bytes], bytes],
    progress: Callable[[int], None] | None,
) -> fmt.Disc:
    """Seal every file into ``tmp`` after the manifest's room (its length is known before the data
    is written: the digests are fixed-size), then the signed manifest, the header and the MID area."""
    region_length = len(fmt.manifest_bytes(manifest)) + crypto.SIGNATURE_SIZE
    data_offset = fmt.data_offset_for(region_length)
    with open(tmp, "wb", buffering=WRITE_BUFFER) as w:
        w.seek(data_offset)
        pairs = list(zip(files, manifest.files, strict=True))
        digests = [_seal_file(w, f, df, content_key, progress) for f, df in pairs]
        sealed = tuple(replace(df, sealed_sha256=d) for df, d in zip(manifest.files, digests, strict=True))
        manifest = replace(manifest, files=sealed)
        region = fmt.sign_manifest(manifest, sign)
        assert len(region) == region_length
        disc = fmt.Disc(manifest, fmt.title_digest(region), region_length, data_offset)
        w.seek(0)
        w.write(fmt.encode_header(disc))
        w.write(fmt.encode_mid_area(fmt.Pressing.MASTER, None, None, bytes(crypto.SIGNATURE_SIZE)))
        w.write(region)
        w.flush()
        os.fsync(w.fileno())
    return disc


def _seal_file(
    w: BinaryIO, f: SourceFile, df: fmt.DiscFile, key: bytes, progress: Callable[[int], None] | None
) -> bytes:
    cipher = crypto.ChunkCipher(key, df.stream_id, f.size)
    layout = cipher.layout
    digest = hashlib.sha256()
    buf = bytearray(crypto.CHUNK_SIZE)
    out = bytearray(crypto.CHUNK_SIZE + crypto.TAG_SIZE)
    try:
        with open(f.real, "rb", buffering=0) as r:
            for i in range(layout.count):
                want = layout.plain_length(i)
                view = memoryview(buf)[:want]
                got = 0
                while got < want:
                    n = r.readinto(view[got:])
                    if not n:
                        raise FileError(f.real, "changed while it was being mastered (shorter now)")
                    got += n
                n = cipher.seal_into(i, view, out)
                sealed = memoryview(out)[:n]
                w.write(sealed)
                digest.update(sealed)
                if progress:
                    progress(want)
            if r.read(1):
                raise FileError(f.real, "changed while it was being mastered (longer now)")
    except OSError as exc:
        raise FileError(f.real, f"cannot read: {describe_os_error(exc)}") from None
    return digest.digest()


def press(
    master_path: Path,
    out_dir: Path,
    *,
    count: int,
    keystore: KeyStore,
    with_mid: bool = True,
    register: Callable[[str, list[tuple[Id, bytes]]], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[Path, Id | None]]:
    """Press ``count`` discs from a master into ``out_dir``; ``progress(n)`` is told the bytes of
    each disc written.

    Each disc with a MID gets its own secret (an Ed25519 key, only on the disc). New MIDs with the
    public keys of their discs are recorded in the key store and handed to ``register`` (the
    licensing server) before any disc is written: a disc never exists whose MID the server does
    not know.
    """
    with disc_dev.DiscImage.open(master_path) as image:
        if image.disc.pressing is not fmt.Pressing.MASTER:
            raise ImageError(master_path, "is a pressed disc, not a master image")
        title_id = image.manifest.title_id
        publisher_key = image.manifest.publisher_key
    keys = keystore.title(title_id)
    signing_key = keystore.signing_key()
    if crypto.public_bytes(signing_key) != publisher_key:
        raise StateError(f"{master_path} was mastered by another publisher key store")
    discs = [(Id.random(IdKind.MEDIA), crypto.signing_seed()) if with_mid else (None, None) for _ in range(count)]
    real = [(m, crypto.public_bytes(crypto.signing_key_from(s))) for m, s in discs if m and s]
    if real:
        keys.discs.update((str(m), k.hex()) for m, k in real)
        keystore.save_title(keys)
        if register:
            register(title_id, real)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    for mid, secret in discs:
        label = mid.body if mid else os.urandom(4).hex().upper()
        path = out_dir / f"{title_id}-{label}.disc"
        disc_dev.press(
            master_path,
            path,
            pressing=fmt.Pressing.MID if mid else fmt.Pressing.NO_MID,
            mid=mid,
            sign=signing_key.sign,
            secret=secret,
        )
        made.append((path, mid))
        if progress:
            progress(path.stat().st_size)
    return made
