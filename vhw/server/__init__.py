"""The licensing server's side.

- :mod:`.licensing`: the service's face (S3-S7, S13-S17, confirm, repair, reissue), each call one
  flow under the store's retry policy: :mod:`.registration`, :mod:`.acquisition`, :mod:`.repairs`,
  over what they share (:mod:`.context`);
- :mod:`.store`: SQLite and PostgreSQL behind one interface, versioned migrations, the retry policy;
  :mod:`.records`: the flows' statements, by meaning; :mod:`.queries`: the operators' read model;
- :mod:`.app`: the Starlette app on hypercorn's trio worker and ``serve``; :mod:`.endpoints`: its
  endpoint table and OpenAPI document; :mod:`.batcher`: group commit; :mod:`.workers`: several
  processes on one port;
- :mod:`.home`: the server's folder and configuration; its platform PKI (:mod:`.identity`), master
  key and its rotation (:mod:`.masterkey`), role credentials (:mod:`.credentials`); :mod:`.backups`:
  backup and restore of its database; :mod:`.hosts`: another host of the same service;
- :mod:`.audit` (pure) and :mod:`.auditlog`: the hash-chained audit log and its signed heads;
- :mod:`.metrics` and :mod:`.logs`: what operators read (Prometheus, access lines).
"""

__all__ = [
    "app",
    "auditlog",
    "backups",
    "credentials",
    "endpoints",
    "home",
    "hosts",
    "licensing",
    "logs",
    "queries",
    "records",
    "store",
    "workers",
]
