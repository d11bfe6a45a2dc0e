"""The publisher's own key store: the signing key and each title's Content-Key.

A folder only its owner can read (0700, files 0600):

    signing-key.pem        the publisher's Ed25519 key (PKCS#8); it signs manifests and MIDs
    titles/<TITLE>.json    per title: Content-Key, title digest, name, and the MIDs pressed so far
                           with the public key of each disc's own secret (the secret itself is
                           only ever on the disc)

The Content-Key never goes on a disc; the publisher hands it to the licensing server when it
registers the title, and the server sends it only to the one user who registers a disc's MID.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .. import crypto
from ..devices.files import atomic_write, describe_os_error
from ..errors import FileError, StateError
from ..formats.common import valid_title_id

__all__ = ["KeyStore"]


WHAT = "publisher key store"


@dataclass
class TitleKeys:
    title_id: str
    content_key: bytes = field(repr=False)
    title_digest: bytes
    name: str = ""
    discs: dict[str, str] = field(default_factory=dict)  # pressed MID label -> its disc key (hex)
    registered: bool = False  # the server has the Content-Key and digest

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "title_id": self.title_id,
                "content_key": self.content_key.hex(),
                "title_digest": self.title_digest.hex(),
                "name": self.name,
                "discs": self.discs,
                "registered": self.registered,
            },
            indent=1,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes, path: Path) -> TitleKeys:
        try:
            d = json.loads(data)
            keys = cls(
                title_id=d["title_id"],
                content_key=bytes.fromhex(d["content_key"]),
                title_digest=bytes.fromhex(d["title_digest"]),
                name=str(d.get("name", "")),
                discs={str(m): str(k) for m, k in d.get("discs", {}).items()},
                registered=bool(d.get("registered", False)),
            )
        except (ValueError, KeyError, TypeError):
            raise FileError(path, f"corrupt {WHAT} entry") from None
        if len(keys.content_key) != crypto.KEY_SIZE or len(keys.title_digest) != 32:
            raise FileError(path, f"corrupt {WHAT} entry (key sizes)")
        return keys


class KeyStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def _key_path(self) -> Path:
        return self.root / "signing-key.pem"

    def _title_path(self, title_id: str) -> Path:
        if not valid_title_id(title_id):
            raise StateError(f"{title_id!r} is not a valid title ID")
        return self.root / "titles" / f"{title_id}.json"

    def signing_key(self, *, create: bool = False) -> Ed25519PrivateKey:
        """The publisher's key; made on first use when ``create``."""
        path = self._key_path
        if not path.exists():
            if not create:
                raise StateError(
                    f"{self.root}: no publisher key store here",
                    hint="master a title first, or pass --keystore with the right folder",
                )
            (self.root / "titles").mkdir(parents=True, exist_ok=True)
            os.chmod(self.root, 0o700)
            key = crypto.signing_key()
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            atomic_write(path, pem, mode=0o600)
            return key
        try:
            loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except OSError as exc:
            raise FileError(path, f"cannot read {WHAT}: {describe_os_error(exc)}") from None
        except (ValueError, TypeError):
            raise FileError(path, f"corrupt {WHAT} signing key") from None
        if not isinstance(loaded, Ed25519PrivateKey):
            raise FileError(path, f"{WHAT} signing key is not an Ed25519 key")
        return loaded

    def has_title(self, title_id: str) -> bool:
        return self._title_path(title_id).exists()

    def title(self, title_id: str) -> TitleKeys:
        path = self._title_path(title_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise StateError(
                f"{self.root}: no keys for title {title_id} in this key store",
                hint="press with the key store the title was mastered with (--keystore)",
            ) from None
        except OSError as exc:
            raise FileError(path, f"cannot read {WHAT}: {describe_os_error(exc)}") from None
        return TitleKeys.from_json(data, path)

    def save_title(self, keys: TitleKeys) -> None:
        (self.root / "titles").mkdir(parents=True, exist_ok=True)
        atomic_write(self._title_path(keys.title_id), keys.to_json(), mode=0o600)

    def titles(self) -> list[str]:
        folder = self.root / "titles"
        return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
