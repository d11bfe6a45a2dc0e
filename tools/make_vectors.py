"""Write the known-answer vectors of the current format versions into tests/vectors/.

    .venv/bin/python tools/make_vectors.py

Run it once when a format version or a derivation changes (and bump that version): it writes, for
the current versions, one small device file of every kind (ROM, memory card, HDD image, disc) with
what each must decode to (``devices.json``), and ``kats.json``: inputs and expected outputs of
``crypto.context``, HKDF, the chunk cipher, the HDD's block cipher, every binding's associated data and key derivation,
save sealing, the disc proof and the card token. ``tests/test_vectors.py`` checks the committed
files against the code; vectors of older versions stay, and must be refused in one line.

Random parts (nonces, salts, stream IDs) are made once and kept in the files: the tests decode
them, they do not re-make them.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from vhw import bindings, crypto, pki, saves  # noqa: E402
from vhw.bindings import DeviceSecrets, TitleBinding  # noqa: E402
from vhw.console.install import install_plan, read_title  # noqa: E402
from vhw.devices.card import CardImage  # noqa: E402
from vhw.devices.disc import DiscImage  # noqa: E402
from vhw.devices.hdd import HddImage  # noqa: E402
from vhw.devices.rom import burn  # noqa: E402
from vhw.formats import card as card_fmt  # noqa: E402
from vhw.formats import disc as disc_fmt  # noqa: E402
from vhw.formats import hdd as hdd_fmt  # noqa: E402
from vhw.formats import rom as rom_fmt  # noqa: E402
from vhw.ids import Id, IdKind  # noqa: E402
from vhw.publisher.keystore import KeyStore  # noqa: E402
from vhw.publisher.mastering import master, press  # noqa: E402

OUT = ROOT / "tests" / "vectors"


def b(n: int, seed: int) -> bytes:
    """Fixed bytes: the same every run (the KAT inputs)."""
    return random.Random(seed).randbytes(n)


MC = Id(IdKind.CARD, 1234567)
USER = Id(IdKind.USER, 7654321)
CLIENT = Id(IdKind.CLIENT, 42)
HDD = Id(IdKind.HDD, 43)
MEDIA = Id(IdKind.MEDIA, 44)
DEVICES = DeviceSecrets(CLIENT, HDD, b(32, 1), b(32, 2))
MC_KEY, CGK, KEY = b(32, 3), b(32, 4), b(32, 5)


def kats() -> dict:
    out: dict = {}
    out["context"] = [
        {"purpose": "p", "parts": ["a", 7, "bc"], "hex": crypto.context("p", "a", 7, "bc").hex()},
        {"purpose": "mid", "parts": [str(MC), str(USER)], "hex": crypto.context("mid", MC, USER).hex()},
    ]
    out["hkdf"] = {
        "key": KEY.hex(),
        "info": "vectors",
        "salt": b(16, 6).hex(),
        "out": crypto.derive(KEY, b"vectors", salt=b(16, 6)).hex(),
    }
    stream, plain = b(16, 7), b(70_000, 8)
    cipher = crypto.ChunkCipher(KEY, stream, len(plain))
    out["chunk"] = {
        "key": KEY.hex(),
        "stream_id": stream.hex(),
        "size": len(plain),
        "plain_sha256": hashlib.sha256(plain).hexdigest(),
        "plain_seed": 8,
        "sealed_sha256": [
            hashlib.sha256(cipher.seal(i, plain[i * 65536 : (i + 1) * 65536])).hexdigest()
            for i in range(cipher.layout.count)
        ],
    }
    block_plain = b(70_000, 16)
    blocks = crypto.BlockCipher(KEY, stream, len(block_plain), block_size=crypto.HDD_BLOCK_SIZE)
    sealed_blocks = [
        blocks.seal_block(i, block_plain[i * blocks.layout.chunk_size :][: blocks.layout.chunk_size])
        for i in range(blocks.layout.count)
    ]
    out["hdd_block"] = {
        "key": KEY.hex(),
        "stream_id": stream.hex(),
        "size": len(block_plain),
        "block_size": crypto.HDD_BLOCK_SIZE,
        "plain_seed": 16,
        "ciphertext_sha256": hashlib.sha256(b"".join(c for c, _ in sealed_blocks)).hexdigest(),
        "tags": [t.hex() for _, t in sealed_blocks],
    }
    out["password_hash"] = {  # (vhw's scrypt: r = 8, p = 1, 32 bytes; log_n as a broker account's)
        "password": "correct horse battery staple",
        "salt": b(16, 17).hex(),
        "log_n": 14,
        "out": crypto.password_hash("correct horse battery staple", b(16, 17), log_n=14).hex(),
    }
    out["fingerprint"] = {"public": crypto.device_public(DEVICES.hdd).hex()}
    out["fingerprint"]["out"] = crypto.fingerprint(crypto.device_public(DEVICES.hdd))
    ad = bindings.user_id(MC)
    out["wrap"] = {
        "kek": MC_KEY.hex(),
        "ad": ad.hex(),
        "blob": bindings.wrap_id(MC_KEY, USER, ad).hex(),
        "plain": USER.to_bytes().hex(),
    }
    out["ad"] = {
        "user_id": bindings.user_id(MC).hex(),
        "mid": bindings.mid(MC, USER).hex(),
        "content_key": bindings.content_key(MC, MEDIA, "VEC-1").hex(),
        "content_gen_key": bindings.content_gen_key(MC, USER).hex(),
        "sealed_ids": bindings.sealed_ids(USER).hex(),
        "at_rest": bindings.at_rest("cards", MC).hex(),
    }
    binding = TitleBinding.derive(CGK, USER, DEVICES)
    out["derive"] = {
        "owner_of": bindings.owner_of(CGK).hex(),
        "title_binding": binding.key.hex(),
        "title_binding_owner": binding.owner.hex(),
        "title_key": binding.title_key("VEC-1", b(32, 9)).hex(),
        "registration_proof": bindings.registration_proof(MC_KEY, MC, CLIENT, HDD).hex(),
        "title_tag": bindings.title_tag(KEY, "VEC-1", "main.py", "game", b(32, 10), b"{}").hex(),
        "save_key": saves.save_key(MC_KEY, MC, USER).hex(),
        "device_public_console": crypto.device_public(DEVICES.console).hex(),
        "device_public_hdd": crypto.device_public(DEVICES.hdd).hex(),
    }
    disc_secret = b(32, 11)
    out["disc_proof"] = {
        "secret": disc_secret.hex(),
        "public": crypto.public_bytes(crypto.signing_key_from(disc_secret)).hex(),
        "title_digest": b(32, 12).hex(),
        "signature": bindings.disc_proof(disc_secret, MEDIA, USER, MC, CLIENT, HDD, b(32, 12)).hex(),
    }
    sealed = bindings.issue_content_key(DEVICES.public(), MC_KEY, MC, MEDIA, "VEC-1", KEY)
    cgk_sealed = bindings.issue_content_gen_key(DEVICES.public(), MC_KEY, MC, USER, CGK)
    out["device_sealed"] = {
        "content_key": sealed.hex(),
        "content_gen_key": cgk_sealed.hex(),
        "sealed_ids": bindings.seal_device_ids(CGK, USER, CLIENT, HDD).hex(),
    }
    save_plain = b(5000, 13)
    s = saves.seal(saves.save_key(MC_KEY, MC, USER), "VEC-1", "slot.sav", save_plain, modified=99, meta=b"lvl 3")
    out["save"] = {
        "entry": {
            "title_id": s.entry.title_id,
            "name": s.entry.name,
            "size": s.entry.size,
            "modified": s.entry.modified,
            "meta": s.entry.meta.hex(),
            "stream_id": s.entry.stream_id.hex(),
            "sealed_sha256": s.entry.sealed_sha256.hex(),
            "tag": s.entry.tag.hex(),
        },
        "sealed": s.data.hex(),
        "plain_sha256": hashlib.sha256(save_plain).hexdigest(),
    }
    ca_der, ca_key = pki.make_ca("vectors CA")
    signer_der, signer_key = pki.issue_signer(ca_der, ca_key, "vectors signing key")
    token = bindings.make_card_token(
        lambda d: signer_key.sign(d, ec.ECDSA(hashes.SHA256())), bindings.owner_of(CGK), MC, 5
    )
    out["card_token"] = {
        "certificate": signer_der.hex(),
        "owner": bindings.owner_of(CGK).hex(),
        "epoch": 5,
        "token": token.hex(),
    }
    return out


def devices(folder: Path) -> dict:
    out: dict = {}
    anchor, _ = pki.make_ca("vectors CA")
    rom = rom_fmt.Rom(
        CLIENT,
        1_700_000_000,
        DEVICES.console,
        model="VHW-1000",
        server_url="https://127.0.0.1:8443",
        trust_anchor=anchor,
        token_anchor=anchor,
    )
    burn(folder / f"rom-v{rom_fmt.VERSION}.rom", rom)
    out["rom"] = {
        "file": f"rom-v{rom_fmt.VERSION}.rom",
        "version": rom_fmt.VERSION,
        "client_id": str(CLIENT),
        "manufactured": rom.manufactured,
        "secret": DEVICES.console.hex(),
        "model": rom.model,
        "server_url": rom.server_url,
        "trust_anchor_sha256": hashlib.sha256(anchor).hexdigest(),
    }

    card = card_fmt.Card(MC, MC_KEY, 1_700_000_001, user_id=bindings.wrap_id(MC_KEY, USER, bindings.user_id(MC)))
    card_path = folder / f"card-v{card_fmt.VERSION}.card"
    CardImage.create(card_path, card, capacity=4096)
    save_plain = b(3000, 14)
    with CardImage.open(card_path, write=True) as img:
        img.write_save("VEC-1", "slot.sav", save_plain, modified=7, meta=b"lvl 1")
    out["card"] = {
        "file": card_path.name,
        "version": card_fmt.VERSION,
        "mc_id": str(MC),
        "mc_key": MC_KEY.hex(),
        "user_id": str(USER),
        "capacity": 4096,
        "saves": {"VEC-1/slot.sav": hashlib.sha256(save_plain).hexdigest()},
    }

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        src = tmp_path / "src"
        src.mkdir()
        (src / "main.py").write_text("print('vector title')\n")
        (src / "data.bin").write_bytes(b(70_000, 15))
        (src / "vhw-title.json").write_text('{"name": "Vector", "kind": "game", "entry": "main.py"}')
        ks = KeyStore(tmp_path / "ks")
        master(src, tmp_path / "m.master", title_id="VEC-1", name="Vector", keystore=ks, clock=lambda: 1_700_000_002)
        [(pressed, mid)] = press(tmp_path / "m.master", tmp_path / "discs", count=1, keystore=ks)
        disc_path = folder / f"disc-v{disc_fmt.VERSION}.disc"
        shutil.copyfile(pressed, disc_path)
        keys = ks.title("VEC-1")
        files = {
            "main.py": hashlib.sha256((src / "main.py").read_bytes()).hexdigest(),
            "data.bin": hashlib.sha256((src / "data.bin").read_bytes()).hexdigest(),
        }
        with DiscImage.open(disc_path) as d:
            out["disc"] = {
                "file": disc_path.name,
                "version": disc_fmt.VERSION,
                "title_id": "VEC-1",
                "mid": str(mid),
                "disc_key": d.disc.disc_key.hex(),
                "title_digest": d.disc.title_digest.hex(),
                "content_key": keys.content_key.hex(),
                "files": files,
            }
            hdd_path = folder / f"hdd-v{hdd_fmt.VERSION}.hdd"
            HddImage.format(hdd_path, hdd_id=HDD, secret=DEVICES.hdd, size=hdd_fmt.MIN_SIZE, formatted=1_700_000_003)
            binding = TitleBinding.derive(CGK, USER, DEVICES)
            with HddImage.open(hdd_path, write=True) as img:
                img.run(
                    install_plan(
                        img.volume,
                        d,
                        content_key=keys.content_key,
                        owner=bindings.owner_of(CGK),
                        binding=binding,
                        installed=1_700_000_004,
                        mid=mid,
                    )
                )
                got = read_title(img, img.volume.catalog.title("VEC-1"), binding)
        assert {k: hashlib.sha256(v).hexdigest() for k, v in got.items()} == files
        out["hdd"] = {
            "file": hdd_path.name,
            "version": hdd_fmt.VERSION,
            "hdd_id": str(HDD),
            "secret": DEVICES.hdd.hex(),
            "content_gen_key": CGK.hex(),
            "user_id": str(USER),
            "client_id": str(CLIENT),
            "console_secret": DEVICES.console.hex(),
            "files": files,
        }
    return out


def main() -> None:
    """Add the vectors of the versions that have none yet, and the known answers not committed
    yet; committed ones are never rewritten (a device file made again differs: fresh CA keys,
    signatures; so do the sealed known answers), older ones stay to be refused."""
    OUT.mkdir(parents=True, exist_ok=True)
    index = OUT / "devices.json"
    known = json.loads(index.read_text()) if index.exists() else {}
    added = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, entry in devices(Path(tmp)).items():
            if str(entry["version"]) in known.get(kind, {}):
                continue
            shutil.copyfile(Path(tmp) / entry["file"], OUT / entry["file"])
            known.setdefault(kind, {})[str(entry["version"])] = entry
            added.append(entry["file"])
    index.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n")
    kats_file = OUT / "kats.json"
    committed = json.loads(kats_file.read_text()) if kats_file.exists() else {}
    new = {name: kat for name, kat in kats().items() if name not in committed}  # (some hold random parts)
    kats_file.write_text(json.dumps({**committed, **new}, indent=1, sort_keys=True) + "\n")
    print(
        f"added {', '.join(added) or 'no device file'} and {', '.join(new) or 'no known answer'};"
        f" wrote devices.json and kats.json in {OUT}"
    )


if __name__ == "__main__":
    main()
