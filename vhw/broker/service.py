"""The broker (the patent's third party management server device 50, FIG. 15).

Users reach the licensing server only through the broker. A console points at the broker instead
of the server (the same ``/v1/console/...`` requests) and adds its account's name and password
(HTTP Basic). The broker checks the account, passes the console's MC-ID and wrapped items through
to the server over mutual TLS with its own credential (it never sees an unwrapped key), and
charges a set price per key, split between platform and broker in set percentages.

A charge is made in two steps around the server's answer, so that nothing is paid for that was
not issued and nothing is issued that could not be paid for (the money: :mod:`.ledger`):

    hold      prepaid balance reserved, or the card on file authorised; a decline stops here,
              before the server is asked (no key, no MID flagged)
    relay     the server flags the MID and issues the keys, or refuses
    capture   only when the server says the MID was flagged just now (a refetch after a lost
              answer is free), else the hold is released

Every charge, top-up and relayed key is in the broker's audit log. Who signs in is
:mod:`.logins`; the statements are :mod:`.records`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from .. import protocol as p
from ..errors import PaymentDeclined, Refusal
from ..server.store import Store
from .config import BrokerConfig
from .ledger import Ledger
from .logins import Logins
from .payments import Processor

__all__ = ["Broker"]


M = TypeVar("M")


class Relay(Protocol):
    """Sends a message to the licensing server and decodes its answer (``Client.call``)."""

    def __call__(self, path: str, msg: Any, answer: type[M], /) -> M: ...


class Broker:
    """The relay, charging through the :class:`~.ledger.Ledger`; who may use it is
    :class:`~.logins.Logins`. The web app (:class:`BrokerApp`) only decodes and maps."""

    def __init__(
        self,
        store: Store,
        processor: Processor,
        config: BrokerConfig,
        relay: Relay,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.config = config
        self.relay = relay
        self.clock = clock
        self.logins = Logins(store, self._now)
        self.ledger = Ledger(store, processor, config, self._now)

    def _now(self) -> int:
        return int(self.clock())

    # -- the relayed flows ------------------------------------------------------------------------

    def register(self, account: str, req: p.RegisterRequest) -> p.RegisterResponse:
        return self._relay("/v1/broker/register", req, p.RegisterResponse, account)

    def confirm(self, account: str, req: p.ConfirmRequest) -> p.Done:
        return self._relay("/v1/broker/confirm", req, p.Done, account)

    def acquire(self, account: str, req: p.AcquireRequest) -> p.AcquireResponse:
        return self._charged("/v1/broker/acquire", req, account)

    def purchase(self, account: str, req: p.PurchaseRequest) -> p.AcquireResponse:
        return self._charged("/v1/broker/purchase", req, account)

    def _relay(self, path: str, req: p.RegisterRequest | p.ConfirmRequest, answer: type[M], account: str) -> M:
        with self.store.transaction() as tx:
            tx.audit(self._now(), f"account:{account}", [("relay", path, {"mc_id": req.mc_id})])
        return self.relay(path, req, answer)

    def _charged(self, path: str, req: p.AcquireRequest, account: str) -> p.AcquireResponse:
        try:
            h = self.ledger.hold(account)
        except PaymentDeclined as declined:
            # No money for a new key; but the keys of one already paid for (a lost answer) are free.
            fields = {k: getattr(req, k) for k in p.AcquireRequest.__dataclass_fields__}
            try:
                resp = self.relay("/v1/broker/refetch", p.AcquireRequest(**fields), p.BrokerAcquireResponse)
            except Refusal:
                raise declined from None
            return p.AcquireResponse(**{k: v for k, v in resp.__dict__.items() if k != "first_issue"})
        try:
            resp = self.relay(path, req, p.BrokerAcquireResponse)
        except BaseException:
            self.ledger.release(h)  # refused, unreachable, or anything else: nothing issued, nothing paid
            raise
        if resp.first_issue:
            self.ledger.capture(h, f"{resp.title_id} ({path.rsplit('/', 1)[1]}, card {req.mc_id})")
        else:
            self.ledger.release(h)  # the keys of a MID this user has paid for already
        fields = {k: v for k, v in resp.__dict__.items() if k != "first_issue"}
        return p.AcquireResponse(**fields)
