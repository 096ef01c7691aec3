"""The chain of a CA-signed device's client certificate, built from the certificate TLS proved.

edgeHub takes the certificate the TLS handshake authenticated (SslStream's remote certificate,
`MqttProtocolHead.RemoteCertificateValidationCallback` -> `DeviceIdentityProvider.
RegisterConnectionCertificate`) and `CertificateHelper.ValidateClientCert` builds its chain with
.NET's X509Chain, the other presented certificates serving only as untrusted intermediates
(`BuildCertificateList`: `ChainPolicy.ExtraStore`). So the chain starts at that certificate, the
one whose CN is the device id, and no other presented certificate can stand in for it.

.NET's X509Chain runs on OpenSSL's X509_verify_cert on Linux, and so does this module (pyOpenSSL's
X509StoreContext): signatures, CA flags and path lengths of the intermediates, and validity, with
no extended key usage required (edgeHub's X509Chain sets no ApplicationPolicy; certGen's and many
vendors' device certificates carry no clientAuth EKU and no subjectAltName). cryptography's
ClientVerifier was not used: its Web PKI policy refuses a leaf without a subjectAltName, which
certGen.sh's device certificates do not have.
"""
import datetime

from cryptography import x509
from OpenSSL import crypto

# edgeHub sets no count of its own; the TLS stack bounds the Certificate message at OpenSSL's
# SSL_MAX_CERT_LIST_DEFAULT (100 KiB, ssl.h), which .NET on Linux and this gateway share, and that
# holds about 300 small certificates. A device needs its leaf, its intermediates and at most the
# root: 10 allows 8 intermediates, the most mbedTLS (MBEDTLS_X509_MAX_INTERMEDIATE_CA, the
# boards' TLS) and cryptography's verifier (max_chain_depth) accept by default.
MAX_PRESENTED = 10


class ChainError(ValueError):
    """The presented certificates do not make a trusted chain; the text says why, in one line."""


def verify(leaf, presented, trust_bundle, at):
    """Build leaf's chain through the presented intermediates to a trust_bundle certificate.

    leaf: the certificate TLS proved (cryptography); presented: every certificate the client sent
    (the leaf among them or not); trust_bundle: the CA certificates that anchor chains; at: an aware
    datetime. Returns the chain (leaf first); raises ChainError. The work is a path build over at
    most MAX_PRESENTED certificates: linear, never a comparison of every pair.
    """
    others = [c for c in presented if c != leaf]
    if len(others) + 1 > MAX_PRESENTED:
        raise ChainError(f"{len(others) + 1} certificates presented, more than the {MAX_PRESENTED} "
                         "this gateway reads (leaf, up to 8 intermediates and the root)")
    store = crypto.X509Store()
    for anchor in trust_bundle:
        store.add_cert(crypto.X509.from_cryptography(anchor))
    # A trust bundle may hold an intermediate (serve --trust-bundle): it anchors chains as well.
    store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
    store.set_time(at.astimezone(datetime.timezone.utc).replace(tzinfo=None))
    context = crypto.X509StoreContext(store, crypto.X509.from_cryptography(leaf),
                                      [crypto.X509.from_cryptography(c) for c in others])
    try:
        chain = context.get_verified_chain()
    except crypto.X509StoreContextError as e:
        raise ChainError(_reason(e)) from None
    return [c.to_cryptography() for c in chain]


def _reason(error):
    # X509StoreContextError.errors is [code, depth, text]; name the certificate it is about.
    text = error.errors[2] if len(getattr(error, "errors", ())) > 2 else str(error)
    cert = getattr(error, "certificate", None)
    if cert is None:
        return text
    subject = cert.to_cryptography().subject
    cns = subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    name = cns[0].value if cns else subject.rfc4514_string()
    return f"{text} (at '{name}')"
