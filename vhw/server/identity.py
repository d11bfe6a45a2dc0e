"""A server home's platform PKI: the CA consoles trust (``ca.pem``, ``ca-key.pem``), the signing
key card tokens and audit heads are signed with (``signing.pem``, ``signing-key.pem``), and the TLS
identities the CA issues (the server's, a broker's)."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .. import crypto, pki
from ..devices.files import atomic_write
from ..errors import FileError

__all__ = ["HomePki"]


class HomePki:
    def __init__(self, root: Path):
        self.root = root  # the home's folder

    def ca_der(self) -> bytes:
        return x509.load_pem_x509_certificate((self.root / "ca.pem").read_bytes()).public_bytes(
            serialization.Encoding.DER
        )

    def ca_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key((self.root / "ca-key.pem").read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise FileError(self.root / "ca-key.pem", "not the platform CA's key (ECDSA)")
        return key

    def make_signing_key(self, ca_der: bytes, ca_key: ec.EllipticCurvePrivateKey) -> None:
        cert_der, key = pki.issue_signer(ca_der, ca_key, "vhw platform signing key")
        atomic_write(self.root / "signing-key.pem", pki.key_pem(key), mode=0o600)
        atomic_write(self.root / "signing.pem", pki.cert_pem(cert_der))

    def signing_der(self) -> bytes:
        """The platform's signing certificate (DER): card tokens and audit heads verify with it.
        A home made before it existed gets one on first use, from its CA."""
        if not (self.root / "signing.pem").exists():
            self.make_signing_key(self.ca_der(), self.ca_key())
        return x509.load_pem_x509_certificate((self.root / "signing.pem").read_bytes()).public_bytes(
            serialization.Encoding.DER
        )

    def signer(self) -> crypto.Signer:
        """Signs card tokens and audit heads with the platform's signing key (ECDSA P-256,
        SHA-256): not the CA's, which signs certificates only."""
        self.signing_der()
        return crypto.ecdsa_signer((self.root / "signing-key.pem").read_bytes())

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

    def renew_tls(self) -> tuple[list[str], float]:
        """Issue the server's next TLS certificate (a fresh key, the same host names, valid for
        :data:`vhw.pki.TLS_VALIDITY`) in place of the one in use, all at once: the server takes it
        at its next start. Returns its names and when it expires (Unix time)."""
        current = x509.load_pem_x509_certificate((self.root / "server.pem").read_bytes())
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
        files = {"tls": "server.pem", "ca": "ca.pem", "signing": "signing.pem"}
        return {
            name: pki.expires((self.root / file).read_bytes()).timestamp()
            for name, file in files.items()
            if (self.root / file).exists()
        }
