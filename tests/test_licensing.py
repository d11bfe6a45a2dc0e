"""The licensing flows without a network: the service over a real SQLite file, the console's logic."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from vhw import bindings, crypto
from vhw.console import decisions
from vhw.errors import (
    CopyNotPermitted,
    MediaRefused,
    RegistrationRefused,
    ReproductionNotPermitted,
    TooManyAttempts,
    UserIdInvalid,
)
from vhw.ids import ID_FIELDS, Id, IdKind
from vhw.server.licensing import Policy
from vhw.server.store import PostgresStore, SqliteStore

from .conftest import BACKENDS, database_for
from .world import World, new_disc


@pytest.fixture(params=BACKENDS)
def make_world(request, tmp_path):
    """Worlds on SQLite and on PostgreSQL: the whole suite runs on both."""
    made = []

    def make(policy: Policy | None = None) -> World:
        url = database_for(request, request.param)
        store = PostgresStore(url) if url else SqliteStore(tmp_path / f"lic{len(made)}.db")
        world = World.make(tmp_path, policy=policy, store=store)
        made.append(world)
        return world

    yield make
    for world in made:
        world.lic.store.close()


@pytest.fixture
def world(make_world) -> World:
    return make_world()


def test_register_acquire_copy_confirm(world):
    kit = world.user()
    assert kit.card.registered and kit.view.user == kit.user
    title, disc = world.disc()
    kit = world.acquire(kit, disc)
    # S21-S23: the keys open on this console and HDD, and are the title's
    ck, match = decisions.copy_keys(kit.view, world.hw(kit), disc.mid, title)
    assert ck == world.titles[title]
    assert decisions.reproduction_key(kit.view, world.hw(kit)) == match
    assert world.confirm(kit, disc).created
    assert not world.confirm(kit, disc).created  # a retried confirm is fine
    # the owner may install the disc again onto the same registered devices (after `hdd rm` or
    # data loss): that copies nothing to anyone else
    again = world.acquire(kit, disc)
    assert decisions.copy_keys(again.view, world.hw(kit), disc.mid, title)[0] == world.titles[title]
    with pytest.raises(MediaRefused):
        world.acquire(world.user(), disc)  # anyone else: never


def test_lost_answer_can_be_fetched_again_until_confirm(world):
    kit = world.user()
    _, disc = world.disc()
    first = world.acquire(kit, disc)
    again = world.acquire(kit, disc)  # the first answer "got lost": same user, same devices
    assert decisions.copy_keys(again.view, world.hw(kit), disc.mid, first.card.licenses[0].title_id)
    other = world.user()
    with pytest.raises(MediaRefused):
        world.acquire(other, disc)  # no one else, ever


def test_registration_refusals(world):
    with pytest.raises(RegistrationRefused):
        world.register(world.kit(register_devices=False))  # a card the platform never made
    kit = world.kit()
    forged = decisions.registration_request(kit.card, kit.client_id, kit.hdd_id)
    with pytest.raises(RegistrationRefused):  # someone who read the label but has no MC-Key
        world.lic.register("console", forged.__class__(forged.mc_id, forged.client_id, forged.hdd_id, bytes(32)))
    unknown_console = kit.on(console=world.kit(register_devices=False))
    with pytest.raises(RegistrationRefused):
        world.register(unknown_console)
    first = world.register(kit)
    assert world.register(kit).user == first.user  # the same devices again: the same User ID
    other_hdd = world.kit()
    with pytest.raises(RegistrationRefused):  # the card is someone's already, with other devices
        world.register(kit.on(hdd=other_hdd))


def test_user_id_refusals(world):
    kit = world.user()
    _, disc = world.disc()
    moved = world.kit()  # a registered console and HDD, but not this user's
    for wrong in (kit.on(console=moved), kit.on(hdd=moved)):
        with pytest.raises(UserIdInvalid):
            world.acquire(wrong, disc)
    # a card whose User ID was replaced by a made-up one (wrapped correctly with its MC-Key)
    fake = bindings.wrap_id(kit.card.mc_key, Id.random(IdKind.USER), bindings.user_id(kit.card.mc_id))
    with pytest.raises(UserIdInvalid):
        world.acquire(kit.with_(card=kit.card.__class__(**{**kit.card.__dict__, "user_id": fake})), disc)
    # another card's wrapped User ID sent with this card's MC-ID (the console itself would not:
    # it does not open with this card's MC-Key)
    other = world.user()
    req = decisions.acquisition_request(kit.view, world.hw(kit), disc)
    with pytest.raises(UserIdInvalid):
        world.lic.acquire("console", dataclasses.replace(req, user_id=other.card.user_id))


def test_media_refusals(world):
    kit = world.user()
    with pytest.raises(MediaRefused):
        world.acquire(kit, new_disc(world.digests[world.title()]))  # never pressed
    _, disc = world.disc()
    world.acquire(world.user(), disc)
    with pytest.raises(MediaRefused):
        world.acquire(kit, disc)  # the disc was lent after its owner installed it


def test_copy_and_reproduction_refusals_on_the_console(world):
    kit = world.user()
    title, disc = world.disc()
    kit = world.acquire(kit, disc)
    other = world.kit()
    for lent in (kit.on(console=other), kit.on(hdd=other), kit.on(console=other, hdd=other)):
        with pytest.raises(CopyNotPermitted):  # card lent to another console, right card other HDD, ...
            decisions.copy_keys(lent.view, world.hw(lent), disc.mid, title)
        with pytest.raises(ReproductionNotPermitted):
            decisions.reproduction_key(lent.view, world.hw(lent))
    with pytest.raises(ReproductionNotPermitted):
        decisions.reproduction_key(None, world.hw(kit))  # no card


def test_acquisition_answer_replayed_to_another_card_is_useless(world):
    kit, thief = world.user(), world.user()
    title, disc = world.disc()
    req = decisions.acquisition_request(kit.view, world.hw(kit), disc)
    resp = world.lic.acquire("console", req)
    # stored on the thief's card it is useless: nothing opens on the thief's devices
    stolen = decisions.accept_acquisition(thief.view, req, resp, disc.mid, world.hw(thief), acquired=1)
    with pytest.raises(CopyNotPermitted):
        decisions.copy_keys(stolen, world.hw(thief), disc.mid, title)
    with pytest.raises(crypto.Invalid):
        bindings.open_content_key(thief.devices, thief.card.mc_key, thief.card.mc_id, disc.mid, title, resp.content_key)
    # and the thief's card in the victim's console does not open it either (the MC-Key differs)
    with pytest.raises(crypto.Invalid):
        bindings.open_content_key(kit.devices, thief.card.mc_key, thief.card.mc_id, disc.mid, title, resp.content_key)
    in_victims = thief.on(console=kit, hdd=kit)  # the thief's card in the victim's console
    stolen = decisions.accept_acquisition(in_victims.view, req, resp, disc.mid, world.hw(in_victims), acquired=1)
    with pytest.raises(CopyNotPermitted):
        decisions.copy_keys(stolen, world.hw(in_victims), disc.mid, title)


def test_content_keys_of_two_mids_cannot_be_swapped(world):
    kit = world.user()
    t1, d1 = world.disc()
    t2, d2 = world.disc()
    kit = world.acquire(world.acquire(kit, d1), d2)
    a, b = kit.card.licenses
    swapped = kit.card.__class__(
        **{
            **kit.card.__dict__,
            "licenses": (a.__class__(a.title_id, a.mid, b.content_key), b.__class__(b.title_id, b.mid, a.content_key)),
        }
    )
    with pytest.raises(CopyNotPermitted):
        decisions.copy_keys(decisions.CardView.open(swapped), world.hw(kit), d1.mid, t1)


def test_guessing_user_ids_is_rate_limited(world):
    kit = world.user()
    _, disc = world.disc()
    for _ in range(world.lic.policy.attempt_limit):
        fake = bindings.wrap_id(kit.card.mc_key, Id.random(IdKind.USER), bindings.user_id(kit.card.mc_id))
        with pytest.raises(UserIdInvalid):
            world.acquire(kit.with_(card=kit.card.__class__(**{**kit.card.__dict__, "user_id": fake})), disc)
    with pytest.raises(TooManyAttempts):
        world.acquire(kit, disc)  # even the right User ID must now wait


def test_audit_log_records_every_change(world):
    kit = world.user()
    _, disc = world.disc()
    kit = world.acquire(kit, disc)
    world.acquire(kit, disc)
    world.confirm(kit, disc)
    from vhw import protocol as p

    actions = [e.action for e in world.lic.audit(p.AuditQuery()).entries]
    for action in (
        "register-card",
        "register-console-",
        "register-hdd",
        "register-title",
        "register-mid",
        "register-user",
        "flag-mid",
        "issue-keys",
        "refetch-keys",
        "confirm-install",
    ):
        assert any(a.startswith(action.rstrip("-")) for a in actions), action


SUBSETS = [frozenset(c) for n in (1, 2, 3) for c in itertools.combinations(ID_FIELDS, n)]


@pytest.mark.parametrize("subset", SUBSETS, ids=lambda s: "+".join(sorted(s)))
def test_identification_policy(make_world, subset):
    world = make_world(Policy(identify_by=subset))
    kit = world.user()
    _, disc = world.disc()
    spare = world.kit()
    for name in ("client_id", "hdd_id"):
        moved = kit.on(console=spare) if name == "client_id" else kit.on(hdd=spare)
        if name in subset:  # a mismatching ID of the subset is refused
            with pytest.raises(UserIdInvalid):
                world.acquire(moved, disc)
        else:  # an ID outside the subset is ignored by the server
            world.acquire(moved, disc)
    world.acquire(kit, disc)
