"""The licensing server's side.

- :mod:`.licensing`: the server's behaviour (S3-S7, S13-S17, confirm, repair, reissue, roles) over a store;
- :mod:`.store`: SQLite and PostgreSQL behind one interface, with versioned migrations;
- :mod:`.app`: the Starlette app on hypercorn's trio worker, the batcher, ``serve``;
- :mod:`.home`: the server's folder: CA, TLS identity, master key, credentials, backups, rotation;
- :mod:`.audit` (pure) and :mod:`.auditlog`: the hash-chained audit log and its signed heads;
- :mod:`.metrics` and :mod:`.logs`: what operators read (Prometheus, access lines).
"""
