"""All of vhw's cryptography, built only on pyca/cryptography. No I/O.

Three tools, each binding what it protects to what it is for:

* **Key wrapping** (:func:`wrap`, :func:`unwrap`): AES-256-GCM under a key-encryption key with a
  random 96-bit nonce, and associated data that names the purpose and every ID the wrapped value
  belongs to (:func:`context`). A Content-Key wrapped for one card, MID and title does not unwrap
  as another's. (RFC 3394 key wrap has no associated data, hence GCM.)
* **Chunked content encryption** (:class:`ChunkCipher`): a stream of ``size`` bytes is cut into
  ``CHUNK_SIZE`` chunks, each sealed with AES-256-GCM under a key derived for this one stream.
  The nonce is the chunk index; the associated data holds the stream ID, the stream's size and the
  chunk index, so a chunk that is moved, swapped with another stream's, dropped at the end, or
  added is refused, and any byte range can be read by decrypting only the chunks it touches. An
  empty stream still has one (empty) chunk, so even its size is authenticated.
* **Block encryption of installed titles** (:class:`BlockCipher`): an HDD keeps each file of a
  title as blocks of ``HDD_BLOCK_SIZE`` bytes (4 KiB by default: what a random read asks for), each
  sealed as a chunk is, its ciphertext where a plain file would hold its data (page-aligned) and
  its tag apart, after the last block (:class:`BlockLayout`). The compiled data path (:mod:`vhw.datapath`) reads
  and writes them with OpenSSL; this class is the same scheme in Python, for tests, vectors and
  small reads.
* **Derivation** (:func:`derive`): HKDF-SHA256 with an ``info`` that names the purpose, e.g. the
  per-title HDD key from the Content-Gen-Key.
* **Sealing to a device** (:func:`seal_to`, :func:`open_sealed`): HPKE (RFC 9180; DHKEM X25519,
  HKDF-SHA256, AES-256-GCM) to the X25519 public key a console or HDD was made with, with an
  ``info`` that names what the sealed value is for. Only the holder of that device's secret opens
  it; a fresh ephemeral key per seal.

Deterministic nonces are safe here because every stream key is used for exactly one plaintext:
stream IDs are random per mastering or per install (and an installed title's key has a random salt
of its own per install), and rewriting a chunk or block after a crash writes the very same
plaintext again. Every failure is one exception, :class:`Invalid`, that does not say
which check failed (as Fernet's ``InvalidToken``).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from .errors import VhwError

KEY_SIZE = 32  # AES-256 everywhere
NONCE_SIZE = 12  # GCM's native nonce length
TAG_SIZE = 16  # full GCM tag
STREAM_ID_SIZE = 16  # random per stream: collisions need ~2**64 streams

#: 64 KiB. Measured on this kind of machine (the README's Performance section): AES-GCM in
#: `cryptography` runs at ~12 GB/s on 64 KiB chunks but ~2.5 GB/s on 4 KiB ones, and a pyfuse3
#: mount reached 2.0 GB/s sequential (vs 1.2 GB/s) and 11.4k (vs 8.1k) cold random 4 KiB reads/s
#: with 64 KiB chunks. Smaller chunks would only help warm random 4 KiB reads, which the kernel's
#: page cache serves anyway once a title is open (titles never change: keep_cache).
CHUNK_SIZE = 64 * 1024


class Invalid(VhwError):
    """Authenticated data did not verify. Deliberately says no more than that."""

    exit_code = 3

    def __init__(self, message: str = "authenticated data does not verify") -> None:
        super().__init__(message)


def random_key() -> bytes:
    return os.urandom(KEY_SIZE)


def equal(a: bytes, b: bytes) -> bool:
    """Compare secrets (or anything derived from them) in constant time."""
    return hmac.compare_digest(a, b)


def context(purpose: str, *parts: object) -> bytes:
    """Associated data: a purpose and the values it is bound to, unambiguously encoded.

    Each part is length-prefixed, so ("ab", "c") and ("a", "bc") never collide. IDs are encoded
    by their label, bytes as they are, ints as decimal.
    """
    out = bytearray(b"vhw/1\0")
    for part in (purpose, *parts):
        data = part if isinstance(part, bytes) else str(part).encode()  # str, int or Id label
        out += len(data).to_bytes(4, "big") + data
    return bytes(out)


def derive(key: bytes, info: bytes, *, salt: bytes | None = None, length: int = KEY_SIZE) -> bytes:
    """HKDF-SHA256 of ``key`` for the purpose named by ``info``."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(key)


def wrap(kek: bytes, secret: bytes, ad: bytes) -> bytes:
    """Seal ``secret`` under ``kek``, bound to ``ad``: nonce ‖ ciphertext ‖ tag (a fresh random nonce)."""
    nonce = os.urandom(NONCE_SIZE)
    return nonce + AESGCM(kek).encrypt(nonce, secret, ad)


def unwrap(kek: bytes, blob: bytes, ad: bytes) -> bytes:
    """Open what :func:`wrap` sealed with the same ``kek`` and ``ad``, or raise :class:`Invalid`."""
    if len(blob) < NONCE_SIZE + TAG_SIZE:
        raise Invalid()
    try:
        return AESGCM(kek).decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], ad)
    except InvalidTag:
        raise Invalid() from None


def wrapped_size(secret_size: int) -> int:
    return NONCE_SIZE + secret_size + TAG_SIZE


@dataclass(frozen=True)
class ChunkLayout:
    """Where each chunk of a stream of ``size`` bytes lies, in plaintext and in ciphertext."""

    size: int
    chunk_size: int = CHUNK_SIZE

    @property
    def count(self) -> int:
        return max(1, -(-self.size // self.chunk_size))

    @property
    def sealed_size(self) -> int:
        """Bytes of ciphertext the whole stream takes: data plus one tag per chunk."""
        return self.size + self.count * TAG_SIZE

    def plain_length(self, index: int) -> int:
        if index == self.count - 1:
            return self.size - index * self.chunk_size
        return self.chunk_size

    def sealed_offset(self, index: int) -> int:
        return index * (self.chunk_size + TAG_SIZE)

    def sealed_length(self, index: int) -> int:
        return self.plain_length(index) + TAG_SIZE

    def chunks_for(self, offset: int, length: int) -> range:
        """Indices of the chunks that hold plaintext bytes [offset, offset + length)."""
        end = min(self.size, offset + length)
        if offset >= end:
            return range(0)
        return range(offset // self.chunk_size, (end - 1) // self.chunk_size + 1)


@dataclass(frozen=True)
class StreamSecret:
    """What the compiled data path needs to seal or open a stream's chunks or blocks: the stream's
    own key and the prefix of every unit's associated data (the unit's index follows it)."""

    key: bytes = field(repr=False)
    ad_prefix: bytes


class ChunkCipher:
    """Seals and opens the chunks of one stream: a file of a title on a disc, or a save."""

    def __init__(self, key: bytes, stream_id: bytes, size: int, *, chunk_size: int = CHUNK_SIZE):
        if len(stream_id) != STREAM_ID_SIZE:
            raise ValueError("stream ID must be 16 bytes")
        self.layout = ChunkLayout(size, chunk_size)
        self._init(derive(key, context("chunk-stream", stream_id)), context("chunk", stream_id, size))

    def _init(self, stream_key: bytes, ad_prefix: bytes) -> None:
        self.secret = StreamSecret(stream_key, ad_prefix)
        self._aead = AESGCM(stream_key)
        self._ad_prefix = ad_prefix

    def _nonce_ad(self, index: int) -> tuple[bytes, bytes]:
        if not 0 <= index < self.layout.count:
            raise Invalid()
        i = index.to_bytes(8, "big")
        return bytes(4) + i, self._ad_prefix + i

    def seal(self, index: int, plaintext: bytes | memoryview) -> bytes:
        if len(plaintext) != self.layout.plain_length(index):
            raise ValueError(f"chunk {index} must hold {self.layout.plain_length(index)} bytes")
        nonce, ad = self._nonce_ad(index)
        return self._aead.encrypt(nonce, plaintext, ad)

    def seal_into(self, index: int, plaintext: bytes | memoryview, out: bytearray | memoryview) -> int:
        """Like :meth:`seal` but into ``out``; returns the number of bytes written."""
        if len(plaintext) != self.layout.plain_length(index):
            raise ValueError(f"chunk {index} must hold {self.layout.plain_length(index)} bytes")
        nonce, ad = self._nonce_ad(index)
        n = len(plaintext) + TAG_SIZE
        self._aead.encrypt_into(nonce, plaintext, ad, memoryview(out)[:n])
        return n

    def open(self, index: int, sealed: bytes | memoryview) -> bytes:
        if len(sealed) != self.layout.plain_length(index) + TAG_SIZE:
            raise Invalid()
        nonce, ad = self._nonce_ad(index)
        try:
            return self._aead.decrypt(nonce, sealed, ad)
        except InvalidTag:
            raise Invalid() from None

    def open_into(self, index: int, sealed: bytes | memoryview, out: bytearray | memoryview) -> int:
        """Like :meth:`open` but into ``out``; returns the number of plaintext bytes."""
        if len(sealed) != self.layout.plain_length(index) + TAG_SIZE:
            raise Invalid()
        nonce, ad = self._nonce_ad(index)
        n = len(sealed) - TAG_SIZE
        try:
            self._aead.decrypt_into(nonce, sealed, ad, memoryview(out)[:n])
        except InvalidTag:
            raise Invalid() from None
        return n

    def read(self, offset: int, length: int, fetch: Callable[[int], bytes]) -> bytes:
        """Plaintext bytes [offset, offset + length), decrypting only the chunks they touch.

        ``fetch(index)`` returns the sealed bytes of one chunk.
        """
        out = bytearray()
        size = self.layout.chunk_size
        for i in self.layout.chunks_for(offset, length):
            plain = self.open(i, fetch(i))
            lo = max(offset - i * size, 0)
            hi = min(offset + length - i * size, len(plain))
            out += plain[lo:hi]
        return bytes(out)


#: 4 KiB: what the kernel asks for on a random read. A random 4 KiB read of a 64 KiB chunk read and
#: authenticated 16 times what it needed: a probe in C on this kind of machine served random misses
#: at half the rate with 64 KiB blocks (the README's block-size table, from `make bench`). An HDD
#: may be formatted with 16 or 64 KiB blocks (`vhw hdd format --block-size`).
HDD_BLOCK_SIZE = 4096
HDD_BLOCK_SIZES = (4096, 16384, 65536)


@dataclass(frozen=True)
class BlockLayout(ChunkLayout):
    """An installed file's sealed stream on an HDD: its ``count`` blocks' ciphertext, block ``i``
    at ``i * chunk_size`` (page-aligned, as a plain file holds its data: the ciphertext is exactly
    as long as the plaintext), then every block's tag, 16 bytes each. Every byte of the stream is
    ciphertext or tag: none that nothing checks."""

    chunk_size: int = HDD_BLOCK_SIZE

    @property
    def tags_offset(self) -> int:
        return self.size

    @property
    def sealed_size(self) -> int:
        return self.size + self.count * TAG_SIZE

    def sealed_offset(self, index: int) -> int:
        return index * self.chunk_size

    def sealed_length(self, index: int) -> int:
        return self.plain_length(index)

    def tag_offset(self, index: int) -> int:
        return self.tags_offset + index * TAG_SIZE


class BlockCipher(ChunkCipher):
    """Seals and opens the blocks of one installed file (:class:`BlockLayout`): as chunks are, with
    a key and associated data of their own purpose, which name the block size too."""

    def __init__(self, key: bytes, stream_id: bytes, size: int, *, block_size: int = HDD_BLOCK_SIZE):
        if len(stream_id) != STREAM_ID_SIZE:
            raise ValueError("stream ID must be 16 bytes")
        if block_size not in HDD_BLOCK_SIZES:
            raise ValueError(f"an HDD block is one of {HDD_BLOCK_SIZES} bytes")
        self.layout = BlockLayout(size, block_size)
        self._init(
            derive(key, context("hdd-blocks", stream_id, block_size)), context("hdd-block", stream_id, size, block_size)
        )

    def seal_block(self, index: int, plaintext: bytes | memoryview) -> tuple[bytes, bytes]:
        """(ciphertext, tag) of block ``index``."""
        sealed = self.seal(index, plaintext)
        return sealed[:-TAG_SIZE], sealed[-TAG_SIZE:]

    def open_block(self, index: int, ciphertext: bytes | memoryview, tag: bytes | memoryview) -> bytes:
        return self.open(index, bytes(ciphertext) + bytes(tag))


# -- signatures ---------------------------------------------------------------------------------

SIGNATURE_SIZE = 64
PUBLIC_KEY_SIZE = 32


def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


SECRET_SEED_SIZE = 32  # an Ed25519 private key as raw bytes (a pressed disc's own secret)


def signing_key_from(seed: bytes) -> Ed25519PrivateKey:
    """The Ed25519 key whose raw private bytes are ``seed`` (a disc's secret), or :class:`Invalid`."""
    try:
        return Ed25519PrivateKey.from_private_bytes(seed)
    except ValueError:
        raise Invalid() from None


def signing_seed() -> bytes:
    """A fresh Ed25519 private key as its 32 raw bytes."""
    return signing_key().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def password_hash(password: str, salt: bytes, *, log_n: int) -> bytes:
    """scrypt (r=8, p=1) of a password: memory-hard, 2^log_n * 1 KiB of memory per guess."""
    return Scrypt(salt=salt, length=32, n=2**log_n, r=8, p=1).derive(password.encode())


def mac(key: bytes, message: bytes) -> bytes:
    """HMAC-SHA256: proofs and tags under a key the holder of a file must not have."""
    return hmac.new(key, message, "sha256").digest()


# -- the platform's statements: ECDSA P-256 with SHA-256, the key certified by the platform CA --


Signer = Callable[[bytes], bytes]


def ecdsa_signer(private_key_pem: bytes) -> Signer:
    """Signs with the (PEM, PKCS#8) ECDSA private key of a platform certificate."""
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise Invalid("not an ECDSA key")
    return lambda data: key.sign(data, ec.ECDSA(hashes.SHA256()))


def ecdsa_verify(certificate_der: bytes, signature: bytes, message: bytes) -> None:
    """Check a signature by the key of a (DER) certificate, or raise :class:`Invalid`."""
    try:
        key = x509.load_der_x509_certificate(certificate_der).public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise Invalid()
        key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, TypeError):
        raise Invalid() from None


def verify(public_key: bytes, signature: bytes, message: bytes) -> None:
    """Check an Ed25519 signature, or raise :class:`Invalid`."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        raise Invalid() from None


# -- device keys ----------------------------------------------------------------------------------
#
# Each console ROM and HDD image holds an X25519 private key made at manufacture (its *secret*),
# never shown and never sent; the manufacturer registers its public key with the server, which
# seals the keys it issues to it. The secret also goes into the key that installed titles are
# bound under (vhw.bindings.TitleBinding), so that no title decrypts without the device.

DEVICE_SECRET_SIZE = 32
DEVICE_PUBLIC_SIZE = 32
_HPKE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
SEAL_OVERHEAD = DEVICE_PUBLIC_SIZE + TAG_SIZE  # HPKE's encapsulated key, then the AEAD tag


def device_secret() -> bytes:
    """A fresh device secret: the raw bytes of an X25519 private key."""
    return X25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def device_public(secret: bytes) -> bytes:
    """The public key (raw, 32 bytes) of a device secret."""
    try:
        key = X25519PrivateKey.from_private_bytes(secret)
    except ValueError:
        raise Invalid() from None
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def fingerprint(public_key: bytes) -> str:
    """What ``info`` shows of a device's key: the first 16 bytes of its SHA-256, in groups of 4."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(public_key)
    text = digest.finalize()[:16].hex()
    return ":".join(text[i : i + 4] for i in range(0, len(text), 4))


def seal_to(public_key: bytes, plaintext: bytes, info: bytes) -> bytes:
    """HPKE-seal ``plaintext`` to a device's public key, bound to ``info``."""
    try:
        return _HPKE.encrypt(plaintext, X25519PublicKey.from_public_bytes(public_key), info=info)
    except ValueError:  # not 32 bytes, or a low-order point no real device has
        raise Invalid("not a device public key") from None


def open_sealed(secret: bytes, blob: bytes, info: bytes) -> bytes:
    """Open what :func:`seal_to` sealed to the device whose secret this is, or raise :class:`Invalid`."""
    if len(blob) < SEAL_OVERHEAD:
        raise Invalid()
    try:
        key = X25519PrivateKey.from_private_bytes(secret)
        return _HPKE.decrypt(blob, key, info=info)
    except (InvalidTag, ValueError):
        raise Invalid() from None


def sealed_size(plain_size: int) -> int:
    return SEAL_OVERHEAD + plain_size
