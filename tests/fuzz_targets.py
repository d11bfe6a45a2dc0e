"""Fuzz targets: each takes arbitrary bytes and must end either normally or with one of the
project's own clear errors. Anything else escaping is a bug.

Used by the hypothesis tests of the suite (tests/test_fuzz.py) and by the coverage-guided atheris
runner (tools/fuzz/fuzz.py). Two kinds per device format:

* ``*_raw``: the bytes are a whole device file, as found on disk;
* ``*_body``: the bytes are what lies inside the integrity protection (the checksummed body, the
  catalog), re-sealed before parsing, so mutations reach the structure parsers instead of stopping
  at a checksum.

API targets run a request body as the server does: JSON, then the message declaration, then the
licensing service on a real SQLite database.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import replace
from functools import cache
from pathlib import Path

from vhw import bindings, crypto, saves
from vhw import protocol as p
from vhw.bindings import DeviceSecrets, TitleBinding
from vhw.console import decisions
from vhw.devices.card import read_state as read_card_state
from vhw.devices.hdd import read_volume
from vhw.errors import VhwError
from vhw.formats import card as card_fmt
from vhw.formats import disc as disc_fmt
from vhw.formats import hdd as hdd_fmt
from vhw.formats import rom as rom_fmt
from vhw.formats.common import parse, seal_envelope
from vhw.ids import Id, IdKind
from vhw.stores.card import CardState
from vhw.stores.hdd import Volume

ALLOWED = (VhwError, p.ProtocolError)
KEY = bytes(range(32))
CLIENT, HDD = Id(IdKind.CLIENT, 1), Id(IdKind.HDD, 2)
DEVICES = DeviceSecrets(CLIENT, HDD, bytes(range(1, 33)), bytes(range(2, 34)))
HARDWARE = decisions.Hardware(DEVICES)


def _generation(catalog: bytes) -> int:
    """The generation a catalog names (after its 8-byte magic): its superblock must say the same."""
    return int.from_bytes(catalog[8:16].ljust(8, b"\0"), "big")


def _reader(data: bytes):
    return lambda n, off: data[off : off + n]


def stable(decode, encode, data: bytes) -> bytes:
    """Decode ``data``, check that what it decodes to survives encoding and decoding unchanged,
    and return its encoding (the seeds' must be their own bytes: tests/test_fuzz.py)."""
    value = decode(data)
    again = encode(value)
    assert decode(again) == value, "decoded, encoded and decoded again, it changed"
    return again


def rom_raw(data: bytes) -> bytes:
    return stable(rom_fmt.decode, rom_fmt.encode, data)


def rom_body(data: bytes) -> None:
    rom_raw(seal_envelope(rom_fmt.MAGIC, rom_fmt.VERSION, data))


def _use_card(card: card_fmt.Card) -> None:
    """What a console does with a card it reads: every check must fail cleanly on nonsense."""
    view = decisions.CardView.open(card)
    decisions.devices_match(view, HARDWARE)
    for lic, mid in view.licenses():
        if mid is not None:
            try:
                decisions.copy_keys(view, HARDWARE, mid, lic.title_id)
            except VhwError:
                pass
    if card.registered:
        try:
            view.require_user()
        except VhwError:
            pass


def _use_card_image(state) -> None:
    """A card image's items as a console uses them, and its saves as the save folder reads them."""
    _use_card(state.card)
    state.problems()
    state.free()
    key = saves.save_key(state.card.mc_key, state.card.mc_id, Id(IdKind.USER, 4))
    for s in state.saves[:4]:
        try:
            saves.open_save(key, s, b"\0" * min(s.layout.sealed_size, 1 << 16))
        except VhwError:
            pass


def card_raw(data: bytes) -> None:
    """A whole card image, as found on disk."""
    _use_card_image(read_card_state(_reader(data), "fuzz", len(data)).state)


def card_catalog(data: bytes) -> bytes:
    """A card catalog past its checksum: the licensing items and the save directory."""

    def sb(d: bytes) -> card_fmt.Superblock:
        return card_fmt.Superblock(
            Id(IdKind.CARD, 3), KEY, 1, 16 * 4096, _generation(d), len(d) or 1, hashlib.sha256(d).digest()
        )

    again = stable(lambda d: card_fmt.decode_catalog(d, sb(d), path="fuzz"), card_fmt.encode_catalog, data)
    _use_card_image(CardState(sb(data), card_fmt.decode_catalog(data, sb(data), path="fuzz")))
    return again


def save_area(data: bytes) -> None:
    """Bytes standing for a save's sealed data under a valid entry: a save edited by hand."""
    key = saves.save_key(KEY, Id(IdKind.CARD, 3), Id(IdKind.USER, 4))
    entry = _seed_save().entry
    try:
        saves.open_save(key, replace(entry, size=len(data) // 2), data)  # an entry that lies about its size
    except VhwError:
        pass
    saves.open_save(key, entry, data)


def save_export(data: bytes) -> bytes:
    return stable(lambda d: saves.decode_export(d, path="fuzz"), saves.encode_export, data)


@cache
def _seed_save():
    key = saves.save_key(KEY, Id(IdKind.CARD, 3), Id(IdKind.USER, 4))
    return saves.seal(key, "FUZZ-1", "slot1.sav", bytes(range(256)) * 300, modified=1, meta=b"level 3")


def disc_raw(data: bytes) -> None:
    disc, _ = disc_fmt.decode(_reader(data), size=len(data), path="fuzz")
    for f in disc.manifest.files[:4]:  # and what an install would read: chunks under some key
        cipher = crypto.ChunkCipher(KEY, f.stream_id, f.size)
        start = disc.data_offset + f.offset
        for i in range(min(cipher.layout.count, 2)):
            sealed = data[start + cipher.layout.sealed_offset(i) :][: cipher.layout.sealed_length(i)]
            try:
                cipher.open(i, sealed)
            except crypto.Invalid:
                pass


def disc_manifest(data: bytes) -> bytes:
    """The manifest's structure checks, past its signature."""

    def decode(d: bytes) -> disc_fmt.Manifest:
        rec = parse(disc_fmt.ManifestBody, d, path="fuzz", what="disc manifest")
        return disc_fmt.manifest_from_record(rec, path="fuzz")

    return stable(decode, disc_fmt.manifest_bytes, data)


#: the manifest and title digest a MID area is checked against: the seed disc's, once seeds() made it
MID_AREA_OF = {"manifest": disc_fmt.Manifest("T1", "n", "game", "", bytes(32), ()), "digest": bytes(32)}


def disc_mid_area(data: bytes) -> None:
    disc_fmt.decode_mid_area(data, path="fuzz", manifest=MID_AREA_OF["manifest"], title_digest=MID_AREA_OF["digest"])


def hdd_raw(data: bytes) -> None:
    opened = read_volume(_reader(data), "fuzz", len(data))
    _use_volume(opened.state, data)


def hdd_catalog(data: bytes) -> bytes:
    """A catalog past its checksum: parsed, checked, and its titles read the way the mount would."""

    def sb(d: bytes) -> hdd_fmt.Superblock:
        return hdd_fmt.Superblock(
            HDD,
            KEY,
            2**30,
            0,
            _generation(d),
            hdd_fmt.DATA_START,
            len(d) or 1,
            hashlib.sha256(d).digest(),
            catalog_ditto=hdd_fmt.DATA_START,
        )

    again = stable(lambda d: hdd_fmt.decode_catalog(d, sb(d), path="fuzz"), hdd_fmt.encode_catalog, data)
    catalog = hdd_fmt.decode_catalog(data, sb(data), path="fuzz")
    _use_volume(Volume(sb(data), catalog), b"")
    return again


def _use_volume(vol: Volume, data: bytes) -> None:
    if vol.problems():
        return  # fsck refuses it: nothing below runs on a volume with problems
    vol.free()
    for t in vol.catalog.titles[:4]:
        key = TitleBinding(KEY).title_key(t.title_id, t.key_salt)
        for f in t.files[:4]:
            cipher = crypto.ChunkCipher(key, f.stream_id, f.size)
            for i in range(min(cipher.layout.count, 2)):
                at = f.locate(cipher.layout.sealed_offset(i))
                try:
                    cipher.open(i, data[at : at + cipher.layout.sealed_length(i)])
                except crypto.Invalid:
                    pass
    if vol.sb.memory and data:
        region = data[vol.sb.memory.offset : vol.sb.memory.end]
        try:
            _use_card_image(read_card_state(_reader(region), "fuzz", len(region)).state)
        except VhwError:
            pass


def device_sealed(data: bytes) -> None:
    """A key the server sealed to a console and an HDD (the card's Content-Key and Content-Gen-Key
    fields), as a console opens it: anything but the real thing is one clean Invalid."""
    for purpose in (bindings.CONTENT_KEY, bindings.CONTENT_GEN_KEY):
        try:
            bindings.open_on_devices(DEVICES, purpose, data, b"ad")
        except crypto.Invalid:
            pass
    try:
        bindings.open_content_gen_key(DEVICES, KEY, Id(IdKind.CARD, 3), Id(IdKind.USER, 4), data)
    except crypto.Invalid:
        pass


# -- API messages ------------------------------------------------------------------------------


@cache
def _world():
    from .world import World

    return World.make(Path(tempfile.mkdtemp(prefix="vhw-fuzz-")))


def _api(cls, call):
    def target(data: bytes) -> None:
        try:
            body = json.loads(data, parse_constant=_reject)
        except (ValueError, RecursionError, UnicodeDecodeError):
            return  # the server answers 400: the body is not JSON
        msg = p.decode(cls, body)
        assert p.decode(cls, p.encode(msg)) == msg
        call(_world().lic, msg)

    target.__name__ = f"api_{cls.__name__}"
    target.message = cls  # type: ignore[attr-defined]
    return target


def _reject(name):
    raise ValueError(name)


API = {
    "api_register": _api(p.RegisterRequest, lambda lic, m: lic.register("fuzz", m)),
    "api_acquire": _api(p.AcquireRequest, lambda lic, m: lic.acquire("fuzz", m)),
    "api_confirm": _api(p.ConfirmRequest, lambda lic, m: lic.confirm("fuzz", m)),
    "api_purchase": _api(p.PurchaseRequest, lambda lic, m: lic.purchase("fuzz", m)),
    "api_register_card": _api(p.RegisterCard, lambda lic, m: lic.register_card("fuzz", m)),
    "api_register_console": _api(
        p.RegisterConsole, lambda lic, m: lic.register_device("fuzz", "consoles", m.client_id, m.public_key)
    ),
    "api_register_hdd": _api(p.RegisterHdd, lambda lic, m: lic.register_device("fuzz", "hdds", m.hdd_id, m.public_key)),
    "api_register_title": _api(p.RegisterTitle, lambda lic, m: lic.register_title("fuzz", m)),
    "api_register_media": _api(p.RegisterMedia, lambda lic, m: lic.register_media("fuzz", m)),
    "api_repair": _api(p.RepairRequest, lambda lic, m: lic.repair("fuzz", m)),
    "api_reissue": _api(p.ReissueRequest, lambda lic, m: lic.reissue("fuzz", m)),
    "api_audit": _api(p.AuditQuery, lambda lic, m: lic.audit(m)),
}

API_MESSAGES = {name: target.message for name, target in API.items()}

# the formats whose encoding is canonical: a seed re-encodes to its own bytes
REENCODED = ("rom_raw", "card_catalog", "save_export", "disc_manifest", "hdd_catalog")

IMAGES = {
    f.__name__: f
    for f in (
        rom_raw,
        rom_body,
        card_raw,
        card_catalog,
        save_area,
        save_export,
        disc_raw,
        disc_manifest,
        disc_mid_area,
        hdd_raw,
        hdd_catalog,
        device_sealed,
    )
}
TARGETS = {**IMAGES, **API}


def run(target, data: bytes) -> str:
    """ "accepted" (decoded, and re-encoded to the same bytes where the format allows) or
    "refused" (one clear error). Anything else escapes: a bug, which fails the caller."""
    try:
        target(data)
    except ALLOWED:
        return "refused"
    return "accepted"


def seeds(folder: Path) -> dict[str, list[bytes]]:
    """Valid inputs for every target, to start the fuzzers from deep inside the formats."""
    from vhw.publisher.keystore import KeyStore
    from vhw.publisher.mastering import master, press

    from .world import World, new_disc, pressed

    folder.mkdir(parents=True, exist_ok=True)
    src = folder / "src"
    if not src.exists():
        src.mkdir()
        (src / "a.bin").write_bytes(bytes(range(256)) * 300)
        (src / "b.txt").write_text("hello\n")
    ks = KeyStore(folder / "ks")
    m = folder / "m.master"
    if not m.exists():
        master(src, m, title_id="FUZZ-1", name="fuzz", keystore=ks)
        press(m, folder / "discs", count=1, keystore=ks)
    disc = next((folder / "discs").iterdir()).read_bytes()
    d, region = disc_fmt.decode(_reader(disc), size=len(disc), path="seed")
    MID_AREA_OF.update(manifest=d.manifest, digest=d.title_digest)
    rom = rom_fmt.encode(
        rom_fmt.Rom(CLIENT, 5, DEVICES.console, server_url="https://127.0.0.1:8443", trust_anchor=b"\x30" * 40)
    )
    card = _seed_card(folder)
    catalog = card_fmt.encode_catalog(read_card_state(_reader(card), "seed", len(card)).state.catalog)
    w = World.make(Path(tempfile.mkdtemp(prefix="vhw-seed-")))
    kit = w.user()
    medium = new_disc(bytes(32))
    acquire = decisions.acquisition_request(kit.view, w.hw(kit), medium)
    sealed = bindings.issue_content_gen_key(DEVICES.public(), KEY, Id(IdKind.CARD, 3), Id(IdKind.USER, 4), KEY)
    bodies = {
        "api_register": p.encode(decisions.registration_request(kit.card, kit.client_id, kit.hdd_id)),
        "api_acquire": p.encode(acquire),
        "api_confirm": p.encode(acquire),
        "api_purchase": {**p.encode(acquire), "title_id": "FUZZ-1"},
        "api_register_card": p.encode(p.RegisterCard(Id(IdKind.CARD, 9), KEY)),
        "api_register_console": p.encode(p.RegisterConsole(Id(IdKind.CLIENT, 9), DEVICES.public().console)),
        "api_register_hdd": p.encode(p.RegisterHdd(Id(IdKind.HDD, 9), DEVICES.public().hdd)),
        "api_register_title": p.encode(p.RegisterTitle("FUZZ-1", "fuzz", KEY, bytes(32))),
        "api_register_media": p.encode(p.RegisterMedia("FUZZ-1", (pressed(medium),))),
        "api_repair": p.encode(p.RepairRequest(kit.card.mc_id, Id(IdKind.CLIENT, 4), None)),
        "api_reissue": p.encode(p.ReissueRequest(kit.user, Id(IdKind.CARD, 5), KEY)),
        "api_audit": p.encode(p.AuditQuery(0, 10)),
    }
    body = region[: -crypto.SIGNATURE_SIZE]
    return {
        "rom_raw": [rom],
        "rom_body": [rom[14:-32]],
        "card_raw": [card],
        "card_catalog": [catalog],
        "save_area": [_seed_save().data],
        "save_export": [
            saves.encode_export(saves.Exported(Id(IdKind.USER, 4), "FUZZ-1", "slot1.sav", 1, b"l3", b"progress"))
        ],
        "disc_raw": [disc],
        "disc_manifest": [body],
        "disc_mid_area": [disc[4096:8192]],
        "hdd_raw": [_small_hdd(folder)],
        "hdd_catalog": [hdd_fmt.encode_catalog(hdd_fmt.Catalog(7))],
        "device_sealed": [sealed],
        **{k: [json.dumps(v).encode()] for k, v in bodies.items()},
    }


def _seed_card(folder: Path) -> bytes:
    """A registered-looking card image with one save, 16 blocks of save area."""
    from vhw.devices.card import CardImage

    path = folder / "seed.card"
    if not path.exists():
        user = bindings.wrap_id(KEY, Id(IdKind.USER, 4), bindings.user_id(Id(IdKind.CARD, 3)))
        CardImage.create(
            path,
            card_fmt.Card(
                Id(IdKind.CARD, 3),
                KEY,
                1,
                user_id=user,
                content_gen_key=b"g" * 160,
                sealed_ids=b"s" * 50,
                licenses=(card_fmt.License("FUZZ-1", b"m" * 40, b"k" * 160, 2),),
            ),
            capacity=16 * 4096,
        )
        with CardImage.open(path, write=True) as img:
            img.write_save("FUZZ-1", "slot1.sav", b"progress " * 100, modified=2, meta=b"level 3")
    return path.read_bytes()


def _small_hdd(folder: Path) -> bytes:
    from vhw.devices.hdd import HddImage

    path = folder / "seed.hdd"
    if not path.exists():
        HddImage.format(path, hdd_id=HDD, secret=DEVICES.hdd, size=hdd_fmt.MIN_SIZE, formatted=1)
    return path.read_bytes()
