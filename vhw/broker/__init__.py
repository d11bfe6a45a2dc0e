"""The broker's side (FIG. 15).

- :mod:`.service`: the relay to the server, charging around each key;
- :mod:`.ledger`: accounts' cards and balances, holds, charges, the double-entry ledger;
- :mod:`.logins`: users' accounts and the staff, their passwords and console tokens;
- :mod:`.records`: the broker's schema and statements;
- :mod:`.config`: its configuration (server, price, share, currency);
- :mod:`.home`: the broker's folder, its database and credential;
- :mod:`.app`: the HTTPS app for consoles (and the staff's web console), ``serve``;
- :mod:`.payments`: the card processor the broker charges through.
"""

__all__ = ["app", "config", "home", "service"]
