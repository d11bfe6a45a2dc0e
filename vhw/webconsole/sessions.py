"""Session cookies and CSRF tokens of the web consoles, without I/O.

A session is a signed cookie: ``base64(payload) "." base64(HMAC-SHA256(key, "session" | payload))``
with the payload holding who signed in (role, name), a random session ID, a check of the
credential used (so that a revoked credential ends its sessions) and an expiry. The key is the
console's own (a file in the server's or broker's home, never shown), so a cookie of one console
opens nothing on another. A form's CSRF token is an HMAC of the session ID under the same key:
bound to one session, checked in constant time.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from dataclasses import dataclass

from .. import crypto

COOKIE = "vhw_console"
LIFETIME = 8 * 3600  # a working day; then sign in again


@dataclass(frozen=True)
class Session:
    role: str  # "operator", "broker" or "staff"
    name: str  # the credential's or staff account's name
    sid: str  # random, per sign-in
    check: str  # ties the session to the credential it was opened with
    expires: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    def __init__(self, key: bytes):
        if len(key) < 32:
            raise ValueError("a session key has at least 32 bytes")
        self._key = key

    def _mac(self, purpose: bytes, data: bytes) -> bytes:
        return crypto.mac(self._key, purpose + b"\x00" + data)

    def issue(self, role: str, name: str, check: str, now: int) -> tuple[str, Session]:
        session = Session(role, name, secrets.token_urlsafe(16), check, now + LIFETIME)
        payload = json.dumps(
            [session.role, session.name, session.sid, session.check, session.expires], separators=(",", ":")
        ).encode()
        return f"{_b64(payload)}.{_b64(self._mac(b'session', payload))}", session

    def open(self, cookie: str | None, now: int) -> Session | None:
        """The session a cookie carries, or None: unsigned, altered, another console's, expired."""
        if not cookie or cookie.count(".") != 1:
            return None
        body, tag = cookie.split(".")
        try:
            payload, tag_bytes = _unb64(body), _unb64(tag)
            if not crypto.equal(self._mac(b"session", payload), tag_bytes):  # constant time
                return None
            role, name, sid, check, expires = json.loads(payload)
        except (binascii.Error, ValueError, TypeError):
            return None
        if not all(isinstance(x, str) for x in (role, name, sid, check)) or not isinstance(expires, int):
            return None
        return Session(role, name, sid, check, expires) if now < expires else None

    def csrf_token(self, session: Session) -> str:
        return _b64(self._mac(b"csrf", session.sid.encode()))

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        if not token:
            return False
        try:
            given = _unb64(token)
        except (binascii.Error, ValueError):
            return False
        return crypto.equal(self._mac(b"csrf", session.sid.encode()), given)  # constant time
