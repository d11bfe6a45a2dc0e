"""The broker's side (FIG. 15).

- :mod:`.service`: accounts, holds and charges, the double-entry ledger, the relay to the server;
- :mod:`.home`: the broker's folder, its database and credential;
- :mod:`.app`: the HTTPS app for consoles (and the staff's web console), ``serve``;
- :mod:`.payments`: the card processor the broker charges through.
"""
