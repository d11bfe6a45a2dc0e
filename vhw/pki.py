"""The platform's X.509 certificates: its CA, the server's TLS certificate, client certificates,
and the platform's signing certificate (card tokens and audit heads: a key of its own, so that the
CA key signs certificates only).

Pure: functions take names and keys and return DER/PEM bytes. ECDSA P-256 throughout (every TLS
stack speaks it). The CA's certificate is what console ROMs carry as their trust anchor; the
server's certificate names 127.0.0.1, ::1 and localhost plus any host given at `server init`.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=3650)  # a console's trust anchor lives as long as the console
#: A TLS server's certificate: 397 days, as the CA/Browser Forum allows public ones. `vhw server
#: renew-cert` issues the next one; /metrics says how long the one in use has left, and an alert
#: rule of deploy/prometheus warns a month ahead.
TLS_VALIDITY = datetime.timedelta(days=397)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vhw platform"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(der: bytes) -> bytes:
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)


def _ca_builder(
    subject: x509.Name, key: ec.EllipticCurvePublicKey, now: datetime.datetime, until: datetime.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
    )


def make_ca(common_name: str, *, now: datetime.datetime | None = None) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    """A self-signed CA: (certificate DER, private key)."""
    now = now or datetime.datetime.now(datetime.UTC)
    key = new_key()
    subject = _name(common_name)
    cert = _ca_builder(subject, key.public_key(), now, now + VALIDITY).issuer_name(subject).sign(key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.DER), key


def cross_sign(
    new_ca_der: bytes,
    old_ca_der: bytes,
    old_ca_key: ec.EllipticCurvePrivateKey,
    *,
    now: datetime.datetime | None = None,
) -> bytes:
    """A CA rollover's cross-certificate (DER): the new CA's name and key, signed by the old CA,
    valid while the old one is. A console takes the new CA as an anchor only on such a
    certificate from a CA it trusts already (:func:`follow_rollover`)."""
    now = now or datetime.datetime.now(datetime.UTC)
    new, old = x509.load_der_x509_certificate(new_ca_der), x509.load_der_x509_certificate(old_ca_der)
    key = new.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("the new CA's key is not ECDSA")
    cert = (
        _ca_builder(new.subject, key, now, old.not_valid_after_utc)
        .issuer_name(old.subject)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(old_ca_key.public_key()), critical=False)
        .sign(old_ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def anchors_digest(anchors: Sequence[bytes]) -> str:
    """A short name of a set of trust anchors (DER), the same whatever their order: servers send
    theirs in every answer, and a console whose own set differs asks for the new one."""
    digest = hashes.Hash(hashes.SHA256())
    for der in sorted(anchors):
        digest.update(len(der).to_bytes(4, "big") + der)
    return digest.finalize()[:16].hex()


def follow_rollover(
    trusted: Sequence[bytes], anchors: Sequence[bytes], cross: Sequence[bytes], *, now: datetime.datetime | None = None
) -> list[bytes]:
    """The anchors a console trusts after a server's announcement (``anchors``, with the
    ``cross``-certificates of a rollover): each announced anchor that it trusts already, or that a
    valid cross-certificate from one it trusts vouches for (the same name and key, signed by it).
    Anchors no longer announced are retired. An announcement that vouches for none of them changes
    nothing (returns ``trusted``): a console is never left trusting nothing, or a stranger."""
    now = now or datetime.datetime.now(datetime.UTC)
    known = [x509.load_der_x509_certificate(der) for der in trusted]
    vouchers = [x509.load_der_x509_certificate(der) for der in cross]
    kept: list[bytes] = []
    for der in anchors:
        if der in kept:
            continue
        if der in trusted:
            kept.append(der)
            continue
        anchor = x509.load_der_x509_certificate(der)
        if is_ca(anchor, now) and any(_vouches(c, anchor, known, now) for c in vouchers):
            kept.append(der)
    return kept if kept else list(trusted)


def is_ca(cert: x509.Certificate, now: datetime.datetime | None = None) -> bool:
    """Whether ``cert`` is a self-signed CA certificate, valid now."""
    now = now or datetime.datetime.now(datetime.UTC)
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        cert.verify_directly_issued_by(cert)
    except (x509.ExtensionNotFound, ValueError, TypeError, InvalidSignature):
        return False
    return constraints.ca and cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def _vouches(
    cross: x509.Certificate, anchor: x509.Certificate, known: Sequence[x509.Certificate], now: datetime.datetime
) -> bool:
    """Whether ``cross`` names ``anchor`` (its subject and key) and is signed by a known CA, all
    valid now."""
    if cross.subject != anchor.subject or cross.public_key() != anchor.public_key():
        return False
    if not cross.not_valid_before_utc <= now <= cross.not_valid_after_utc:
        return False
    for issuer in known:
        try:
            cross.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


def _leaf(
    ca_der: bytes,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    now: datetime.datetime | None,
    validity: datetime.timedelta = VALIDITY,
) -> tuple[x509.CertificateBuilder, ec.EllipticCurvePrivateKey]:
    """What every certificate the CA issues has: a fresh key, names, validity, not a CA."""
    now = now or datetime.datetime.now(datetime.UTC)
    ca = x509.load_der_x509_certificate(ca_der)
    key = new_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    return builder, key


def issue(
    ca_der: bytes,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    *,
    hosts: Sequence[str] = (),
    client: bool = False,
    now: datetime.datetime | None = None,
) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    """A leaf certificate signed by the CA: a TLS server's (``hosts``: for :data:`TLS_VALIDITY`) or
    a client's (as long as the CA)."""
    builder, key = _leaf(ca_der, ca_key, common_name, now, VALIDITY if client else TLS_VALIDITY)
    builder = builder.add_extension(
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
        critical=False,
    )
    if hosts:
        names: list[x509.GeneralName] = []
        for h in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                names.append(x509.DNSName(h))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.DER), key


def issue_signer(
    ca_der: bytes, ca_key: ec.EllipticCurvePrivateKey, common_name: str, *, now: datetime.datetime | None = None
) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    """The platform's signing certificate: a key of its own for statements (card tokens, audit
    heads), allowed digital signatures only, never TLS or certificates. Console ROMs pin it beside
    the CA."""
    builder, key = _leaf(ca_der, ca_key, common_name, now)
    builder = builder.add_extension(
        x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
    )
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.DER), key


def host_names(cert_der: bytes) -> list[str]:
    """The hosts a TLS server's certificate names (its subject alternative names)."""
    cert = x509.load_der_x509_certificate(cert_der)
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(ip) for ip in alt.get_values_for_type(x509.IPAddress)] + list(alt.get_values_for_type(x509.DNSName))


def common_name(der: bytes) -> str:
    """A certificate's common name (its subject's CN)."""
    names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else "?"
