"""The audit chain on a store: the chainer the server runs, the signed heads file, the verifier.

The logic is :mod:`vhw.server.audit`'s; this module reads and writes the database and the heads file
(``audit-heads.jsonl`` in the server home, one signed head per line, appended under a lock).
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from . import audit, records
from .store import Store, Tx

__all__ = ["verify"]


log = logging.getLogger(__name__)

CHAIN_BATCH = 5000  # entries linked per transaction
LOCK_ID = 0x5648_5701  # PostgreSQL advisory lock: one chainer at a time across processes


def _head(tx: Tx) -> tuple[int, bytes]:
    row = records.chain_head(tx)
    return (row.position, bytes(row.hash)) if row else (0, audit.GENESIS)


def chain_pending(store: Store) -> tuple[int, bytes, int]:
    """Link the entries not chained yet; returns the head (position, hash) and how many were linked.
    Another process chaining at the same moment makes this one return at once, linking nothing."""
    linked = 0
    with store.transaction() as tx:
        if store.dialect == "postgres":
            if not records.try_lock_chainer(tx, LOCK_ID):
                return (*_head(tx), 0)
        head = _head(tx)
        while True:
            rows = records.unchained(tx, CHAIN_BATCH)
            if not rows:
                break
            entries = audit.chain(head, [audit.Entry(*r) for r in rows])
            records.chain(tx, [(e.position, e.prev_hash, e.hash, e.seq) for e in entries])
            last = entries[-1]
            assert last.position is not None and last.hash is not None  # (chain() set them)
            head = (last.position, last.hash)
            linked += len(entries)
    return (*head, linked)


def append_head(path: Path, head: audit.SignedHead) -> None:
    """Add a signed head to the heads file (kept outside the database), durably."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, head.to_line().encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_heads(path: Path) -> list[audit.SignedHead]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for n, line in enumerate(lines, 1):
        try:
            out.append(audit.SignedHead.from_line(line))
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{path}: line {n} is not a signed head") from None
    return out


class Chainer:
    """Links new entries and signs the head: the server runs :meth:`run` every few seconds and
    once more when it stops."""

    def __init__(
        self, store: Store, sign: Callable[[bytes], bytes], heads: Path, *, clock: Callable[[], float] = time.time
    ):
        self.store, self.sign, self.heads, self.clock = store, sign, heads, clock
        self.head = 0  # the chain's last linked position, as the last run saw it

    def run(self) -> int:
        position, digest, linked = chain_pending(self.store)
        self.head = position
        if linked:
            append_head(self.heads, audit.sign_head(self.sign, position, digest, int(self.clock())))
        return linked


def verify(
    store: Store, heads: Path | Sequence[Path], check_signature: Callable[[bytes, bytes], bool]
) -> audit.Verdict:
    """Check the chain and the signed heads. The heads are read first: each is appended only after
    its chain committed, so every head read is within the rows read after it, however a running
    server's chainer interleaves (read the other way round, a head appended in between would look
    like deleted entries). ``heads``: one heads file, or each host's (several hosts of one
    service chain one log, each signing the heads it reached)."""
    signed = []
    for path in [heads] if isinstance(heads, Path) else heads:
        try:
            signed += read_heads(path)
        except ValueError:
            return audit.Verdict(False, 0, 0, 0, f"{path} is damaged: a line is not a signed head")
    with store.transaction() as tx:
        rows = records.whole_audit(tx)
    entries = [audit.Entry(**r._asdict() | {"prev_hash": _bytes(r.prev_hash), "hash": _bytes(r.hash)}) for r in rows]
    return audit.verify(entries, signed, check_signature)


def _bytes(value: bytes | None) -> bytes | None:
    return bytes(value) if value is not None else None
