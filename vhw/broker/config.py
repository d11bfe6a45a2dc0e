"""The broker's configuration (``config.json`` in its home): the server it relays to, where it
listens, the price of a key, the platform's share and the currency every amount is in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..devices.files import load_json

__all__ = ["money"]


@dataclass
class BrokerConfig:
    server: str
    listen: str = "127.0.0.1:9443"
    price_cents: int = 499
    platform_share: int = 70  # percent of each charge that goes to the platform
    currency: str = "EUR"  # ISO 4217: what every amount is in (prices, balances, the ledger)

    @classmethod
    def load(cls, path: Path) -> BrokerConfig:
        return load_json(cls, path, "broker configuration", _check)


def _check(cfg: BrokerConfig) -> None:
    if not 0 <= cfg.platform_share <= 100 or cfg.price_cents < 0:
        raise ValueError("share or price out of range")
    if not valid_currency(cfg.currency):
        raise ValueError(f"currency {cfg.currency!r} is not a three-letter ISO 4217 code")


def valid_currency(code: object) -> bool:
    return isinstance(code, str) and len(code) == 3 and code.isascii() and code.isalpha() and code.isupper()


def money(cents: int, currency: str) -> str:
    """An amount as people read it: 1,234.50 EUR."""
    return f"{cents / 100:,.2f} {currency}"
