"""Known-answer vectors: committed device files and derivations, checked byte for byte.

Round-trip tests stay green when a format field or a derivation changes on both sides at once,
while every device file in the field stops opening. These do not: each committed file of the
current version must decode to what ``devices.json`` says (and its metadata re-encode to the same
bytes); each derivation must give the committed bytes (``kats.json``). A change must bump the
format version and add vectors (``tools/make_vectors.py``); vectors of older versions stay, and
must be refused in one line that says to make the device again.

Our vectors pin our formats; they were made by vhw itself, so a bug present when they were made
would be pinned too. So every primitive vhw calls is also checked against the vectors its standard
publishes (below: RFC 5869, RFC 7914, RFC 8032, RFC 9180, NIST's GCM, RFC 3720's CRC-32C), from the
``cryptography-vectors`` package, the compiled data path's AES-GCM included.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import cryptography_vectors
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vhw import bindings, crypto, datapath, saves
from vhw.bindings import DeviceSecrets, TitleBinding
from vhw.console.install import read_title
from vhw.devices.card import CardImage
from vhw.devices.disc import DiscImage
from vhw.devices.hdd import HddImage
from vhw.errors import ImageError
from vhw.formats import card as card_fmt
from vhw.formats import disc as disc_fmt
from vhw.formats import ditto as ditto_fmt
from vhw.formats import hdd as hdd_fmt
from vhw.formats import rom as rom_fmt
from vhw.formats.card import Save
from vhw.ids import Id, IdKind
from vhw.stores import hdd as volume

VECTORS = Path(__file__).parent / "vectors"
DEVICES = json.loads((VECTORS / "devices.json").read_text())
KATS = json.loads((VECTORS / "kats.json").read_text())
CURRENT = {"rom": rom_fmt.VERSION, "card": card_fmt.VERSION, "hdd": hdd_fmt.VERSION, "disc": disc_fmt.VERSION}

MC = Id(IdKind.CARD, 1234567)
USER = Id(IdKind.USER, 7654321)
CLIENT = Id(IdKind.CLIENT, 42)
HDD = Id(IdKind.HDD, 43)
MEDIA = Id(IdKind.MEDIA, 44)


def b(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


SECRETS = DeviceSecrets(CLIENT, HDD, b(32, 1), b(32, 2))
MC_KEY, CGK, KEY = b(32, 3), b(32, 4), b(32, 5)


def copy(tmp_path: Path, name: str) -> Path:
    """A working copy: opening a vector must not change (or lock) the committed file."""
    out = tmp_path / name
    shutil.copyfile(VECTORS / name, out)
    return out


@pytest.mark.parametrize("kind", sorted(CURRENT))
def test_every_kind_has_a_vector_of_the_current_version(kind):
    assert str(CURRENT[kind]) in DEVICES[kind], (
        f"{kind} format version {CURRENT[kind]} has no vector: run tools/make_vectors.py and commit it"
    )


def test_rom_vector():
    v = DEVICES["rom"][str(rom_fmt.VERSION)]
    data = (VECTORS / v["file"]).read_bytes()
    rom = rom_fmt.decode(data)
    assert (str(rom.client_id), rom.manufactured, rom.secret.hex(), rom.model, rom.server_url) == (
        v["client_id"],
        v["manufactured"],
        v["secret"],
        v["model"],
        v["server_url"],
    )
    assert hashlib.sha256(rom.trust_anchor).hexdigest() == v["trust_anchor_sha256"]
    assert rom_fmt.encode(rom) == data


def test_card_vector(tmp_path):
    v = DEVICES["card"][str(card_fmt.VERSION)]
    path = copy(tmp_path, v["file"])
    data = path.read_bytes()
    with CardImage.open(path) as img:
        assert img.check() == [] and not img.notes
        card, state = img.card, img.state
        got = {f"{s.title_id}/{s.name}": hashlib.sha256(img.read_save(s)).hexdigest() for s in img.saves}
    assert (str(card.mc_id), card.mc_key.hex(), state.sb.capacity) == (v["mc_id"], v["mc_key"], v["capacity"])
    assert str(bindings.unwrap_id(card.mc_key, card.user_id, IdKind.USER, bindings.user_id(card.mc_id))) == v["user_id"]
    assert got == v["saves"]
    sb = state.sb
    for at in (sb.slot, sb.slot + ditto_fmt.DITTO):
        assert data[at : at + 4096] == card_fmt.encode_superblock(sb)
    catalog = card_fmt.encode_catalog(state.catalog)
    for at in (sb.catalog_offset, sb.catalog_offset + card_fmt.CATALOG_DITTO):
        assert data[at : at + len(catalog)] == catalog


def test_disc_vector(tmp_path):
    v = DEVICES["disc"][str(disc_fmt.VERSION)]
    path = copy(tmp_path, v["file"])
    with DiscImage.open(path) as d:
        d.verify()
        assert (d.manifest.title_id, str(d.disc.mid), d.disc.disc_key.hex(), d.disc.title_digest.hex()) == (
            v["title_id"],
            v["mid"],
            v["disc_key"],
            v["title_digest"],
        )
        got = {
            f.path: hashlib.sha256(b"".join(p for _, p in d.decrypt(f, h(v["content_key"])))).hexdigest()
            for f in d.manifest.files
        }
        region = d.manifest_region
    assert got == v["files"]
    assert disc_fmt.manifest_bytes(disc_fmt.decode_manifest(region, path="x")) == region[:-64]


def test_hdd_vector(tmp_path):
    v = DEVICES["hdd"][str(hdd_fmt.VERSION)]
    path = copy(tmp_path, v["file"])
    data = path.read_bytes()
    devices = DeviceSecrets(Id.parse(v["client_id"]), Id.parse(v["hdd_id"]), h(v["console_secret"]), h(v["secret"]))
    binding = TitleBinding.derive(h(v["content_gen_key"]), Id.parse(v["user_id"]), devices)
    with HddImage.open(path) as img:
        assert img.check(deep=True) == [] and not img.notes
        assert (str(img.hdd_id), img.secret.hex()) == (v["hdd_id"], v["secret"])
        title = img.volume.catalog.title("VEC-1")
        files = read_title(img, title, binding)
        vol = img.volume
    assert {k: hashlib.sha256(x).hexdigest() for k, x in files.items()} == v["files"]
    key = binding.title_key(title.title_id, title.key_salt)
    assert title.entry_tag == bindings.title_tag(
        key, title.title_id, title.entry, title.kind, title.title_digest, title.metadata
    )
    block = hdd_fmt.encode_superblock(vol.sb)
    assert data[vol.sb.slot : vol.sb.slot + 4096] == block
    assert data[vol.sb.slot + ditto_fmt.DITTO : vol.sb.slot + ditto_fmt.DITTO + 4096] == block
    catalog = hdd_fmt.encode_catalog(vol.catalog)
    for e in vol.sb.catalog_copies:
        assert data[e.offset : e.end] == catalog


@pytest.mark.parametrize(
    "kind,version", [(k, ver) for k, vs in DEVICES.items() for ver in vs if int(ver) != CURRENT[k]]
)
def test_vectors_of_older_versions_are_refused_in_one_line(tmp_path, kind, version):
    v = DEVICES[kind][version]
    path = copy(tmp_path, v["file"])
    opener = {
        "rom": lambda p: rom_fmt.decode(p.read_bytes(), path=p),
        "card": CardImage.open,
        "hdd": HddImage.open,
        "disc": DiscImage.open,
    }[kind]
    with pytest.raises(ImageError, match="no longer supported") as err:
        opener(path)
    assert "\n" not in str(err.value)


# -- derivations -------------------------------------------------------------------------------------


def test_context_kat():
    for case in KATS["context"]:
        assert crypto.context(case["purpose"], *case["parts"]).hex() == case["hex"]
    assert crypto.context("mid", MC, USER).hex() == KATS["context"][1]["hex"]


def test_piece_checksum_kat():
    """The standard check value of CRC-32C (over "123456789"), big-endian: the keyless fsck of HDD
    formats 4 and 5 (in 5, over a piece's ciphertext and then its tags)."""
    assert volume.piece_checksum(b"123456789") == bytes.fromhex("e3069283")
    assert volume.piece_checksum(b"1234", b"56789") == bytes.fromhex("e3069283")
    assert volume.piece_checksum(memoryview(bytearray(b"x123456789"))[1:]) == bytes.fromhex("e3069283")
    assert volume.piece_digest([bytes.fromhex("e3069283")]) == hashlib.sha256(bytes.fromhex("e3069283")).digest()


def test_hkdf_kat():
    k = KATS["hkdf"]
    assert crypto.derive(h(k["key"]), k["info"].encode(), salt=h(k["salt"])).hex() == k["out"]


def test_chunk_cipher_kat():
    k = KATS["chunk"]
    plain = b(k["size"], k["plain_seed"])
    assert hashlib.sha256(plain).hexdigest() == k["plain_sha256"]
    cipher = crypto.ChunkCipher(h(k["key"]), h(k["stream_id"]), k["size"])
    sealed = [cipher.seal(i, plain[i * 65536 : (i + 1) * 65536]) for i in range(cipher.layout.count)]
    assert [hashlib.sha256(x).hexdigest() for x in sealed] == k["sealed_sha256"]
    assert b"".join(cipher.open(i, x) for i, x in enumerate(sealed)) == plain


def test_hdd_block_cipher_kat():
    """The HDD's blocks (format 5): the Python scheme, and the compiled install core fed the same
    plaintext from a disc's chunks, each give the committed ciphertext and tags."""
    k = KATS["hdd_block"]
    plain = b(k["size"], k["plain_seed"])
    block = k["block_size"]
    cipher = crypto.BlockCipher(h(k["key"]), h(k["stream_id"]), k["size"], block_size=block)
    sealed = [cipher.seal_block(i, plain[i * block : (i + 1) * block]) for i in range(cipher.layout.count)]
    assert hashlib.sha256(b"".join(c for c, _ in sealed)).hexdigest() == k["ciphertext_sha256"]
    assert [t.hex() for _, t in sealed] == k["tags"]
    assert b"".join(cipher.open_block(i, c, t) for i, (c, t) in enumerate(sealed)) == plain
    disc = crypto.ChunkCipher(b"d" * 32, b"s" * 16, len(plain))
    chunks = b"".join(disc.seal(i, plain[i * 65536 : (i + 1) * 65536]) for i in range(disc.layout.count))
    data, tags = bytearray(len(plain)), bytearray(16 * cipher.layout.count)
    n = datapath.reseal(
        disc.secret, cipher.secret, size=len(plain), block_size=block, first=0, count=disc.layout.count,
        sealed=chunks, data=data, tags=tags,
    )  # fmt: skip
    assert n == len(plain)
    assert hashlib.sha256(data).hexdigest() == k["ciphertext_sha256"]
    assert [tags[i : i + 16].hex() for i in range(0, len(tags), 16)] == k["tags"]


def test_wrap_kat():
    k = KATS["wrap"]
    assert crypto.unwrap(h(k["kek"]), h(k["blob"]), h(k["ad"])).hex() == k["plain"]
    with pytest.raises(crypto.Invalid):
        crypto.unwrap(h(k["kek"]), h(k["blob"]), h(k["ad"]) + b"x")


def test_associated_data_kat():
    k = KATS["ad"]
    assert bindings.user_id(MC).hex() == k["user_id"]
    assert bindings.mid(MC, USER).hex() == k["mid"]
    assert bindings.content_key(MC, MEDIA, "VEC-1").hex() == k["content_key"]
    assert bindings.content_gen_key(MC, USER).hex() == k["content_gen_key"]
    assert bindings.sealed_ids(USER).hex() == k["sealed_ids"]
    assert bindings.at_rest("cards", MC).hex() == k["at_rest"]


def test_key_derivation_kat():
    k = KATS["derive"]
    binding = TitleBinding.derive(CGK, USER, SECRETS)
    assert bindings.owner_of(CGK).hex() == k["owner_of"]
    assert binding.key.hex() == k["title_binding"]
    assert binding.owner.hex() == k["title_binding_owner"]
    assert binding.title_key("VEC-1", b(32, 9)).hex() == k["title_key"]
    assert bindings.registration_proof(MC_KEY, MC, CLIENT, HDD).hex() == k["registration_proof"]
    assert bindings.title_tag(KEY, "VEC-1", "main.py", "game", b(32, 10), b"{}").hex() == k["title_tag"]
    assert saves.save_key(MC_KEY, MC, USER).hex() == k["save_key"]
    assert crypto.device_public(SECRETS.console).hex() == k["device_public_console"]
    assert crypto.device_public(SECRETS.hdd).hex() == k["device_public_hdd"]


def test_disc_proof_kat():
    k = KATS["disc_proof"]
    assert crypto.public_bytes(crypto.signing_key_from(h(k["secret"]))).hex() == k["public"]
    proof = bindings.disc_proof(h(k["secret"]), MEDIA, USER, MC, CLIENT, HDD, h(k["title_digest"]))
    assert proof.hex() == k["signature"]  # Ed25519 is deterministic
    bindings.check_disc_proof(h(k["public"]), proof, MEDIA, USER, MC, CLIENT, HDD, h(k["title_digest"]))


def test_device_sealed_kat():
    k = KATS["device_sealed"]
    assert bindings.open_content_key(SECRETS, MC_KEY, MC, MEDIA, "VEC-1", h(k["content_key"])) == KEY
    assert bindings.open_content_gen_key(SECRETS, MC_KEY, MC, USER, h(k["content_gen_key"])) == CGK
    assert bindings.open_device_ids(CGK, USER, h(k["sealed_ids"])) == (CLIENT, HDD)


def test_save_sealing_kat():
    k = KATS["save"]
    e = k["entry"]
    entry = Save(
        e["title_id"],
        e["name"],
        e["size"],
        e["modified"],
        h(e["meta"]),
        h(e["stream_id"]),
        h(e["sealed_sha256"]),
        h(e["tag"]),
    )
    plain = saves.open_save(saves.save_key(MC_KEY, MC, USER), entry, h(k["sealed"]))
    assert hashlib.sha256(plain).hexdigest() == k["plain_sha256"]


def test_card_token_kat():
    k = KATS["card_token"]
    assert bindings.open_card_token(h(k["certificate"]), h(k["token"]), h(k["owner"]), MC) == k["epoch"]


# -- published vectors: our use of each primitive against what its standard publishes -------------
#
# From the `cryptography-vectors` package (pyca/cryptography's own test data, on PyPI), each file
# named where it is read; CRC-32C's check values from RFC 3720 itself.

PUBLISHED = Path(cryptography_vectors.__file__).parent


def nist_blocks(path: Path) -> list[dict[str, str]]:
    """The ``KEY = VALUE`` blocks of a NIST-style vector file, each from its ``COUNT`` line to the
    next (sections' ``[KEY = VALUE]`` lines carried into each block), lower-cased keys."""
    blocks: list[dict[str, str]] = []
    section: dict[str, str] = {}
    current: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # (a block runs from its COUNT to the next)
        if line.startswith("[") and line.endswith("]"):
            if current:  # (the block before it belongs to the section before)
                blocks.append({**section, **current})
                current = {}
            if "=" in line:
                key, _, value = line[1:-1].partition("=")
                section[key.strip().lower()] = value.strip()
            continue
        key, _, value = line.partition("=")
        key = key.strip().lower()
        if key == "count" and current:
            blocks.append({**section, **current})
            current = {}
        current[key] = value.strip()
    if current:
        blocks.append({**section, **current})
    return blocks


def test_hkdf_rfc_5869():
    """KDF/rfc-5869-HKDF-SHA256.txt: vhw.crypto.derive is HKDF-SHA256 as RFC 5869 defines it."""
    cases = nist_blocks(PUBLISHED / "KDF" / "rfc-5869-HKDF-SHA256.txt")
    assert len(cases) == 3
    for c in cases:
        salt = h(c["salt"]) or None  # (test case 3: no salt)
        assert crypto.derive(h(c["ikm"]), h(c["info"]), salt=salt, length=int(c["l"])) == h(c["okm"]), c["count"]


def test_aes_256_gcm_nist_vectors_in_python_and_in_the_compiled_core():
    """ciphers/AES/GCM/gcmEncryptExtIV256.rsp and gcmDecrypt256.rsp (NIST CAVP), the 96-bit nonces
    and 128-bit tags vhw uses: the AES-GCM of vhw.crypto (pyca/cryptography) and of the compiled
    core's EVP calls (vhw.datapath, the mount and the install) each give and take the published
    ciphertexts and tags, and refuse the cases NIST marks FAIL."""
    from vhw.datapath import _core

    sealed = [
        c
        for c in nist_blocks(PUBLISHED / "ciphers" / "AES" / "GCM" / "gcmEncryptExtIV256.rsp")
        if c.get("ivlen") == "96" and c.get("taglen") == "128"
    ]
    assert len(sealed) > 100
    for c in sealed:
        key, iv, pt, aad, expected = h(c["key"]), h(c["iv"]), h(c["pt"]), h(c["aad"]), h(c["ct"]) + h(c["tag"])
        assert AESGCM(key).encrypt(iv, pt, aad) == expected
        assert _core.gcm_seal(key, iv, aad, pt) == expected
        assert _core.gcm_open(key, iv, aad, expected) == pt
    opened = [
        c
        for c in nist_blocks(PUBLISHED / "ciphers" / "AES" / "GCM" / "gcmDecrypt256.rsp")
        if c.get("ivlen") == "96" and c.get("taglen") == "128"
    ]
    assert len(opened) > 100 and any("fail" in c for c in opened)
    for c in opened:
        key, iv, aad, data = h(c["key"]), h(c["iv"]), h(c["aad"]), h(c["ct"]) + h(c["tag"])
        if "fail" in c:
            with pytest.raises(ValueError):
                _core.gcm_open(key, iv, aad, data)
        else:
            assert _core.gcm_open(key, iv, aad, data) == h(c["pt"])


def test_ed25519_rfc_8032():
    """asymmetric/Ed25519/sign.input (the reference implementation's vectors; its first cases are RFC
    8032's): vhw.crypto's Ed25519 signs each message as published, and verifies it."""
    lines = (PUBLISHED / "asymmetric" / "Ed25519" / "sign.input").read_text().splitlines()
    assert len(lines) > 1000
    for line in lines[::8]:  # (every 8th of 1,024: a second of work)
        secret_public, public, message, signed, _ = line.split(":")
        seed, message, signature = h(secret_public)[:32], h(message), h(signed)[:64]
        key = crypto.signing_key_from(seed)
        assert crypto.public_bytes(key) == h(public)
        assert key.sign(message) == signature
        crypto.verify(h(public), signature, message)
        with pytest.raises(crypto.Invalid):
            crypto.verify(h(public), signature, message + b"x")


def test_scrypt_rfc_7914():
    """KDF/scrypt.txt (RFC 7914, section 12): vhw.crypto.password_hash is scrypt with r = 8, p = 1
    and 32 bytes out (the first 32 of a longer output: PBKDF2's first block); the case of those
    parameters that runs in a test (N = 16384: 16 MiB) gives the published bytes. (The others have
    r or p that vhw never uses, or N = 2^20: 1 GiB.)"""
    [case] = [
        c
        for c in nist_blocks(PUBLISHED / "KDF" / "scrypt.txt")
        if c["r"] == "8" and c["p"] == "1" and int(c["n"]) <= 16384
    ]
    log_n = int(case["n"]).bit_length() - 1
    derived = crypto.password_hash(case["password"], case["salt"].encode(), log_n=log_n)
    assert derived == h(case["derived_key"])[:32]


def test_hpke_rfc_9180_both_directions():
    """HPKE/test-vectors.json (RFC 9180, appendix A): the base-mode vector of the suite vhw seals
    to devices with (DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM). Into vhw: what the
    RFC's sender makes with its encapsulated key and key schedule (the vector's key and base nonce;
    vhw seals with an empty associated data, which the RFC's encryptions do not use, so the first
    message is made again without it) opens with vhw.crypto.open_sealed and the recipient's private
    key. Out of vhw: what vhw.crypto.seal_to makes for the RFC's recipient public key opens with its
    private key, and not with another's."""
    import json as json_

    vectors = json_.loads((PUBLISHED / "HPKE" / "test-vectors.json").read_text())
    [v] = [x for x in vectors if x["mode"] == 0 and x["kem_id"] == 0x20 and x["kdf_id"] == 1 and x["aead_id"] == 2]
    info, sk, pk, enc = h(v["info"]), h(v["skRm"]), h(v["pkRm"]), h(v["enc"])
    assert crypto.device_public(sk) == pk
    pt = h(v["encryptions"][0]["pt"])
    ct = AESGCM(h(v["key"])).encrypt(h(v["base_nonce"]), pt, b"")  # (sequence 0: the base nonce)
    assert crypto.open_sealed(sk, enc + ct, info) == pt
    with pytest.raises(crypto.Invalid):
        crypto.open_sealed(sk, enc + ct, info + b"x")
    sealed = crypto.seal_to(pk, pt, info)
    assert crypto.open_sealed(sk, sealed, info) == pt
    with pytest.raises(crypto.Invalid):
        crypto.open_sealed(crypto.device_secret(), sealed, info)


@pytest.mark.parametrize(
    "data, check",
    [
        (b"123456789", "e3069283"),  # the CRC catalogue's check value of CRC-32C (iSCSI)
        (bytes(32), "8a9136aa"),  # RFC 3720, appendix B.4: 32 bytes of zeros
        (b"\xff" * 32, "62a8ab43"),  # ... of ones
        (bytes(range(32)), "46dd794e"),  # ... incrementing
        (bytes(range(31, -1, -1)), "113fdb5c"),  # ... decrementing
    ],
)
def test_crc32c_rfc_3720(data, check):
    """The HDD's piece checksum is CRC-32C: RFC 3720's published values (big-endian here)."""
    assert volume.piece_checksum(data) == bytes.fromhex(check)
    assert volume.piece_checksum(data[:7], data[7:]) == bytes.fromhex(check)  # (a piece and its tags)


# -- our own vectors of what the standards do not cover ----------------------------------------------


def test_password_hash_kat():
    """vhw's scrypt parameters (r = 8, p = 1, 32 bytes) for broker accounts and staff: pinned bytes."""
    k = KATS["password_hash"]
    assert crypto.password_hash(k["password"], h(k["salt"]), log_n=k["log_n"]).hex() == k["out"]


def test_fingerprint_kat():
    """What `info` shows of a device's key: pinned."""
    k = KATS["fingerprint"]
    assert crypto.fingerprint(h(k["public"])) == k["out"] and len(k["out"].split(":")) == 8


def test_certificates_have_the_fields_consoles_and_servers_rely_on():
    """The platform's certificates, field by field (their bytes hold fresh keys): the CA may sign
    certificates and nothing else, for ten years; a TLS server's certificate names its hosts and
    serves TLS only; a client's is a client's; the signing certificate signs statements only. All
    name the platform and are issued by the CA's key."""
    import datetime

    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from vhw import pki

    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    ca_der, ca_key = pki.make_ca("vectors CA", now=now)
    ca = x509.load_der_x509_certificate(ca_der)
    assert ca.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "vhw platform"
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "vectors CA"
    assert ca.issuer == ca.subject
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc) == datetime.timedelta(days=3650, minutes=5)
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign and not usage.value.digital_signature

    def leaf(der: bytes) -> x509.Certificate:
        cert = x509.load_der_x509_certificate(der)
        assert cert.issuer == ca.subject and not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        cert.verify_directly_issued_by(ca)
        return cert

    server = leaf(pki.issue(ca_der, ca_key, "licensing server", hosts=["127.0.0.1", "vhw.example"], now=now)[0])
    assert server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH]
    )
    assert server.not_valid_after_utc - server.not_valid_before_utc == datetime.timedelta(days=397, minutes=5)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(x) for x in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["vhw.example"]
    client = leaf(pki.issue(ca_der, ca_key, "vhw operator", client=True, now=now)[0])
    assert client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    signer = leaf(pki.issue_signer(ca_der, ca_key, "signing key", now=now)[0])
    usage = signer.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    with pytest.raises(x509.ExtensionNotFound):
        signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
