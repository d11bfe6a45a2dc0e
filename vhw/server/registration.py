"""Registrations: what the manufacturer and the publishers register (consoles, HDDs, cards,
titles, pressed discs), and a user's registration (S3-S7).

A registration repeated with the same values answers as the first did (``created=False``: a lost
answer costs nothing); the same ID with other values is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import bindings, crypto
from .. import protocol as p
from ..errors import AlreadyExists, Forbidden, NotFound, RegistrationRefused
from ..ids import Id, IdKind
from . import records
from .context import Context


@dataclass
class Registrations:
    ctx: Context

    # -- the manufacturer and the publishers ----------------------------------------------------

    def device(self, actor: str, table: str, ident: Id, public_key: bytes) -> p.Done:
        """A console's or HDD's ID with the public key of its secret (keys are sealed to it)."""
        with self.ctx.store.transaction() as tx:
            row = records.device(tx, table, str(ident))
            if row:
                if row.public_key is None or bytes(row.public_key) != public_key:
                    raise AlreadyExists(f"{ident} is already registered with another public key")
                return p.Done(created=False)
            records.add_device(tx, table, str(ident), public_key, self.ctx.now())
            self.ctx.audit(tx, actor, f"register-{table[:-1]}", ident, key=crypto.fingerprint(public_key))
        return p.Done()

    def card(self, actor: str, msg: p.RegisterCard) -> p.Done:
        ctx = self.ctx
        with ctx.store.transaction() as tx:
            row = records.card(tx, str(msg.mc_id))
            if row:
                if not crypto.equal(ctx.open("cards", msg.mc_id, row.mc_key), msg.mc_key):
                    raise AlreadyExists(f"{msg.mc_id} is already registered with another MC-Key")
                return p.Done(created=False)
            records.add_card(tx, str(msg.mc_id), ctx.seal("cards", msg.mc_id, msg.mc_key), ctx.now())
            ctx.audit(tx, actor, "register-card", msg.mc_id)
        return p.Done()

    def title(self, actor: str, msg: p.RegisterTitle) -> p.Done:
        ctx = self.ctx
        with ctx.store.transaction() as tx:
            row = records.title(tx, msg.title_id)
            if row:
                same = crypto.equal(ctx.open("titles", msg.title_id, row.content_key), msg.content_key)
                if not same or bytes(row.title_digest) != msg.title_digest:
                    raise AlreadyExists(f"title {msg.title_id} is already registered with other keys")
                return p.Done(created=False)
            sealed = ctx.seal("titles", msg.title_id, msg.content_key)
            records.add_title(tx, msg.title_id, msg.name, sealed, msg.title_digest, ctx.now(), actor)
            ctx.audit(tx, actor, "register-title", msg.title_id, name=msg.name)
        return p.Done()

    def media(self, actor: str, msg: p.RegisterMedia) -> p.Done:
        ctx = self.ctx
        created = False
        with ctx.store.transaction() as tx:
            title = records.title(tx, msg.title_id)
            if not title:
                raise NotFound(f"title {msg.title_id} is not registered")
            if title.publisher is not None and title.publisher != actor:
                # another publisher's MIDs for this title would be licenses to its Content-Key
                raise Forbidden(f"title {msg.title_id} was registered by another publisher")
            for disc in msg.discs:
                row = records.medium(tx, str(disc.mid))
                if row:
                    if row.title_id != msg.title_id or row.disc_key is None or bytes(row.disc_key) != disc.disc_key:
                        raise AlreadyExists(f"{disc.mid} is already registered for another disc")
                    continue
                records.add_medium(tx, str(disc.mid), msg.title_id, ctx.now(), disc_key=disc.disc_key)
                key = crypto.fingerprint(disc.disc_key)
                ctx.audit(tx, actor, "register-mid", disc.mid, title_id=msg.title_id, disc_key=key)
                created = True
        return p.Done(created=created)

    # -- a user, S3-S7 -------------------------------------------------------------------------------

    def user(self, actor: str, req: p.RegisterRequest) -> p.RegisterResponse:
        ctx = self.ctx
        with ctx.store.transaction() as tx:
            card = records.card(tx, str(req.mc_id), in_use=True)
            if card is None:  # S3: not a card the platform made
                raise RegistrationRefused()
            mc_key = ctx.open("cards", req.mc_id, card.mc_key)
            proof = bindings.registration_proof(mc_key, req.mc_id, req.client_id, req.hdd_id)
            if not crypto.equal(proof, req.proof):  # whoever sent this does not hold the card
                raise RegistrationRefused()
            devices_in_use = records.device_in_use(tx, "consoles", str(req.client_id)) and records.device_in_use(
                tx, "hdds", str(req.hdd_id)
            )
            if not devices_in_use:
                raise RegistrationRefused()
            ids = {name: str(getattr(req, name)) for name in ctx.policy.identify_by}
            existing = records.users_like(tx, ids, str(req.mc_id))
            mine = (str(req.mc_id), str(req.client_id), str(req.hdd_id))
            if existing:
                # Registering again from the same devices returns the same User ID (a lost
                # response must not lock the user out); anything else is someone else's entry.
                same = [e for e in existing if (e.mc_id, e.client_id, e.hdd_id) == mine]
                if not same:
                    raise RegistrationRefused()
                user = Id.parse(same[0].user_id, IdKind.USER)
            else:
                user = Id.random(IdKind.USER)  # S4: a random User ID
                cgk = ctx.seal("users", user, crypto.random_key())
                records.add_user(tx, str(user), *mine, cgk, ctx.now())
                ctx.audit(tx, actor, "register-user", user, mc_id=req.mc_id, client_id=req.client_id, hdd_id=req.hdd_id)
        # S5: the User ID goes back wrapped with the card's MC-Key
        return p.RegisterResponse(bindings.wrap_id(mc_key, user, bindings.user_id(req.mc_id)))
