"""Key acquisition (S13-S17), its confirmation, and licenses bought for discs without a MID.

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
from collections.abc import Iterator
from dataclasses import dataclass, field

from .. import bindings, crypto
from .. import protocol as p
from ..errors import MediaRefused, TooManyAttempts, UserIdInvalid
from ..ids import Id, IdKind
from . import records
from .context import Context, device_public
from .store import Row, Tx


@dataclass(frozen=True)
class Caller:
    """Who an acquisition or a confirm comes from, once S13 checked it: the card's MC-Key, the
    User ID it unwrapped, and the user entry with its devices' public keys (:func:`records.acquirer`)."""

    mc_key: bytes
    user: Id
    entry: Row


@dataclass(frozen=True)
class Grant:
    """An acquisition the database granted (S13-S14 committed): what S15 answers with.
    ``flagged``: the MID was flagged just now (not a refetch of the user's own)."""

    req: p.AcquireRequest
    media: Row
    mid: Id
    caller: Caller
    content_key: bytes = field(repr=False)
    flagged: bool


@dataclass
class Acquisitions:
    ctx: Context

    def grant(
        self,
        actor: str,
        req: p.AcquireRequest,
        purchase: p.PurchaseRequest | None = None,
        *,
        refetch_only: bool = False,
    ) -> Grant:
        """S13-S14 in one transaction: authenticate, flag the MID (or find it flagged by this user,
        unconfirmed). :meth:`answer` then seals the keys, outside the transaction and the batch it
        ran in (it needs no database, and the batch's one thread need not wait for it).
        ``refetch_only``: flag nothing, only answer a MID this user flagged (the broker asks so
        when it cannot take a payment); ``purchase``: the console's fresh MID becomes a bought
        license."""
        ctx = self.ctx
        with self._counting_failures(req.mc_id), ctx.store.transaction() as tx:
            caller = self._authenticate(tx, req)
            mid = self._unwrap_mid(caller, req)
            if purchase is not None:
                self._register_purchase(tx, actor, purchase, mid, caller.user)
            media, flagged = self._flag(tx, mid, caller.user, purchase is not None, refetch_only=refetch_only)
            # the disc itself, not its label: a disc that does not prove its secret is refused, and
            # its flag of a moment ago goes with the transaction
            _check_disc(req, media, mid, caller.user)
            self._audit_issue(tx, actor, req, media, mid, caller.user, flagged=flagged)
            content_key = ctx.open("titles", media.title_id, media.content_key)
        return Grant(req, media, mid, caller, content_key, flagged)

    def _flag(self, tx: Tx, mid: Id, user: Id, purchase: bool, *, refetch_only: bool) -> tuple[Row, bool]:
        """S14: flag the MID for this user, unless someone already did (atomic in one UPDATE, which
        also reads the disc and its title in the usual case); the MID's row, and whether it was
        flagged now. A MID flagged by someone else is refused (S17), as one no publisher pressed
        (or a bought MID used as a disc's)."""
        if not refetch_only:
            media = records.flag_disc(tx, str(mid), str(user), self.ctx.now(), purchased=purchase)
            if media is not None:
                return media, True
        media = records.disc(tx, str(mid), with_key=True)
        if media is None or (not refetch_only and bool(media.purchased) != purchase):
            raise MediaRefused()
        if media.flagged_by != str(user):
            raise MediaRefused()  # S17: copied before by someone else
        # the owner's own disc again (a lost answer, or a re-install onto the user's own
        # registered devices after `hdd rm`, data loss or a repair): the keys are sealed to
        # those devices, so this copies nothing to anyone else
        return media, False

    def _audit_issue(
        self, tx: Tx, actor: str, req: p.AcquireRequest, media: Row, mid: Id, user: Id, *, flagged: bool
    ) -> None:
        again = "refetch-keys" if media.confirmed_at is None else "reinstall-keys"
        title = media.title_id
        tx.audit(
            self.ctx.now(),
            actor,
            [
                ("flag-mid" if flagged else again, mid, {"user_id": user, "title_id": title}),
                ("issue-keys", mid, {"user_id": user, "title_id": title, "mc_id": req.mc_id}),
            ],
        )

    def answer(self, grant: Grant) -> p.AcquireResponse:
        """S15: keys wrapped with the MC-Key and sealed to the user entry's HDD and console, device
        IDs sealed with the Content-Gen-Key."""
        req, media, mid, caller, content_key = grant.req, grant.media, grant.mid, grant.caller, grant.content_key
        ctx, entry, user, mc_key = self.ctx, caller.entry, caller.user, caller.mc_key
        cgk = ctx.open("users", user, entry.content_gen_key)
        devices = device_public(
            Id.parse(entry.client_id, IdKind.CLIENT),
            Id.parse(entry.hdd_id, IdKind.HDD),
            entry.console_key,
            entry.hdd_key,
        )
        title_id = media.title_id
        return p.AcquireResponse(
            title_id=title_id,
            title_digest=bytes(media.title_digest),
            content_key=bindings.issue_content_key(devices, mc_key, req.mc_id, mid, title_id, content_key),
            content_gen_key=ctx.sealed_cgk(devices, mc_key, req.mc_id, user, cgk),
            sealed_ids=bindings.seal_device_ids(cgk, user, devices.client_id, devices.hdd_id),
            card_token=ctx.card_token(cgk, req.mc_id, entry.card_epoch),
        )

    def confirm(self, actor: str, req: p.ConfirmRequest) -> p.Done:
        """The install of a MID this user flagged is complete: the MID is final."""
        ctx = self.ctx
        with self._counting_failures(req.mc_id), ctx.store.transaction() as tx:
            caller = self._authenticate(tx, req)
            mid = self._unwrap_mid(caller, req)
            media = records.disc(tx, str(mid), with_key=False)
            if media is None:
                raise MediaRefused()
            _check_disc(req, media, mid, caller.user)
            if records.confirm(tx, str(mid), str(caller.user), ctx.now()):
                ctx.audit(tx, actor, "confirm-install", mid, user_id=caller.user)
                return p.Done()
            row = records.flag_of(tx, str(mid))
            if row and row.flagged_by == str(caller.user) and row.confirmed_at is not None:
                return p.Done(created=False)  # confirmed already: a retry after a lost answer
            raise MediaRefused()

    # -- S13 ---------------------------------------------------------------------------------------

    def _authenticate(self, tx: Tx, req: p.AcquireRequest) -> Caller:
        """S13: the card's MC-Key, the User ID it unwraps, and the matching user entry (with the
        public keys of its console and HDD)."""
        ctx = self.ctx
        row = records.acquirer(
            tx,
            str(req.mc_id),
            str(req.client_id),
            str(req.hdd_id),
            failures_since=ctx.now() - ctx.policy.attempt_window,
        )
        if row.failures >= ctx.policy.attempt_limit:
            raise TooManyAttempts(f"too many failed attempts with memory card {req.mc_id}; try again later")
        try:
            if row.mc_key is None:
                raise crypto.Invalid()
            mc_key = ctx.open("cards", req.mc_id, row.mc_key)
            user = bindings.unwrap_id(mc_key, req.user_id, IdKind.USER, bindings.user_id(req.mc_id))
        except crypto.Invalid:
            raise UserIdInvalid() from None
        if row.user_id != str(user) or not self._entry_matches(row, req) or not (row.console_in_use and row.hdd_in_use):
            raise UserIdInvalid()
        return Caller(mc_key, user, row)

    def _entry_matches(self, entry: Row, req: p.AcquireRequest) -> bool:
        """The request's IDs in the identification policy equal the entry's; others are ignored."""
        return all(getattr(entry, name) == str(getattr(req, name)) for name in self.ctx.policy.identify_by) and (
            entry.mc_id == str(req.mc_id)  # the card always: its MC-Key wraps everything
        )

    @contextlib.contextmanager
    def _counting_failures(self, mc_id: Id) -> Iterator[None]:
        """Count a refused User ID against the card, after the request's transaction rolled back."""
        try:
            yield
        except UserIdInvalid:
            ctx = self.ctx
            with ctx.store.transaction() as tx:
                records.count_failure(
                    tx, str(mc_id), ctx.now(), forget_before=ctx.now() - 10 * ctx.policy.attempt_window
                )
            raise

    @staticmethod
    def _unwrap_mid(caller: Caller, req: p.AcquireRequest) -> Id:
        """The MID the console sent, wrapped for this card and user; anything else is refused."""
        try:
            return bindings.unwrap_id(caller.mc_key, req.mid, IdKind.MEDIA, bindings.mid(req.mc_id, caller.user))
        except crypto.Invalid:
            raise MediaRefused() from None

    def _register_purchase(self, tx: Tx, actor: str, req: p.PurchaseRequest, mid: Id, user: Id) -> None:
        """Make the console's fresh MID a bought license of the title (once; a retry finds it)."""
        title = records.title(tx, req.title_id)
        if title is None or bytes(title.title_digest) != req.title_digest:
            raise MediaRefused()  # not a title the platform sells
        if records.medium(tx, str(mid)) is None:
            records.add_medium(tx, str(mid), req.title_id, self.ctx.now(), disc_key=None, purchased=True)
            self.ctx.audit(tx, actor, "purchase", mid, user_id=user, title_id=req.title_id)


def _check_disc(req: p.AcquireRequest, media: Row, mid: Id, user: Id) -> None:
    """The request is for the registered title (its digest) and, for a pressed disc, proves the
    disc's secret: a signature over the MID, the user, the card, the devices and the digest, with
    the key registered with the MID. A bought MID (no disc) proves nothing but that it is this
    user's, which the flag shows."""
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
