"""What every flow of the licensing service shares: the store, the master key that seals keys at
rest, the policy, the clock, the platform's signer, and the audit log's writer.

The flows (:mod:`.registration`, :mod:`.acquisition`, :mod:`.repairs`) each take one
:class:`Context`; :class:`~vhw.server.licensing.Licensing` makes it and runs each call under the
store's one retry policy.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import bindings, crypto
from ..bindings import DevicePublic, owner_of
from ..errors import AlreadyExists, StateError
from ..ids import ID_FIELDS, Id
from .store import Store, Tx


@dataclass(frozen=True)
class Policy:
    """Server configuration that shapes the flows."""

    # Which device IDs identify a user (the patent allows any non-empty combination).
    identify_by: frozenset[str] = frozenset(ID_FIELDS)
    # Failed User ID checks per card allowed within the window before it is made to wait.
    attempt_limit: int = 10
    attempt_window: int = 600  # seconds

    def __post_init__(self) -> None:
        if not self.identify_by or not set(self.identify_by) <= set(ID_FIELDS):
            raise ValueError(f"identify_by must be a non-empty subset of {ID_FIELDS}")


@dataclass
class Context:
    store: Store
    master_key: bytes = field(repr=False)
    policy: Policy = field(default_factory=Policy)
    clock: Callable[[], float] = time.time
    # Signs card tokens (vhw.bindings) with the platform's signing key: consoles check them against
    # the certificate in their ROM. Given by the server's home; tests may pass their own.
    sign: Callable[[bytes], bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # What a user's every acquisition carries the same of, as long as the card and the devices
        # stay the same: the Content-Gen-Key sealed to them, and the card token. Both are functions
        # of their arguments (any fresh sealing or signature of them is as good as another), so a
        # server hands out the one it made last time instead of paying an HPKE sealing and a
        # signature per disc; a repaired device, a reissued card or a new epoch are other arguments.
        self.sealed_cgk = functools.lru_cache(maxsize=4096)(bindings.issue_content_gen_key)
        self._signed_token = functools.lru_cache(maxsize=4096)(
            lambda owner, mc_id, epoch: bindings.make_card_token(self._require_signer(), owner, mc_id, epoch)
        )

    def _require_signer(self) -> Callable[[bytes], bytes]:
        if self.sign is None:
            raise StateError("this server cannot sign card tokens (no platform signing key)")
        return self.sign

    def card_token(self, cgk: bytes, mc_id: Id, epoch: int) -> bytes:
        self._require_signer()
        return bytes(self._signed_token(owner_of(cgk), mc_id, epoch))

    # -- keys at rest -------------------------------------------------------------------------

    def seal(self, table: str, row: object, key: bytes) -> bytes:
        return crypto.wrap(self.master_key, key, bindings.at_rest(table, row))

    def open(self, table: str, row: object, blob: bytes) -> bytes:
        return crypto.unwrap(self.master_key, bytes(blob), bindings.at_rest(table, row))

    def now(self) -> int:
        return int(self.clock())

    def audit(self, tx: Tx, actor: str, action: str, subject: object, **detail: object) -> None:
        tx.audit(self.now(), actor, [(action, subject, detail)])


def device_public(client_id: Id, hdd_id: Id, console_key: bytes | None, hdd_key: bytes | None) -> DevicePublic:
    """A user's console and HDD with their registered public keys (keys are sealed to them)."""
    if console_key is None or hdd_key is None:
        raise AlreadyExists(
            f"{client_id} or {hdd_id} was registered without a device key (an older"
            " device format): the manufacturer makes the device again"
        )
    return DevicePublic(client_id, hdd_id, bytes(console_key), bytes(hdd_key))
