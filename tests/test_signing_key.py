"""Card tokens and audit heads are signed with the platform's signing key, not the CA's.

The CA key signs certificates only (its certificate's key usage says so); statements of the
platform (which card of a user is current, the audit chain's head) are signed by a key of their
own, certified by the CA and pinned in every console ROM beside it.
"""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from vhw import bindings, crypto
from vhw.devices import rom as rom_dev
from vhw.ids import Id, IdKind
from vhw.server.home import ServerHome


def test_the_home_signs_statements_with_a_key_of_its_own(tmp_path, cli):
    home = ServerHome.init(tmp_path / "home", listen="127.0.0.1:0")
    ca = x509.load_der_x509_certificate(home.pki.ca_der())
    signer = x509.load_der_x509_certificate(home.pki.signing_der())
    usage = signer.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign and not usage.crl_sign
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert signer.issuer == ca.subject and signer.public_key() != ca.public_key()
    ca.public_key().verify(signer.signature, signer.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    # a card token and an audit head: they verify with the signing certificate, not the CA's
    owner, mc_id = crypto.random_key()[:16], Id.random(IdKind.CARD)
    token = bindings.make_card_token(home.pki.signer(), owner, mc_id, 3)
    assert bindings.open_card_token(home.pki.signing_der(), token, owner, mc_id) == 3
    with pytest.raises(crypto.Invalid):
        bindings.open_card_token(home.pki.ca_der(), token, owner, mc_id)
    message = b"head"
    assert home.pki.check_signature(message, home.pki.signer()(message))
    # a token signed with the CA key (what earlier servers did) does not open on a console
    forged = bindings.make_card_token(lambda d: home.pki.ca_key().sign(d, ec.ECDSA(hashes.SHA256())), owner, mc_id, 9)
    with pytest.raises(crypto.Invalid):
        bindings.open_card_token(home.pki.signing_der(), forged, owner, mc_id)
    # the manufacturer's credential carries the signing certificate; a ROM made with it pins it
    from vhw.server.credentials import Credential

    cred = Credential.load(next(home.path("credentials").glob("manufacturer*")))
    assert x509.load_pem_x509_certificate(cred.signing.encode()) == signer
    r = cli(
        "console",
        "rom",
        tmp_path / "offline.rom",
        "--ca",
        home.path("ca.pem"),
        "--signing-cert",
        home.path("signing.pem"),
    )
    assert r.code == 0, r
    rom = rom_dev.load(tmp_path / "offline.rom")
    assert rom.trust_anchor == home.pki.ca_der() and rom.token_anchor == home.pki.signing_der()
    assert "tokens from" in cli("console", "info", tmp_path / "offline.rom").out
