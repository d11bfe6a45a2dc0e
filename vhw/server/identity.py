"""A server home's platform PKI: the CA consoles trust (``ca.pem``, ``ca-key.pem``), the signing
key card tokens and audit heads are signed with (``signing.pem``, ``signing-key.pem``), and the TLS
identities the CA issues (the server's, a broker's).

A CA rollover (``vhw server ca-rollover begin`` / ``finish``): ``begin`` makes the next CA
(``ca-next.pem``, ``ca-next-key.pem``) and a cross-certificate by which the current CA vouches for
it (``ca-next-cross.pem``). Servers announce both CAs and the cross-certificate (``/v1/trust``),
and consoles take the next CA on the cross-certificate's word at their next contact. The TLS
certificates servers present stay the current CA's until ``finish`` (a CA made with a path length
of 0, as every platform CA is, admits no cross-certificate in a chain below it), while client
certificates come from the next CA, whose credentials trust both. ``finish`` makes the next CA the
current one, issues the server's TLS certificate from it, and retires the old CA (its certificate
kept as ``ca-retired-EXPIRY.pem``, its key deleted); consoles that followed then drop it.
"""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .. import crypto, pki
from .. import protocol as p
from ..devices.files import atomic_write, read_small
from ..errors import FileError, StateError

__all__ = ["HomePki"]

RESTORE = " (restore the home's files from a backup of its folder, or another host's export)"


class HomePki:
    def __init__(self, root: Path):
        self.root = root  # the home's folder

    def ca_der(self) -> bytes:
        return self._der("ca.pem")

    def ca_key(self) -> ec.EllipticCurvePrivateKey:
        return self._key("ca-key.pem")

    def _key(self, name: str) -> ec.EllipticCurvePrivateKey:
        try:
            key = serialization.load_pem_private_key(_read(self.root / name), password=None)
        except (ValueError, TypeError):
            raise FileError(self.root / name, f"damaged: not a PEM private key{RESTORE}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise FileError(self.root / name, "not a platform CA's key (ECDSA)")
        return key

    def _der(self, name: str) -> bytes:
        return _certificate(self.root / name).public_bytes(serialization.Encoding.DER)

    @property
    def rolling(self) -> bool:
        """Whether a CA rollover is under way (begun, not finished)."""
        return (self.root / "ca-next.pem").exists()

    def client_issuer(self) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
        """The CA that issues client certificates now (its certificate and key): during a
        rollover the next one, so that they outlive it."""
        if self.rolling and (self.root / "ca-next-key.pem").exists():
            return self._der("ca-next.pem"), self._key("ca-next-key.pem")
        return self.ca_der(), self.ca_key()

    def trust(self) -> p.Trust:
        """What this home announces to consoles: the CAs to trust, and a rollover's
        cross-certificate."""
        current = self.ca_der()
        if self.rolling and self._der("ca-next.pem") != current:  # (equal: a finish that stopped midway)
            return p.Trust((current, self._der("ca-next.pem")), (self._der("ca-next-cross.pem"),))
        return p.Trust((current,))

    def anchors_pem(self) -> bytes:
        """The CAs a client of this home trusts, as PEM (both of them during a rollover)."""
        return b"".join(pki.cert_pem(der) for der in self.trust().anchors)

    def anchors_file(self) -> Path:
        """``anchors.pem``, written from :meth:`anchors_pem`: the CAs whose client certificates
        the server accepts (in broker mode)."""
        path = self.root / "anchors.pem"
        if not path.exists() or path.read_bytes() != self.anchors_pem():
            atomic_write(path, self.anchors_pem())
        return path

    def begin_rollover(self, now: datetime.datetime | None = None) -> str:
        """Make the next CA and the current one's cross-certificate for it. Returns the next CA's
        name."""
        if self.rolling:
            raise StateError(
                "a CA rollover is under way already", hint="finish it first: vhw server ca-rollover finish"
            )
        if now is None:
            # on a whole second: credentials are dated to the second, and those dated before this
            # one were issued by the old CA (rollover_begun), those from it on by the next
            time.sleep(1.001 - time.time() % 1)  # (a millisecond past it: never early)
            now = datetime.datetime.now(datetime.UTC)
        now = now.replace(microsecond=0)
        der, key = pki.make_ca(f"vhw platform CA {now:%Y-%m-%d %H:%M:%S}", now=now)
        cross = pki.cross_sign(der, self.ca_der(), self.ca_key(), now=now)
        # the key, then the cross-certificate, then the certificate that says a rollover is on
        atomic_write(self.root / "ca-next-key.pem", pki.key_pem(key), mode=0o600)
        atomic_write(self.root / "ca-next-cross.pem", pki.cert_pem(cross))
        atomic_write(self.root / "ca-next.pem", pki.cert_pem(der))
        return x509.load_der_x509_certificate(der).subject.rfc4514_string()

    def rollover_begun(self) -> float:
        """When the rollover under way began (Unix time, a whole second: every credential dated
        before it is the old CA's)."""
        begun = _certificate(self.root / "ca-next.pem").not_valid_before_utc
        return (begun + datetime.timedelta(minutes=5)).timestamp()

    def finish_rollover(self) -> Path:
        """Make the next CA the current one, retire the old (its certificate kept, its key
        deleted), and issue the server's TLS certificate from the new CA alone. A crash anywhere
        leaves a state that running it again completes. Returns the retired certificate's file."""
        if not self.rolling:
            raise StateError("no CA rollover is under way", hint="begin one: vhw server ca-rollover begin")
        new = _read(self.root / "ca-next.pem")
        old = _read(self.root / "ca.pem")
        if old != new:  # (equal: a finish that stopped after replacing ca.pem, its key before it)
            expiry = _certificate(self.root / "ca.pem").not_valid_after_utc
            retired = self.root / f"ca-retired-{expiry:%Y%m%dT%H%M%SZ}.pem"  # (by the end of its validity)
            atomic_write(retired, old)
            atomic_write(self.root / "ca-key.pem", _read(self.root / "ca-next-key.pem"), mode=0o600)
            atomic_write(self.root / "ca.pem", new)
        self.renew_tls()
        self.anchors_file()
        for name in ("ca-next-cross.pem", "ca-next-key.pem", "ca-next.pem"):  # ca-next.pem last: then it is done
            (self.root / name).unlink(missing_ok=True)
        return max(self.root.glob("ca-retired-*.pem"), key=lambda path: path.stat().st_mtime)

    def make_signing_key(self, ca_der: bytes, ca_key: ec.EllipticCurvePrivateKey) -> None:
        cert_der, key = pki.issue_signer(ca_der, ca_key, "vhw platform signing key")
        atomic_write(self.root / "signing-key.pem", pki.key_pem(key), mode=0o600)
        atomic_write(self.root / "signing.pem", pki.cert_pem(cert_der))

    def signing_der(self) -> bytes:
        """The platform's signing certificate (DER): card tokens and audit heads verify with it.
        A home made before it existed gets one on first use, from its CA."""
        if not (self.root / "signing.pem").exists():
            self.make_signing_key(self.ca_der(), self.ca_key())
        return self._der("signing.pem")

    def signer(self) -> crypto.Signer:
        """Signs card tokens and audit heads with the platform's signing key (ECDSA P-256,
        SHA-256): not the CA's, which signs certificates only."""
        self.signing_der()
        path = self.root / "signing-key.pem"
        try:
            return crypto.ecdsa_signer(_read(path))
        except (ValueError, TypeError, crypto.Invalid):
            raise FileError(path, f"damaged: not a platform signing key{RESTORE}") from None

    def check_signature(self, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is the platform signing key's over ``message`` (signed audit
        heads; heads signed before the home had a signing key verify with the CA's)."""
        for der in (self.signing_der(), self.ca_der()):
            try:
                crypto.ecdsa_verify(der, signature, message)
                return True
            except crypto.Invalid:
                continue
        return False

    def issue_server_cert(self, name: str, hosts: list[str], out: Path) -> None:
        """A TLS server identity signed by the platform CA, for a broker: consoles trust it."""
        out.mkdir(parents=True, exist_ok=True)
        cert, key = pki.issue(
            self.ca_der(), self.ca_key(), name, hosts=sorted({"127.0.0.1", "::1", "localhost", *hosts})
        )
        atomic_write(out / "tls.pem", pki.cert_pem(cert) + pki.cert_pem(self.ca_der()))
        atomic_write(out / "tls-key.pem", pki.key_pem(key), mode=0o600)
        atomic_write(out / "trust.json", json.dumps(p.encode(self.trust())).encode())  # what the broker announces

    def renew_tls(self) -> tuple[list[str], float]:
        """Issue the server's next TLS certificate (a fresh key, the same host names, valid for
        :data:`vhw.pki.TLS_VALIDITY`) in place of the one in use, all at once: the server takes it
        at its next start. Returns its names and when it expires (Unix time)."""
        current = _certificate(self.root / "server.pem")
        names = pki.host_names(current.public_bytes(serialization.Encoding.DER))
        cert, key = pki.issue(self.ca_der(), self.ca_key(), "vhw licensing server", hosts=names)
        # the key first: a certificate is never in place without its own key (a crash between the
        # two leaves the old certificate with a new key, which the next renew-cert mends)
        atomic_write(self.root / "server-key.pem", pki.key_pem(key), mode=0o600)
        atomic_write(self.root / "server.pem", pki.cert_pem(cert) + pki.cert_pem(self.ca_der()))
        return names, x509.load_der_x509_certificate(cert).not_valid_after_utc.timestamp()

    def expiries(self) -> dict[str, float]:
        """When each of the platform's certificates in this home stops being valid (Unix time):
        the server's TLS certificate, the CA, the signing certificate."""
        files = {"tls": "server.pem", "ca": "ca.pem", "ca-next": "ca-next.pem", "signing": "signing.pem"}
        return {
            name: _certificate(self.root / file).not_valid_after_utc.timestamp()
            for name, file in files.items()
            if (self.root / file).exists()
        }


def _certificate(path: Path) -> x509.Certificate:
    """A certificate of the home, or one line naming its file when it does not read as one."""
    try:
        return x509.load_pem_x509_certificate(_read(path))
    except ValueError:
        raise FileError(path, f"damaged: not a PEM certificate{RESTORE}") from None


def _read(path: Path) -> bytes:
    return read_small(path, "file of the server's home", kind=FileError)
