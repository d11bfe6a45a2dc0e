"""The repair center's flows: a repaired or exchanged device re-registered with its new ID
(FIG. 13), and a new card for a damaged or lost one (FIG. 14). Either way the user's discs stay
flagged for the user alone, and what is installed keeps playing (or installs again) on the user's
devices."""

from __future__ import annotations

from dataclasses import dataclass

from .. import bindings
from .. import protocol as p
from ..errors import AlreadyExists, NotFound, Unprocessable
from ..ids import Id, IdKind
from . import records
from .context import Context, device_public


@dataclass
class Repairs:
    ctx: Context

    def device(self, actor: str, req: p.RepairRequest) -> p.RepairResponse:
        """FIG. 13: re-register a repaired or exchanged device with its new ID."""
        if req.new_client_id is None and req.new_hdd_id is None:
            raise Unprocessable("a repair names a new console (Client ID) or a new HDD (HDD-ID)")
        ctx = self.ctx
        with ctx.store.transaction() as tx:
            entry = records.user_of_card(tx, str(req.mc_id))
            if entry is None:
                raise NotFound(f"no user is registered with memory card {req.mc_id}")
            now = ctx.now()
            for new, table, old in (
                (req.new_client_id, "consoles", entry.client_id),
                (req.new_hdd_id, "hdds", entry.hdd_id),
            ):
                if new is None:
                    continue
                if not records.device_in_use(tx, table, str(new)):
                    raise Unprocessable(f"{new} is not a registered device (or was retired)")
                if str(new) == old:
                    raise Unprocessable(f"{new} is the device's present ID; a repaired device gets a new one")
                records.move_user(tx, entry.user_id, records.DEVICES[table], str(new))
                records.retire_device(tx, table, old, now)
                ctx.audit(tx, actor, "repair-device", entry.user_id, replaced=old, by=str(new))
            # the user's discs stay flagged for the user alone: they install again from them onto
            # the new devices (an acquisition by the flag's owner is allowed), no one else ever can
            kept = records.count_flagged_by(tx, entry.user_id)
            ctx.audit(tx, actor, "keep-flags", entry.user_id, count=kept)
        return p.RepairResponse(kept)

    def card(self, actor: str, req: p.ReissueRequest) -> p.ReissueResponse:
        """FIG. 14: a new card for a damaged or lost one; the installed titles keep playing."""
        ctx = self.ctx
        user, mc, key = req.user_id, req.new_mc_id, req.new_mc_key
        with ctx.store.transaction() as tx:
            entry = records.user(tx, str(user))
            if entry is None:
                raise NotFound(f"no user {user}")
            if records.card(tx, str(mc)):
                raise AlreadyExists(f"{mc} is already a registered card")
            now, epoch = ctx.now(), entry.card_epoch + 1
            records.add_card(tx, str(mc), ctx.seal("cards", mc, key), now)
            records.retire_card(tx, entry.mc_id, now)
            records.move_user_card(tx, str(user), str(mc), epoch)
            mids = records.flagged_by(tx, str(user))
            keys = records.device_keys(tx, entry.client_id, entry.hdd_id)
            devices = device_public(  # (a device without a key refuses the reissue: nothing is written)
                Id.parse(entry.client_id, IdKind.CLIENT),
                Id.parse(entry.hdd_id, IdKind.HDD),
                keys.console_key,
                keys.hdd_key,
            )
            ctx.audit(tx, actor, "reissue-card", user, old_mc_id=entry.mc_id, new_mc_id=mc, epoch=epoch)
        cgk = ctx.open("users", user, entry.content_gen_key)
        return p.ReissueResponse(
            user_id=bindings.wrap_id(key, user, bindings.user_id(mc)),
            content_gen_key=bindings.issue_content_gen_key(devices, key, mc, user, cgk),
            sealed_ids=bindings.seal_device_ids(cgk, user, devices.client_id, devices.hdd_id),
            card_token=ctx.card_token(cgk, mc, epoch),
            licenses=tuple(
                p.LicenseItem(m.title_id, bindings.wrap_id(key, Id.parse(m.mid, IdKind.MEDIA), bindings.mid(mc, user)))
                for m in mids
            ),
        )
