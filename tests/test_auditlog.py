"""The audit chain on a real store (SQLite), against a live chainer."""

from __future__ import annotations

import contextlib
from pathlib import Path

from vhw import crypto, pki
from vhw.server import auditlog
from vhw.server.store import SqliteStore


def _signing_key() -> tuple[crypto.Signer, bytes]:
    """The platform's signing key, as a server home has one: (signer, its certificate)."""
    ca_der, ca_key = pki.make_ca("test CA")
    der, key = pki.issue_signer(ca_der, ca_key, "test signing key")
    return crypto.ecdsa_signer(pki.key_pem(key)), der


def _add(store: SqliteStore, n: int) -> None:
    with store.transaction() as tx:
        tx.executemany(
            "INSERT INTO audit (at, actor, action, subject, detail) VALUES (?, ?, ?, ?, ?)",
            [(1, "server", "issue-keys", f"MID-{k}", "{}") for k in range(n)],
        )


def test_a_verify_that_meets_a_chainer_run_sees_an_intact_log(tmp_path: Path):
    """A server chains and signs while an operator verifies. Every signed head is written after its
    chain committed, so a verify that reads the heads and then the rows never sees a head beyond the
    chain; read the other way round, a chainer run that lands between the two reads looked like
    deleted entries (this failed the cluster's switchover test once)."""
    store = SqliteStore(tmp_path / "vhw.db")
    store.migrate()
    sign, certificate = _signing_key()

    def check(message: bytes, signature: bytes) -> bool:
        try:
            crypto.ecdsa_verify(certificate, signature, message)
            return True
        except crypto.Invalid:
            return False

    chainer = auditlog.Chainer(store, sign, tmp_path / "audit-heads.jsonl")
    _add(store, 5)
    assert chainer.run() == 5
    _add(store, 3)  # pending: the next chainer run links them

    plain = store.transaction

    @contextlib.contextmanager
    def snapshot_then_chain():
        with plain() as tx:
            yield tx
        store.transaction = plain  # type: ignore[method-assign]
        chainer.run()  # the live server's chainer, right after verify took its snapshot

    store.transaction = snapshot_then_chain  # type: ignore[method-assign]
    verdict = auditlog.verify(store, chainer.heads, check)
    assert store.transaction == plain  # (the chainer ran)
    assert verdict.ok, verdict.problem
    verdict = auditlog.verify(store, chainer.heads, check)
    assert verdict.ok and verdict.chained == 8, verdict.problem
