"""How a server process logs: one line per request (``vhw.server.access``) and per event, as
text or as JSON lines (``--log-format json``), on stderr.

A JSON line holds the time, the level, the logger, the message and, for an access line, its
fields: method, path, status, duration_ms, role, request_id. Nothing logged carries a secret:
requests are logged by method and path only, never by body or header, and no module logs a key
(a test greps the logs of a whole run for every key of it).
"""

from __future__ import annotations

import json
import logging
import sys
import time

__all__ = ["announce", "configure"]


ACCESS_FIELDS = ("method", "path", "status", "duration_ms", "role", "request_id")


def _stamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


def announce(log_format: str, logger: str, message: str, **fields: object) -> str:
    """A line a server says on stdout when it starts listening or has stopped (a supervisor and
    tests wait for the first): the message itself, or with ``json`` a JSON line like the log's,
    with ``fields`` (``event``, ``url``) beside it."""
    if log_format != "json":
        return message
    return json.dumps({"time": _stamp(time.time()), "level": "info", "logger": logger, "message": message, **fields})


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": _stamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ACCESS_FIELDS:
            if hasattr(record, key):
                line[key] = getattr(record, key)
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(line, sort_keys=False)


class Text(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
        self.converter = time.gmtime


def configure(log_format: str = "text") -> None:
    """Log to stderr in ``log_format``; the access log always, other loggers from WARNING (or
    what ``vhw -v`` asked for)."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if log_format == "json" else Text())
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    logging.getLogger("vhw.server.access").setLevel(logging.INFO)
    logging.getLogger("vhw.broker.access").setLevel(logging.INFO)
