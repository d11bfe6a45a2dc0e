"""A license needs the disc, not its label; a repair hands no disc to anyone else.

Each attack runs through vhw's own library with everything the attacker has: a registered card,
console and HDD of their own, any number of MID labels read off other people's discs, the title
digest (public: any disc of the title shows it), discs of their own, and requests of their own
making. The server must give no key and flag nothing unless the request proves the disc's secret.
"""

from __future__ import annotations

import dataclasses

import pytest

from vhw import bindings, crypto
from vhw.console import decisions
from vhw.errors import CopyNotPermitted, MediaRefused, UserIdInvalid
from vhw.ids import Id, IdKind
from vhw.server.licensing import Licensing

from .world import Kit, World


@pytest.fixture
def world(tmp_path) -> World:
    w = World.make(tmp_path)
    yield w
    w.lic.store.close()


def flags(lic: Licensing) -> dict[str, str | None]:
    with lic.store.transaction() as tx:
        return {mid: user for mid, user in tx.all("SELECT mid, flagged_by FROM media")}


def label_only(disc: decisions.Medium) -> decisions.Medium:
    """What a label shows: the MID (and the title digest, which every disc of the title shows)."""
    return decisions.Medium(disc.mid, disc.title_digest, None)


def forged_requests(world: World, thief: Kit, disc: decisions.Medium):
    """Every acquisition a thief with only the label can make: no proof, a proof with a key of
    their own, zeros, another disc's secret, and another user's captured proof."""
    hw = world.hw(thief)
    view = thief.view
    base = decisions.acquisition_request(view, hw, label_only(disc))
    yield base  # no proof at all
    yield decisions.acquisition_request(view, hw, dataclasses.replace(disc, secret=crypto.signing_seed()))
    yield dataclasses.replace(base, disc_proof=bytes(64))
    _, mine = world.disc(next(iter(world.titles)))  # a disc of the same title, the thief's own
    yield decisions.acquisition_request(view, hw, dataclasses.replace(disc, secret=mine.secret))


def test_a_label_gets_no_key_and_burns_no_disc(world):
    title, disc = world.disc()
    thief, owner = world.user(), world.user()
    for req in forged_requests(world, thief, disc):
        with pytest.raises(MediaRefused):
            world.lic.acquire("console", req)
        with pytest.raises(MediaRefused):
            world.lic.broker_acquire("broker", req)  # the broker path checks the same proof
        with pytest.raises(MediaRefused):
            world.lic.refetch("broker", req)
    assert not any(flags(world.lic).values())  # nothing flagged
    # the real disc's owner is not refused: the disc was never burnt
    owner = world.acquire(owner, disc)
    assert decisions.copy_keys(owner.view, world.hw(owner), disc.mid, title)[0] == world.titles[title]


def test_a_captured_proof_serves_no_one_else(world):
    """A proof is bound to its user, card and devices: replayed by another user (their own card
    and devices in the request), it proves nothing."""
    _, disc = world.disc()
    owner, thief = world.user(), world.user()
    proof = decisions.acquisition_request(owner.view, world.hw(owner), disc).disc_proof
    req = dataclasses.replace(
        decisions.acquisition_request(thief.view, world.hw(thief), label_only(disc)), disc_proof=proof
    )
    with pytest.raises(MediaRefused):
        world.lic.acquire("console", req)
    assert flags(world.lic)[str(disc.mid)] is None


def test_many_labels_none_burnt(world):
    title = world.title()
    discs = [world.disc(title)[1] for _ in range(40)]
    thief = world.user()
    for disc in discs:
        for req in forged_requests(world, thief, disc):
            with pytest.raises(MediaRefused):
                world.lic.acquire("console", req)
    assert all(flags(world.lic)[str(d.mid)] is None for d in discs)
    owners = [world.user() for _ in range(3)]
    for kit, disc in zip(owners, discs, strict=False):
        world.acquire(kit, disc)  # each still goes to its real holder


def test_a_rogue_disc_claiming_a_mid(world):
    """A disc image made with a real MID and a secret of the maker's own (signed by whatever key
    the maker likes, the console being theirs): the server checks the key registered with the MID."""
    _, disc = world.disc()
    thief = world.user()
    rogue = decisions.Medium(disc.mid, disc.title_digest, crypto.signing_seed())
    with pytest.raises(MediaRefused):
        world.acquire(thief, rogue)
    assert flags(world.lic)[str(disc.mid)] is None


def test_the_disc_must_be_the_registered_title(world):
    """A real disc's proof over another title digest (a different title, or a modified disc) is
    refused, though the signature itself is good."""
    _, disc = world.disc()
    kit = world.user()
    other = dataclasses.replace(disc, title_digest=bytes(32))
    with pytest.raises(MediaRefused):
        world.acquire(kit, other)
    assert flags(world.lic)[str(disc.mid)] is None


def test_a_confirm_proves_the_disc_too(world):
    _, disc = world.disc()
    kit = world.acquire(world.user(), disc)
    with pytest.raises(MediaRefused):
        world.lic.confirm("console", decisions.confirm_request(kit.view, world.hw(kit), label_only(disc)))
    assert world.confirm(kit, disc).created


def test_a_mid_registered_without_a_disc_key_is_refused(world):
    """MIDs of the previous format (registered before discs had secrets) get no key at all."""
    title, disc = world.disc()
    with world.lic.store.transaction() as tx:
        tx.execute("UPDATE media SET disc_key = NULL WHERE mid = ?", str(disc.mid))
    with pytest.raises(MediaRefused):
        world.acquire(world.user(), disc)


# -- repairs keep a disc its owner's -----------------------------------------------------------------


def repaired(world: World, kit: Kit, *, console: bool = False, hdd: bool = False) -> Kit:
    """The repair center exchanges the kit's console and/or HDD (FIG. 13): new devices registered,
    the card wiped of its Content-Gen-Key and sealed IDs."""
    from vhw import protocol as p

    spare = world.kit()
    new = kit.on(console=spare if console else None, hdd=spare if hdd else None)
    world.lic.repair(
        "operator", p.RepairRequest(kit.card.mc_id, new.client_id if console else None, new.hdd_id if hdd else None)
    )
    return new.with_(card=decisions.CardView.open(kit.card).wiped().card)


def test_repair_then_another_users_install_is_refused(world):
    title, disc = world.disc()
    alice, bob = world.user(), world.user()
    alice = world.acquire(alice, disc)
    world.confirm(alice, disc)
    for which in ({"console": True}, {"hdd": True}, {"console": True, "hdd": True}):
        alice = repaired(world, alice, **which)
        with pytest.raises(MediaRefused):
            world.acquire(bob, disc)  # bob holds the disc (a byte-for-byte copy): still alice's
        assert flags(world.lic)[str(disc.mid)] == str(alice.user)
        # alice installs again from the disc onto her new devices
        alice = world.acquire(alice, disc)
        assert decisions.copy_keys(alice.view, world.hw(alice), disc.mid, title)[0] == world.titles[title]
        world.confirm(alice, disc)


def test_reinstall_by_the_owner_on_the_owners_hdd_only(world):
    """After `hdd rm` or data loss the owner installs the disc again onto the registered HDD; on
    any other HDD, the keys do not open (and the server answers no one else)."""
    from vhw.server.licensing import Policy

    title, disc = world.disc()
    alice = world.acquire(world.user(), disc)
    world.confirm(alice, disc)
    again = world.acquire(alice, disc)  # the owner, the registered devices: allowed
    assert decisions.copy_keys(again.view, world.hw(again), disc.mid, title)[0] == world.titles[title]
    elsewhere = again.on(hdd=world.kit())
    with pytest.raises(UserIdInvalid):  # the default policy names the HDD: another one is refused
        world.acquire(elsewhere, disc)
    # a server that does not identify users by HDD answers, but seals the keys to the registered HDD
    lax = World(
        Licensing(world.lic.store, world.lic.master_key, Policy(identify_by=frozenset({"mc_id"})), sign=world.lic.sign),
        world.anchor,
        world.titles,
        world.digests,
    )
    got = lax.acquire(elsewhere, disc)
    with pytest.raises(CopyNotPermitted):
        decisions.copy_keys(got.view, lax.hw(got), disc.mid, title)


def test_retired_devices_get_nothing(world):
    _, disc = world.disc()
    _, other = world.disc()
    alice = world.acquire(world.user(), disc)
    old = alice
    alice = repaired(world, alice, console=True)
    old_card_old_console = old  # a copy of her pre-repair card in the retired console
    for req_kit in (old_card_old_console, alice.on(console=old)):
        with pytest.raises(UserIdInvalid):
            world.acquire(req_kit, other)
        with pytest.raises(UserIdInvalid):
            world.acquire(req_kit, disc)


def test_a_wrapped_mid_of_another_card_does_not_open(world):
    """(Unchanged by the proof: the MID travels wrapped for this card and user.)"""
    _, disc = world.disc()
    kit, thief = world.user(), world.user()
    req = decisions.acquisition_request(kit.view, world.hw(kit), disc)
    forged = dataclasses.replace(decisions.acquisition_request(thief.view, world.hw(thief), disc), mid=req.mid)
    with pytest.raises(MediaRefused):
        world.lic.acquire("console", forged)
    assert (
        bindings.unwrap_id(kit.card.mc_key, req.mid, IdKind.MEDIA, bindings.mid(kit.card.mc_id, kit.user)) == disc.mid
    )
    assert isinstance(disc.mid, Id)
