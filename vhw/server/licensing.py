"""The licensing server's behaviour (system server 4 with database 3), independent of HTTP.

:class:`Licensing` takes decoded protocol messages and returns protocol messages, or raises one of
the patent's refusals. The web layer (:mod:`vhw.server.app`) only authenticates, decodes and encodes;
tests drive this class directly against a real database and then again over HTTPS.

Once per disc under any concurrency: flagging a MID is one conditional UPDATE
(``... WHERE flagged_by IS NULL``) inside the request's transaction; whoever's UPDATE changes the
row owns the MID, every other request sees it flagged. The owner may fetch the keys again until it
confirms the install (a lost response never loses a purchase); after confirm, the MID is final.

Refusals never say which check failed: an unknown card, a wrong User ID and devices that do not
match the user entry all answer ``USER ID INVALID. PLEASE COMPLETE USER REGISTRATION.``; an unknown
MID, a MID flagged by someone else and a confirmed one all answer ``CONTENT CANNOT BE COPIED FROM
THIS MEDIA``. Failed User ID checks are counted per card; past a limit the card is told to wait.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple, ParamSpec, TypeVar

from .. import bindings, crypto
from .. import protocol as p
from ..bindings import DevicePublic, owner_of
from ..errors import (
    AlreadyExists,
    Forbidden,
    MediaRefused,
    NotFound,
    RegistrationRefused,
    StateError,
    TooManyAttempts,
    Unprocessable,
    UserIdInvalid,
)
from ..ids import ID_FIELDS, Id, IdKind
from .store import Conflict, Row, Store, Tx

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


class UserEntry(NamedTuple):
    """A user entry as an acquisition reads it, with its devices' registered public keys."""

    user_id: str
    mc_id: str
    client_id: str
    hdd_id: str
    content_gen_key: bytes  # sealed under the master key
    card_epoch: int
    console_key: bytes | None
    hdd_key: bytes | None


class MediaRow(NamedTuple):
    """A MID as an acquisition or a confirm reads it, with its title's keys."""

    title_id: str
    content_key: bytes | None  # sealed under the master key (None where not read)
    title_digest: bytes
    purchased: int
    disc_key: bytes | None
    flagged_by: str | None
    confirmed_at: int | None


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
class Licensing:
    store: Store
    master_key: bytes = field(repr=False)
    policy: Policy = field(default_factory=Policy)
    clock: Callable[[], float] = time.time
    # Signs card tokens (vhw.bindings) with the platform CA's key: consoles check them against the
    # CA in their ROM. Given by the server's home; tests may pass their own CA's.
    sign: Callable[[bytes], bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # What a user's every acquisition carries the same of, as long as the card and the devices
        # stay the same: the Content-Gen-Key sealed to them, and the card token. Both are functions
        # of their arguments (any fresh sealing or signature of them is as good as another), so a
        # server hands out the one it made last time instead of paying an HPKE sealing and a
        # signature per disc; a repaired device, a reissued card or a new epoch are other arguments.
        self._sealed_cgk = functools.lru_cache(maxsize=4096)(bindings.issue_content_gen_key)
        self._signed_token = functools.lru_cache(maxsize=4096)(
            lambda owner, mc_id, epoch: bindings.make_card_token(self._require_signer(), owner, mc_id, epoch)
        )

    def _require_signer(self) -> Callable[[bytes], bytes]:
        if self.sign is None:
            raise StateError("this server cannot sign card tokens (no platform signing key)")
        return self.sign

    def _card_token(self, cgk: bytes, mc_id: Id, epoch: int) -> bytes:
        self._require_signer()
        return bytes(self._signed_token(owner_of(cgk), mc_id, epoch))

    # -- transactions ---------------------------------------------------------------------------

    def _retrying(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn`` (one transaction) again when it lost a race; the rerun sees the winner's
        row (a registration that happened meanwhile) and answers as for a repeated request."""
        for attempt in range(5):
            try:
                return fn(*args, **kwargs)
            except Conflict:
                if attempt == 4:
                    raise
                log.info("transaction conflict in %s; running it again", fn.__name__)
        raise AssertionError("unreachable")

    # -- keys at rest -------------------------------------------------------------------------

    def _seal(self, table: str, row: object, key: bytes) -> bytes:
        return crypto.wrap(self.master_key, key, bindings.at_rest(table, row))

    def _open(self, table: str, row: object, blob: bytes) -> bytes:
        return crypto.unwrap(self.master_key, blob, bindings.at_rest(table, row))

    def _now(self) -> int:
        return int(self.clock())

    def _audit(self, tx: Tx, actor: str, action: str, subject: object, **detail: object) -> None:
        self._audit_all(tx, actor, [(action, subject, detail)])

    def _audit_all(self, tx: Tx, actor: str, entries: list[tuple[str, object, dict[str, object]]]) -> None:
        """Several audit entries, in this order, in one statement."""
        tx.audit(self._now(), actor, entries)

    def record_refusal(self, actor: str, kind: str, endpoint: str, subject: str) -> None:
        """A refusal with one of the patent's messages, in the audit log (``refuse-KIND``)."""
        with self.store.transaction() as tx:
            self._audit(tx, actor, f"refuse-{kind}", subject, endpoint=endpoint)

    # -- manufacturer and publisher -------------------------------------------------------------

    def register_device(self, actor: str, table: str, ident: Id, public_key: bytes) -> p.Done:
        return self._retrying(self._register_device, actor, table, ident, public_key)

    def _register_device(self, actor: str, table: str, ident: Id, public_key: bytes) -> p.Done:
        """A console's or HDD's ID with the public key of its secret (keys are sealed to it)."""
        column = {"consoles": "client_id", "hdds": "hdd_id"}[table]
        with self.store.transaction() as tx:
            row = tx.one(f"SELECT public_key FROM {table} WHERE {column} = ?", str(ident))
            if row:
                if row[0] is None or bytes(row[0]) != public_key:
                    raise AlreadyExists(f"{ident} is already registered with another public key")
                return p.Done(created=False)
            tx.execute(
                f"INSERT INTO {table} ({column}, registered, public_key) VALUES (?, ?, ?)",
                str(ident),
                self._now(),
                public_key,
            )
            self._audit(tx, actor, f"register-{table[:-1]}", ident, key=crypto.fingerprint(public_key))
        return p.Done()

    def _device_keys(self, tx: Tx, client_id: Id, hdd_id: Id) -> DevicePublic:
        """The registered public keys of a user entry's console and HDD."""
        console = tx.one("SELECT public_key FROM consoles WHERE client_id = ?", str(client_id))
        hdd = tx.one("SELECT public_key FROM hdds WHERE hdd_id = ?", str(hdd_id))
        return _device_public(client_id, hdd_id, console[0] if console else None, hdd[0] if hdd else None)

    def register_card(self, actor: str, msg: p.RegisterCard) -> p.Done:
        return self._retrying(self._register_card, actor, msg)

    def _register_card(self, actor: str, msg: p.RegisterCard) -> p.Done:
        with self.store.transaction() as tx:
            row = tx.one("SELECT mc_key FROM cards WHERE mc_id = ?", str(msg.mc_id))
            if row:
                if not crypto.equal(self._open("cards", msg.mc_id, row[0]), msg.mc_key):
                    raise AlreadyExists(f"{msg.mc_id} is already registered with another MC-Key")
                return p.Done(created=False)
            tx.execute(
                "INSERT INTO cards (mc_id, mc_key, registered) VALUES (?, ?, ?)",
                str(msg.mc_id),
                self._seal("cards", msg.mc_id, msg.mc_key),
                self._now(),
            )
            self._audit(tx, actor, "register-card", msg.mc_id)
        return p.Done()

    def register_title(self, actor: str, msg: p.RegisterTitle) -> p.Done:
        return self._retrying(self._register_title, actor, msg)

    def _register_title(self, actor: str, msg: p.RegisterTitle) -> p.Done:
        with self.store.transaction() as tx:
            row = tx.one("SELECT content_key, title_digest FROM titles WHERE title_id = ?", msg.title_id)
            if row:
                same = crypto.equal(self._open("titles", msg.title_id, row[0]), msg.content_key)
                if not same or bytes(row[1]) != msg.title_digest:
                    raise AlreadyExists(f"title {msg.title_id} is already registered with other keys")
                return p.Done(created=False)
            tx.execute(
                "INSERT INTO titles (title_id, name, content_key, title_digest, registered, publisher)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                msg.title_id,
                msg.name,
                self._seal("titles", msg.title_id, msg.content_key),
                msg.title_digest,
                self._now(),
                actor,
            )
            self._audit(tx, actor, "register-title", msg.title_id, name=msg.name)
        return p.Done()

    def register_media(self, actor: str, msg: p.RegisterMedia) -> p.Done:
        return self._retrying(self._register_media, actor, msg)

    def _register_media(self, actor: str, msg: p.RegisterMedia) -> p.Done:
        created = False
        with self.store.transaction() as tx:
            title = tx.one("SELECT publisher FROM titles WHERE title_id = ?", msg.title_id)
            if not title:
                raise NotFound(f"title {msg.title_id} is not registered")
            if title[0] is not None and title[0] != actor:
                # another publisher's MIDs for this title would be licenses to its Content-Key
                raise Forbidden(f"title {msg.title_id} was registered by another publisher")
            for disc in msg.discs:
                row = tx.one("SELECT title_id, disc_key FROM media WHERE mid = ?", str(disc.mid))
                if row:
                    if row[0] != msg.title_id or row[1] is None or bytes(row[1]) != disc.disc_key:
                        raise AlreadyExists(f"{disc.mid} is already registered for another disc")
                    continue
                tx.execute(
                    "INSERT INTO media (mid, title_id, registered, disc_key) VALUES (?, ?, ?, ?)",
                    str(disc.mid),
                    msg.title_id,
                    self._now(),
                    disc.disc_key,
                )
                self._audit(
                    tx,
                    actor,
                    "register-mid",
                    disc.mid,
                    title_id=msg.title_id,
                    disc_key=crypto.fingerprint(disc.disc_key),
                )
                created = True
        return p.Done(created=created)

    # -- user registration, S3-S7 -----------------------------------------------------------------

    def register(self, actor: str, req: p.RegisterRequest) -> p.RegisterResponse:
        return self._retrying(self._register, actor, req)

    def _register(self, actor: str, req: p.RegisterRequest) -> p.RegisterResponse:
        with self.store.transaction() as tx:
            card = tx.one("SELECT mc_key FROM cards WHERE mc_id = ? AND retired IS NULL", str(req.mc_id))
            if card is None:  # S3: not a card the platform made
                raise RegistrationRefused()
            mc_key = self._open("cards", req.mc_id, card[0])
            proof = bindings.registration_proof(mc_key, req.mc_id, req.client_id, req.hdd_id)
            if not crypto.equal(proof, req.proof):  # whoever sent this does not hold the card
                raise RegistrationRefused()
            if not self._device_known(tx, req.client_id, req.hdd_id):
                raise RegistrationRefused()
            existing = self._entries_like(tx, req)
            if existing:
                # Registering again from the same devices returns the same User ID (a lost
                # response must not lock the user out); anything else is someone else's entry.
                same = [e for e in existing if e[1:4] == (str(req.mc_id), str(req.client_id), str(req.hdd_id))]
                if not same:
                    raise RegistrationRefused()
                user = Id.parse(same[0][0], IdKind.USER)
            else:
                user = Id.random(IdKind.USER)  # S4: a random User ID
                cgk = crypto.random_key()
                tx.execute(
                    "INSERT INTO users (user_id, mc_id, client_id, hdd_id, content_gen_key, created)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    str(user),
                    str(req.mc_id),
                    str(req.client_id),
                    str(req.hdd_id),
                    self._seal("users", user, cgk),
                    self._now(),
                )
                self._audit(
                    tx, actor, "register-user", user, mc_id=req.mc_id, client_id=req.client_id, hdd_id=req.hdd_id
                )
        # S5: the User ID goes back wrapped with the card's MC-Key
        return p.RegisterResponse(bindings.wrap_id(mc_key, user, bindings.user_id(req.mc_id)))

    def _device_known(self, tx: Tx, client_id: Id, hdd_id: Id) -> bool:
        return bool(
            tx.one("SELECT 1 FROM consoles WHERE client_id = ? AND retired IS NULL", str(client_id))
            and tx.one("SELECT 1 FROM hdds WHERE hdd_id = ? AND retired IS NULL", str(hdd_id))
        )

    def _entries_like(self, tx: Tx, req: p.RegisterRequest) -> list[Row]:
        """User entries the request's devices would be confused with: the same card, or the same
        combination of identifying IDs (under the policy, that combination *is* the user)."""
        names = sorted(self.policy.identify_by)
        where = " AND ".join(f"{name} = ?" for name in names)
        return tx.all(
            f"SELECT user_id, mc_id, client_id, hdd_id FROM users WHERE ({where}) OR mc_id = ?",
            *(str(getattr(req, name)) for name in names),
            str(req.mc_id),
        )

    # -- MID registration and key acquisition, S13-S17 --------------------------------------------

    def _authenticate_user(self, tx: Tx, req: p.AcquireRequest) -> tuple[bytes, Id, UserEntry]:
        """S13: the card's MC-Key, the User ID it unwraps, and the matching user entry (with the
        public keys of its console and HDD). One query: on PostgreSQL each round trip counts."""
        row = tx.row(
            "SELECT (SELECT COUNT(*) FROM attempts WHERE subject = q.mc_id AND at > ?), c.mc_key,"
            " u.user_id, u.mc_id, u.client_id, u.hdd_id, u.content_gen_key, u.card_epoch,"
            " (SELECT 1 FROM consoles WHERE client_id = ? AND retired IS NULL),"
            " (SELECT 1 FROM hdds WHERE hdd_id = ? AND retired IS NULL),"
            " (SELECT public_key FROM consoles WHERE client_id = u.client_id),"
            " (SELECT public_key FROM hdds WHERE hdd_id = u.hdd_id)"
            " FROM (SELECT CAST(? AS TEXT) AS mc_id) q"
            " LEFT JOIN cards c ON c.mc_id = q.mc_id AND c.retired IS NULL"
            " LEFT JOIN users u ON u.mc_id = q.mc_id",
            self._now() - self.policy.attempt_window,
            str(req.client_id),
            str(req.hdd_id),
            str(req.mc_id),
        )
        if row[0] >= self.policy.attempt_limit:
            raise TooManyAttempts(f"too many failed attempts with memory card {req.mc_id}; try again later")
        try:
            if row[1] is None:
                raise crypto.Invalid()
            mc_key = self._open("cards", req.mc_id, row[1])
            user = bindings.unwrap_id(mc_key, req.user_id, IdKind.USER, bindings.user_id(req.mc_id))
        except crypto.Invalid:
            raise UserIdInvalid() from None
        entry = UserEntry(*row[2:8], *row[10:12])
        if entry.user_id != str(user) or not self._entry_matches(entry, req) or not (row[8] and row[9]):
            raise UserIdInvalid()
        return mc_key, user, entry

    def _entry_matches(self, entry: UserEntry, req: p.AcquireRequest) -> bool:
        """The request's IDs in the identification policy equal the entry's; others are ignored."""
        stored = {"mc_id": entry.mc_id, "client_id": entry.client_id, "hdd_id": entry.hdd_id}
        return all(stored[name] == str(getattr(req, name)) for name in self.policy.identify_by) and (
            stored["mc_id"] == str(req.mc_id)  # the card always: its MC-Key wraps everything
        )

    @contextlib.contextmanager
    def _counting_failures(self, mc_id: Id) -> Iterator[None]:
        """Count a refused User ID against the card, after the request's transaction rolled back."""
        try:
            yield
        except UserIdInvalid:
            with self.store.transaction() as tx:
                tx.execute("INSERT INTO attempts (subject, at) VALUES (?, ?)", str(mc_id), self._now())
                tx.execute("DELETE FROM attempts WHERE at < ?", self._now() - 10 * self.policy.attempt_window)
            raise

    @staticmethod
    def _unwrap_mid(mc_key: bytes, req: p.AcquireRequest, user: Id) -> Id:
        """The MID the console sent, wrapped for this card and user; anything else is refused."""
        try:
            return bindings.unwrap_id(mc_key, req.mid, IdKind.MEDIA, bindings.mid(req.mc_id, user))
        except crypto.Invalid:
            raise MediaRefused() from None

    def acquire(self, actor: str, req: p.AcquireRequest) -> p.AcquireResponse:
        return self._issue(actor, req)[0]

    def broker_acquire(self, actor: str, req: p.AcquireRequest) -> p.BrokerAcquireResponse:
        resp, first = self._issue(actor, req)
        return p.BrokerAcquireResponse(**resp.__dict__, first_issue=first)

    def refetch(self, actor: str, req: p.AcquireRequest) -> p.BrokerAcquireResponse:
        """The keys of a MID this user flagged and has not confirmed yet, and nothing else: never
        flags anything (the broker asks this when it cannot take a payment)."""
        resp, _ = self._issue(actor, req, refetch_only=True)
        return p.BrokerAcquireResponse(**resp.__dict__, first_issue=False)

    def purchase(self, actor: str, req: p.PurchaseRequest) -> p.BrokerAcquireResponse:
        """A license bought for a disc without a MID: the console's fresh MID becomes a paid one."""
        resp, first = self._retrying(self._issue, actor, req, req)
        return p.BrokerAcquireResponse(**resp.__dict__, first_issue=first)

    def _issue(
        self,
        actor: str,
        req: p.AcquireRequest,
        purchase: p.PurchaseRequest | None = None,
        *,
        refetch_only: bool = False,
    ) -> tuple[p.AcquireResponse, bool]:
        """S13-S15: authenticate, flag the MID (or find it flagged by this user, unconfirmed), and
        answer with the keys. Returns the answer and whether the MID was flagged just now."""
        with self._counting_failures(req.mc_id), self.store.transaction() as tx:
            mc_key, user, entry = self._authenticate_user(tx, req)
            mid = self._unwrap_mid(mc_key, req, user)
            if purchase is not None:
                self._register_purchase(tx, actor, purchase, mid, user)
            media = self._media(tx, mid, with_key=True)
            if media is None or (not refetch_only and bool(media.purchased) != (purchase is not None)):
                raise MediaRefused()  # not a disc any publisher pressed (or a bought MID used as a disc's)
            # the disc itself, not its label: checked before anything is flagged
            self._check_disc(req, media, mid, user)
            # S14: flag the MID for this user, unless someone already did; atomic in one UPDATE.
            flagged = (
                0
                if refetch_only or media.flagged_by is not None
                else tx.execute(
                    "UPDATE media SET flagged_by = ?, flagged_at = ? WHERE mid = ? AND flagged_by IS NULL",
                    str(user),
                    self._now(),
                    str(mid),
                )
            )
            if not flagged:
                owner = tx.row("SELECT flagged_by, confirmed_at FROM media WHERE mid = ?", str(mid))
                if owner[0] != str(user):
                    raise MediaRefused()  # S17: copied before by someone else
            # the owner's own disc again (a lost answer, or a re-install onto the user's own
            # registered devices after `hdd rm`, data loss or a repair): the keys are sealed to
            # those devices, so this copies nothing to anyone else
            again = "refetch-keys" if media.confirmed_at is None else "reinstall-keys"
            self._audit_all(
                tx,
                actor,
                [
                    ("flag-mid" if flagged else again, mid, {"user_id": user, "title_id": media.title_id}),
                    ("issue-keys", mid, {"user_id": user, "title_id": media.title_id, "mc_id": req.mc_id}),
                ],
            )
            title_id, content_key = (
                media.title_id,
                self._open("titles", media.title_id, bytes(media.content_key or b"")),
            )
            cgk = self._open("users", user, bytes(entry.content_gen_key))
            devices = _device_public(
                Id.parse(entry.client_id, IdKind.CLIENT),
                Id.parse(entry.hdd_id, IdKind.HDD),
                entry.console_key,
                entry.hdd_key,
            )
            epoch = entry.card_epoch
        # S15: keys wrapped with the MC-Key and sealed to the user entry's HDD and console, device
        # IDs sealed with the Content-Gen-Key
        resp = p.AcquireResponse(
            title_id=title_id,
            title_digest=bytes(media.title_digest),
            content_key=bindings.issue_content_key(devices, mc_key, req.mc_id, mid, title_id, content_key),
            content_gen_key=self._sealed_cgk(devices, mc_key, req.mc_id, user, cgk),
            sealed_ids=bindings.seal_device_ids(cgk, user, devices.client_id, devices.hdd_id),
            card_token=self._card_token(cgk, req.mc_id, epoch),
        )
        return resp, bool(flagged)

    @staticmethod
    def _media(tx: Tx, mid: Id, *, with_key: bool) -> MediaRow | None:
        """A MID with its title's digest (and sealed Content-Key, ``with_key``), or None."""
        row = tx.one(
            f"SELECT m.title_id, {'t.content_key' if with_key else 'NULL'}, t.title_digest, m.purchased,"
            " m.disc_key, m.flagged_by, m.confirmed_at FROM media m JOIN titles t ON t.title_id = m.title_id"
            " WHERE m.mid = ?",
            str(mid),
        )
        return MediaRow(*row) if row is not None else None

    @staticmethod
    def _check_disc(req: p.AcquireRequest, media: MediaRow, mid: Id, user: Id) -> None:
        """The request is for the registered title (its digest) and, for a pressed disc, proves
        the disc's secret: a signature over the MID, the user, the card, the devices and the
        digest, with the key registered with the MID. A bought MID (no disc) proves nothing but
        that it is this user's, which the flag shows."""
        if not crypto.equal(bytes(media.title_digest), req.title_digest):
            raise MediaRefused()  # another title, or another version of it, than the MID's
        if media.purchased:  # a license bought for a disc without a MID
            if media.flagged_by is not None and media.flagged_by != str(user):
                raise MediaRefused()
            return
        if media.disc_key is None or req.disc_proof is None:
            raise MediaRefused()  # registered before discs had secrets, or no proof sent
        try:
            bindings.check_disc_proof(
                bytes(media.disc_key), req.disc_proof, mid, user, req.mc_id, req.client_id, req.hdd_id, req.title_digest
            )
        except crypto.Invalid:
            raise MediaRefused() from None

    def _register_purchase(self, tx: Tx, actor: str, req: p.PurchaseRequest, mid: Id, user: Id) -> None:
        """Make the console's fresh MID a bought license of the title (once; a retry finds it)."""
        title = tx.one("SELECT title_digest FROM titles WHERE title_id = ?", req.title_id)
        if title is None or bytes(title[0]) != req.title_digest:
            raise MediaRefused()  # not a title the platform sells
        if tx.one("SELECT 1 FROM media WHERE mid = ?", str(mid)) is None:
            tx.execute(
                "INSERT INTO media (mid, title_id, registered, purchased) VALUES (?, ?, ?, 1)",
                str(mid),
                req.title_id,
                self._now(),
            )
            self._audit(tx, actor, "purchase", mid, user_id=user, title_id=req.title_id)

    def confirm(self, actor: str, req: p.ConfirmRequest) -> p.Done:
        with self._counting_failures(req.mc_id), self.store.transaction() as tx:
            mc_key, user, _ = self._authenticate_user(tx, req)
            mid = self._unwrap_mid(mc_key, req, user)
            media = self._media(tx, mid, with_key=False)
            if media is None:
                raise MediaRefused()
            self._check_disc(req, media, mid, user)
            done = tx.execute(
                "UPDATE media SET confirmed_at = ? WHERE mid = ? AND flagged_by = ? AND confirmed_at IS NULL",
                self._now(),
                str(mid),
                str(user),
            )
            if done:
                self._audit(tx, actor, "confirm-install", mid, user_id=user)
                return p.Done()
            row = tx.one("SELECT flagged_by, confirmed_at FROM media WHERE mid = ?", str(mid))
            if row and row[0] == str(user) and row[1] is not None:
                return p.Done(created=False)  # confirmed already: a retry after a lost answer
            raise MediaRefused()

    # -- operator: repair center ------------------------------------------------------------------

    def repair(self, actor: str, req: p.RepairRequest) -> p.RepairResponse:
        return self._retrying(self._repair, actor, req)

    def _repair(self, actor: str, req: p.RepairRequest) -> p.RepairResponse:
        """FIG. 13: re-register a repaired or exchanged device with its new ID."""
        if req.new_client_id is None and req.new_hdd_id is None:
            raise Unprocessable("a repair names a new console (Client ID) or a new HDD (HDD-ID)")
        with self.store.transaction() as tx:
            entry = tx.one("SELECT user_id, client_id, hdd_id FROM users WHERE mc_id = ?", str(req.mc_id))
            if entry is None:
                raise NotFound(f"no user is registered with memory card {req.mc_id}")
            user, old_client, old_hdd = entry
            now = self._now()
            for new, table, column, old in (
                (req.new_client_id, "consoles", "client_id", old_client),
                (req.new_hdd_id, "hdds", "hdd_id", old_hdd),
            ):
                if new is None:
                    continue
                if not tx.one(f"SELECT 1 FROM {table} WHERE {column} = ? AND retired IS NULL", str(new)):
                    raise Unprocessable(f"{new} is not a registered device (or was retired)")
                if str(new) == old:
                    raise Unprocessable(f"{new} is the device's present ID; a repaired device gets a new one")
                tx.execute(f"UPDATE users SET {column} = ? WHERE user_id = ?", str(new), user)
                tx.execute(f"UPDATE {table} SET retired = ? WHERE {column} = ?", now, old)
                self._audit(tx, actor, "repair-device", user, replaced=old, by=str(new))
            # the user's discs stay flagged for the user alone: they install again from them onto
            # the new devices (an acquisition by the flag's owner is allowed), no one else ever can
            row = tx.row("SELECT COUNT(*) FROM media WHERE flagged_by = ?", user)
            self._audit(tx, actor, "keep-flags", user, count=row[0])
        return p.RepairResponse(row[0])

    def reissue(self, actor: str, req: p.ReissueRequest) -> p.ReissueResponse:
        return self._retrying(self._reissue, actor, req)

    def _reissue(self, actor: str, req: p.ReissueRequest) -> p.ReissueResponse:
        """FIG. 14: a new card for a damaged or lost one; the installed titles keep playing."""
        with self.store.transaction() as tx:
            entry = tx.one(
                "SELECT mc_id, client_id, hdd_id, content_gen_key, card_epoch FROM users WHERE user_id = ?",
                str(req.user_id),
            )
            if entry is None:
                raise NotFound(f"no user {req.user_id}")
            old_mc, client_id, hdd_id, cgk_blob, epoch = entry
            if tx.one("SELECT 1 FROM cards WHERE mc_id = ?", str(req.new_mc_id)):
                raise AlreadyExists(f"{req.new_mc_id} is already a registered card")
            now = self._now()
            tx.execute(
                "INSERT INTO cards (mc_id, mc_key, registered) VALUES (?, ?, ?)",
                str(req.new_mc_id),
                self._seal("cards", req.new_mc_id, req.new_mc_key),
                now,
            )
            tx.execute("UPDATE cards SET retired = ? WHERE mc_id = ?", now, old_mc)
            tx.execute(
                "UPDATE users SET mc_id = ?, card_epoch = ? WHERE user_id = ?",
                str(req.new_mc_id),
                epoch + 1,
                str(req.user_id),
            )
            mids = tx.all("SELECT mid, title_id FROM media WHERE flagged_by = ?", str(req.user_id))
            devices = self._device_keys(tx, Id.parse(client_id, IdKind.CLIENT), Id.parse(hdd_id, IdKind.HDD))
            self._audit(
                tx, actor, "reissue-card", req.user_id, old_mc_id=old_mc, new_mc_id=req.new_mc_id, epoch=epoch + 1
            )
        cgk = self._open("users", req.user_id, cgk_blob)
        key, mc, user = req.new_mc_key, req.new_mc_id, req.user_id
        return p.ReissueResponse(
            user_id=bindings.wrap_id(key, user, bindings.user_id(mc)),
            content_gen_key=bindings.issue_content_gen_key(devices, key, mc, user, cgk),
            sealed_ids=bindings.seal_device_ids(cgk, user, devices.client_id, devices.hdd_id),
            card_token=self._card_token(cgk, mc, epoch + 1),
            licenses=tuple(
                p.LicenseItem(title, bindings.wrap_id(key, Id.parse(mid, IdKind.MEDIA), bindings.mid(mc, user)))
                for mid, title in mids
            ),
        )

    # -- operator -----------------------------------------------------------------------------------

    def audit(self, query: p.AuditQuery) -> p.AuditPage:
        with self.store.transaction() as tx:
            rows = tx.all(
                "SELECT seq, at, actor, action, subject, detail FROM audit WHERE seq > ? ORDER BY seq LIMIT ?",
                query.after,
                query.limit,
            )
        return p.AuditPage(tuple(p.AuditEntry(*r) for r in rows))


def _device_public(client_id: Id, hdd_id: Id, console_key: bytes | None, hdd_key: bytes | None) -> DevicePublic:
    if console_key is None or hdd_key is None:
        raise AlreadyExists(
            f"{client_id} or {hdd_id} was registered without a device key (an older"
            " device format): the manufacturer makes the device again"
        )
    return DevicePublic(client_id, hdd_id, bytes(console_key), bytes(hdd_key))
