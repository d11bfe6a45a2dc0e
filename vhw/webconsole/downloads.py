"""Files the console made for one session, fetched once (a reissued card: it holds the new MC-Key).

They wait in a folder of the server's home (mode 0700), not in a process's memory, so that with
``--workers N`` whichever process answers the download finds it. Each file is stored under the
SHA-256 of its random token, beside a small JSON of its session, name and expiry; taking it renames
the entry first (only one taker wins), then reads and deletes it. What the page about the file
shows (``info``) stays until the file's expiry, so the page can be shown again after the download.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from pathlib import Path

from ..devices.files import atomic_write

LIFETIME = 900  # seconds a file waits for its download


class Downloads:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _stem(self, token: str) -> Path:
        return self.folder / hashlib.sha256(token.encode()).hexdigest()

    def put(self, sid: str, name: str, data: bytes, info: dict[str, object] | None = None) -> str:
        self.sweep()
        token = secrets.token_urlsafe(24)
        stem = self._stem(token)
        expires = time.time() + LIFETIME
        atomic_write(stem.with_suffix(".bin"), data, mode=0o600)
        atomic_write(
            stem.with_suffix(".info"),
            json.dumps({"sid": sid, "info": info or {}, "expires": expires}).encode(),
            mode=0o600,
        )
        atomic_write(
            stem.with_suffix(".json"), json.dumps({"sid": sid, "name": name, "expires": expires}).encode(), mode=0o600
        )
        return token

    def _meta(self, token: str, sid: str, suffix: str) -> tuple[Path, dict[str, object]] | None:
        """(stem, the entry's ``suffix`` JSON) if ``token`` is one of session ``sid``'s, unexpired."""
        if not token or len(token) > 100:
            return None
        stem = self._stem(token)
        try:
            meta = json.loads(stem.with_suffix(suffix).read_bytes())
        except (OSError, ValueError):
            return None
        if not secrets.compare_digest(str(meta.get("sid", "")), sid) or meta.get("expires", 0) < time.time():
            return None
        return stem, meta

    def peek(self, token: str, sid: str) -> tuple[dict[str, object], bool] | None:
        """(info, whether the file still waits) for the session that made it; None otherwise."""
        found = self._meta(token, sid, ".info")
        if found is None:
            return None
        stem, meta = found
        info = meta.get("info")
        return (dict(info) if isinstance(info, dict) else {}), stem.with_suffix(".json").exists()

    def take(self, token: str, sid: str) -> tuple[str, bytes] | None:
        """(name, data) for the session that made it, once; None otherwise (and nothing taken)."""
        found = self._meta(token, sid, ".json")
        if found is None:
            return None
        stem, meta = found
        claimed = stem.with_suffix(f".taken-{os.getpid()}")
        try:
            os.rename(stem.with_suffix(".json"), claimed)  # one taker wins
        except OSError:
            return None
        try:
            return str(meta["name"]), stem.with_suffix(".bin").read_bytes()
        except OSError:
            return None
        finally:
            claimed.unlink(missing_ok=True)
            stem.with_suffix(".bin").unlink(missing_ok=True)

    def sweep(self) -> None:
        """Remove what expired unfetched."""
        now = time.time()
        for meta in [*self.folder.glob("*.json"), *self.folder.glob("*.info")]:
            try:
                if json.loads(meta.read_bytes()).get("expires", 0) < now:
                    meta.unlink(missing_ok=True)
                    meta.with_suffix(".bin").unlink(missing_ok=True)
                    meta.with_suffix(".info").unlink(missing_ok=True)
            except (OSError, ValueError):
                continue
