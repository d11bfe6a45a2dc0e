"""Payment processors for the broker: an interface, and a built-in test processor.

The broker never keeps a card number: it asks the processor to tokenise it and keeps the token and
the last four digits. A charge is an authorization (money held), then a capture (taken) or a void
(released), so that a declined card stops a purchase before the licensing server is ever asked,
and a key the server refuses is never paid for.

:class:`TestProcessor` behaves like a payment network's test mode, with the usual test numbers:
``4242 4242 4242 4242`` is approved, ``4000 0000 0000 0002`` always declined, and any number
failing the Luhn check is refused as invalid. Its state lives in the broker's database.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..server.store import Store

import secrets
from typing import Protocol

from .. import crypto
from ..errors import InputError, PaymentDeclined
from . import records

DECLINING = "4000000000000002"


class Processor(Protocol):
    def tokenize(self, number: str) -> tuple[str, str]:
        """(token, last four digits) for a card number, or PaymentDeclined if it is not valid."""

    def authorize(self, token: str, cents: int) -> str:
        """Hold ``cents`` on the card; an authorization ID, or PaymentDeclined."""

    def capture(self, auth: str) -> None: ...

    def void(self, auth: str) -> None: ...


def luhn_ok(number: str) -> bool:
    digits = [int(c) for c in number]
    odd = digits[-1::-2]
    even = [sum(divmod(2 * d, 10)) for d in digits[-2::-2]]
    return (sum(odd) + sum(even)) % 10 == 0


def clean_number(number: str) -> str:
    digits = "".join(c for c in number if not c.isspace() and c != "-")
    if not digits.isdigit() or not 12 <= len(digits) <= 19 or not luhn_ok(digits):
        raise InputError("not a valid card number (12 to 19 digits with a right check digit)")
    return digits


class TestProcessor:
    """A processor in test mode, keeping its tokens and authorizations in the broker's store."""

    def __init__(self, store: Store, key: bytes) -> None:
        self.store = store
        self._key = key  # tokens are keyed: a database dump does not give a card number away

    def tokenize(self, number: str) -> tuple[str, str]:
        digits = clean_number(number)
        # an HMAC under the broker's own key, not a hash of the number: card numbers are few
        # enough (a BIN and a Luhn digit) that an unkeyed hash is reversed by trying them all
        token = "tok_" + crypto.mac(self._key, crypto.context("card-token", digits)).hex()[:32]
        with self.store.transaction() as tx:
            if records.processor_card(tx, token) is None:
                records.add_processor_card(tx, token, declines=digits == DECLINING)
        return token, digits[-4:]

    def authorize(self, token: str, cents: int) -> str:
        with self.store.transaction() as tx:
            row = records.processor_card(tx, token)
            if row is None:
                raise PaymentDeclined("the card on file is unknown to the payment processor")
            if row.declines:
                raise PaymentDeclined("the card was declined")
            auth = "auth_" + secrets.token_hex(12)
            records.add_authorization(tx, auth, token, cents)
        return auth

    def capture(self, auth: str) -> None:
        self._finish(auth, "captured")

    def void(self, auth: str) -> None:
        self._finish(auth, "voided")

    def _finish(self, auth: str, state: str) -> None:
        with self.store.transaction() as tx:
            records.end_authorization(tx, auth, state)
