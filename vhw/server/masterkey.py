"""The master key (``master.key``: 32 random bytes, hex) that seals every key at rest in the
database, and its rotation. The database records a fingerprint of the key it is sealed under, so a
home's key and its database are checked against each other at every start."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from .. import bindings, crypto
from ..crypto import equal as crypto_equal
from ..devices.files import atomic_write, describe_os_error, fsync_dir
from ..errors import FileError, StateError
from . import records
from .store import Store

__all__ = ["MasterKey", "key_fingerprint"]

log = logging.getLogger(__name__)


class MasterKey:
    def __init__(self, root: Path):
        self.root = root  # the home's folder

    def read(self) -> bytes:
        path = self.root / "master.key"
        try:
            key = bytes.fromhex(path.read_text().strip())
        except OSError as exc:
            raise FileError(path, f"cannot read master key: {describe_os_error(exc)}") from None
        except ValueError:
            key = b""
        if len(key) != 32:
            raise FileError(path, "not a master key (32 bytes, hex)")
        return key

    def check(self, store: Store) -> None:
        """At start: the keys at rest are under ``master.key``. Finishes a rotation that committed
        before it was killed (``master.key.new`` is the database's key), drops one that did not."""
        pending = self.root / "master.key.new"
        with store.transaction() as tx:
            recorded = records.master_fingerprint(tx)
            if recorded is None:  # a new database, or one from before rotations: it is this key's
                recorded = key_fingerprint(self.read())
                records.note_master_fingerprint(tx, recorded)
        if pending.exists():
            new = _read_key(pending)
            if new and crypto_equal(key_fingerprint(new), recorded):
                os.replace(pending, self.root / "master.key")  # the rotation committed: finish it
                fsync_dir(self.root)
                log.warning("finished a master key rotation that was interrupted after its commit")
            else:
                pending.unlink()
                log.warning("dropped a master key rotation that was interrupted before its commit")
        if not crypto_equal(key_fingerprint(self.read()), recorded):
            raise StateError(
                f"{(self.root / 'master.key')} is not the key the database's keys are encrypted under",
                hint="restore the master.key that belongs to this database",
            )

    def rotate(self, store: Store) -> int:
        """Re-encrypt every key at rest under a new master key in one transaction; the old key is
        then gone. Returns how many keys were re-encrypted. See :meth:`check` for a
        rotation killed half way."""
        self.check(store)
        old = self.read()
        new = secrets.token_bytes(32)
        pending = self.root / "master.key.new"
        atomic_write(pending, new.hex().encode() + b"\n", mode=0o600)  # 1: the new key, durably
        count = 0
        with store.transaction() as tx:  # 2: every key and the fingerprint, or nothing
            for table, _, _ in records.AT_REST:
                updates = []
                for row_id, blob in records.sealed_keys(tx, table):
                    ad = bindings.at_rest(table, row_id)
                    updates.append((crypto.wrap(new, crypto.unwrap(old, blob, ad), ad), row_id))
                records.reseal_keys(tx, table, updates)
                count += len(updates)
            records.note_master_fingerprint(tx, key_fingerprint(new))
        os.replace(pending, self.root / "master.key")  # 3: the old key is gone
        fsync_dir(self.root)
        return count


def key_fingerprint(key: bytes) -> bytes:
    """What the database records of its master key: a fingerprint that reveals nothing of it."""
    return crypto.derive(key, crypto.context("master-key-fingerprint"), length=16)


def _read_key(path: Path) -> bytes | None:
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return key if len(key) == 32 else None
