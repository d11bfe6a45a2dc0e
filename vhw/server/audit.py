"""The tamper-evident audit log, without I/O: the hash chain, signed heads, and the verifier.

Every audit entry is written as before, in the request's transaction. A *chainer* then links the
entries into one hash chain: it gives each entry not yet chained the next position and

    hash = SHA-256(prev_hash ‖ position, seq, at, actor, action, subject, detail)

in the order the entries were committed (one chainer at a time, under a lock; between two runs
a few entries wait, unchained). Chaining after the commit, not inside it, keeps the audit log from
serialising every writer: several server processes and a PostgreSQL database write entries
concurrently, and the chain still has one order.

After each run the chainer signs the chain's head (position and hash) with the platform CA's key
and appends it to a file in the server home (``audit-heads.jsonl``), outside the database. The
verifier (``vhw server audit --verify``) recomputes the whole chain and names the first entry
that breaks it: an edited entry (its hash no longer matches), a deleted one (the next one's
previous hash does not match), reordered ones (likewise), a truncated tail (a signed head beyond
the end), or a head whose signature does not verify. What this cannot show: an entry deleted or
changed in the seconds between its commit and its chaining (docs/threat-model.md).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .. import crypto

GENESIS = bytes(32)  # the previous hash of the first entry


@dataclass(frozen=True)
class Entry:
    seq: int
    at: int
    actor: str
    action: str
    subject: str
    detail: str
    position: int | None = None  # None: not chained yet
    prev_hash: bytes | None = None
    hash: bytes | None = None


def entry_hash(prev_hash: bytes, position: int, e: Entry) -> bytes:
    body = crypto.context("audit-entry", position, e.seq, e.at, e.actor, e.action, e.subject, e.detail)
    return hashlib.sha256(prev_hash + body).digest()


def chain(head: tuple[int, bytes], pending: Iterable[Entry]) -> list[Entry]:
    """Link ``pending`` entries (in commit order) after ``head`` (position, hash)."""
    position, prev = head
    out = []
    for e in pending:
        position += 1
        h = entry_hash(prev, position, e)
        out.append(Entry(e.seq, e.at, e.actor, e.action, e.subject, e.detail, position, prev, h))
        prev = h
    return out


def head_message(position: int, digest: bytes) -> bytes:
    return crypto.context("audit-head", position, digest)


@dataclass(frozen=True)
class SignedHead:
    position: int
    hash: bytes
    at: int
    signature: bytes

    def to_line(self) -> str:
        return (
            json.dumps(
                {"position": self.position, "hash": self.hash.hex(), "at": self.at, "signature": self.signature.hex()}
            )
            + "\n"
        )

    @classmethod
    def from_line(cls, line: str) -> SignedHead:
        d = json.loads(line)
        return cls(int(d["position"]), bytes.fromhex(d["hash"]), int(d["at"]), bytes.fromhex(d["signature"]))


def sign_head(sign: Callable[[bytes], bytes], position: int, digest: bytes, at: int) -> SignedHead:
    return SignedHead(position, digest, at, sign(head_message(position, digest)))


@dataclass(frozen=True)
class Verdict:
    ok: bool
    chained: int  # entries in the chain
    pending: int  # entries not chained yet
    heads: int  # signed heads checked
    problem: str = ""  # the first thing that breaks it, naming the entry

    def __str__(self) -> str:
        if self.ok:
            return (
                f"audit log intact: {self.chained} entries chained, {self.heads} signed heads verified,"
                f" {self.pending} entries waiting to be chained"
            )
        return f"audit log broken: {self.problem}"


def verify(
    entries: Iterable[Entry], heads: Iterable[SignedHead], check_signature: Callable[[bytes, bytes], bool]
) -> Verdict:
    """Check the chain (entries in position order; unchained ones last, any order) and the signed
    heads. ``check_signature(message, signature)`` checks one head against the platform CA."""
    chained: list[tuple[int, Entry]] = []
    pending = 0
    for e in entries:
        if e.position is None:
            pending += 1
        else:
            chained.append((e.position, e))
    chained.sort(key=lambda x: x[0])
    at_position: dict[int, bytes] = {}
    prev, expected = GENESIS, 1
    seen_seq: set[int] = set()
    for position, e in chained:
        where = f"entry {e.seq} (position {position}, {e.action} {e.subject})"
        if position != expected:
            what = "missing" if position > expected else "repeated"
            return Verdict(
                False,
                len(chained),
                pending,
                0,
                f"position {expected} is {what}: an entry before {where} was deleted or moved",
            )
        if e.seq in seen_seq:
            return Verdict(False, len(chained), pending, 0, f"{where}: its sequence number appears twice")
        seen_seq.add(e.seq)
        if e.prev_hash != prev:
            return Verdict(
                False,
                len(chained),
                pending,
                0,
                f"{where}: it does not follow the entry before it (deleted or reordered entries)",
            )
        if e.hash is None or e.hash != entry_hash(prev, position, e):
            return Verdict(False, len(chained), pending, 0, f"{where}: its content was changed")
        at_position[position] = e.hash
        prev, expected = e.hash, expected + 1
    problem, count = _check_heads(heads, at_position, expected - 1, check_signature)
    if problem:
        return Verdict(False, len(chained), pending, count, problem)
    return Verdict(True, len(chained), pending, count)


def _check_heads(
    heads: Iterable[SignedHead],
    at_position: dict[int, bytes],
    last: int,
    check_signature: Callable[[bytes, bytes], bool],
) -> tuple[str, int]:
    """What is wrong with the first signed head that does not hold for the chain (its hash at each
    position, ``last`` the chain's end), or ""; and how many heads were checked."""
    count = 0
    for h in heads:
        count += 1
        if not check_signature(head_message(h.position, h.hash), h.signature):
            return f"signed head {h.position}: its signature does not verify", count
        if h.position not in at_position:
            return f"signed head {h.position}: the chain ends at {last}, entries after it were deleted", count
        if at_position[h.position] != h.hash:
            return f"signed head {h.position}: the chain up to it was rewritten", count
    return "", count
