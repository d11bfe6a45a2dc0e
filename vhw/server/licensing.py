"""The licensing server's behaviour (system server 4 with database 3), independent of HTTP.

:class:`Licensing` takes decoded protocol messages and returns protocol messages, or raises one of
the patent's refusals. The web layer (:mod:`vhw.server.app`) only authenticates, decodes and encodes;
tests drive this class directly against a real database and then again over HTTPS.

It is the service's face: each call runs one flow, under the store's one retry policy
(:meth:`vhw.server.store.Store.run`):

- :mod:`.registration`: what the manufacturer and publishers register, and users (S3-S7);
- :mod:`.acquisition`: key acquisition (S13-S17), its confirmation, bought licenses;
- :mod:`.repairs`: the repair center (FIG. 13, FIG. 14);
- the audit log's pages and refusals, here.

What the flows share (the store, the master key, the policy, the signer) is a
:class:`~vhw.server.context.Context`; the statements they run are :mod:`.records`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .. import protocol as p
from ..ids import Id
from . import records
from .acquisition import Acquisitions, Grant
from .context import Context, Policy
from .registration import Registrations
from .repairs import Repairs
from .store import Store

__all__ = ["Licensing", "Policy"]


class Licensing:
    def __init__(
        self,
        store: Store,
        master_key: bytes,
        policy: Policy | None = None,
        *,
        clock: Callable[[], float] = time.time,
        sign: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.context = Context(store, master_key, policy or Policy(), clock, sign)
        self.store, self.master_key, self.policy, self.sign = store, master_key, self.context.policy, sign
        self.registrations = Registrations(self.context)
        self.acquisitions = Acquisitions(self.context)
        self.repairs = Repairs(self.context)

    # -- manufacturer and publisher -------------------------------------------------------------

    def register_device(self, actor: str, table: str, ident: Id, public_key: bytes) -> p.Done:
        return self.store.run(self.registrations.device, actor, table, ident, public_key)

    def register_card(self, actor: str, msg: p.RegisterCard) -> p.Done:
        return self.store.run(self.registrations.card, actor, msg)

    def register_title(self, actor: str, msg: p.RegisterTitle) -> p.Done:
        return self.store.run(self.registrations.title, actor, msg)

    def register_media(self, actor: str, msg: p.RegisterMedia) -> p.Done:
        return self.store.run(self.registrations.media, actor, msg)

    # -- consoles (directly or through a broker) --------------------------------------------------

    def register(self, actor: str, req: p.RegisterRequest) -> p.RegisterResponse:
        return self.store.run(self.registrations.user, actor, req)

    def acquire(self, actor: str, req: p.AcquireRequest) -> p.AcquireResponse:
        return self.acquisitions.answer(self.grant(actor, req))

    def broker_acquire(self, actor: str, req: p.AcquireRequest) -> p.BrokerAcquireResponse:
        return self.keys(self.grant(actor, req))

    def refetch(self, actor: str, req: p.AcquireRequest) -> p.BrokerAcquireResponse:
        """The keys of a MID this user flagged and has not confirmed yet, and nothing else: never
        flags anything (the broker asks this when it cannot take a payment)."""
        return self.keys(self.grant(actor, req, refetch_only=True))

    def purchase(self, actor: str, req: p.PurchaseRequest) -> p.BrokerAcquireResponse:
        """A license bought for a disc without a MID: the console's fresh MID becomes a paid one."""
        return self.keys(self.grant(actor, req, req))

    def grant(
        self,
        actor: str,
        req: p.AcquireRequest,
        purchase: p.PurchaseRequest | None = None,
        *,
        refetch_only: bool = False,
    ) -> Grant:
        """An acquisition's database part (S13-S14), under the retry policy; :meth:`keys` answers it.
        The server runs the two apart: this one in the batch of the moment, the sealing after it."""
        return self.store.run(self.acquisitions.grant, actor, req, purchase, refetch_only=refetch_only)

    def keys(self, grant: Grant) -> p.BrokerAcquireResponse:
        """S15 for a granted acquisition: the keys sealed to the user's devices (no database)."""
        resp = self.acquisitions.answer(grant)
        return p.BrokerAcquireResponse(**resp.__dict__, first_issue=grant.flagged)

    def confirm(self, actor: str, req: p.ConfirmRequest) -> p.Done:
        return self.store.run(self.acquisitions.confirm, actor, req)

    # -- operator ---------------------------------------------------------------------------------

    def repair(self, actor: str, req: p.RepairRequest) -> p.RepairResponse:
        return self.store.run(self.repairs.device, actor, req)

    def reissue(self, actor: str, req: p.ReissueRequest) -> p.ReissueResponse:
        return self.store.run(self.repairs.card, actor, req)

    def audit(self, query: p.AuditQuery) -> p.AuditPage:
        with self.store.transaction() as tx:
            rows = records.audit_after(tx, query.after, query.limit)
        return p.AuditPage(tuple(p.AuditEntry(*r) for r in rows))

    def record_refusal(self, actor: str, kind: str, endpoint: str, subject: str) -> None:
        """A refusal with one of the patent's messages, in the audit log (``refuse-KIND``)."""
        with self.store.transaction() as tx:
            self.context.audit(tx, actor, f"refuse-{kind}", subject, endpoint=endpoint)
