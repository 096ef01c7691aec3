"""Human-readable facts about certificates: names, key, CA, validity, thumbprints, warnings."""
import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from edgekit.certs import certgen
from edgekit.certs.names import is_test_only, san_entries
from edgekit.certs.pem import load_certificates, thumbprints
from edgekit.certs.verify import EXPIRY_WARNING


class CertInfo:
    """What inspect shows about one certificate (all plain strings/bools, and a list of warnings)."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


def key_description(public_key):
    """'EC P-256', 'RSA 2048', ... for a public key."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA {public_key.key_size}"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        curve = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
        return f"EC {curve.get(public_key.curve.name, public_key.curve.name)}"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "Ed25519 (mbedTLS on the board cannot use it)"
    return type(public_key).__name__


def describe(cert, path=None, now=None):
    """Facts and warnings about one certificate, judged at `now` (default: the current time)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    san_list = [f"{kind}:{text}" for kind, text in san_entries(cert)]
    try:
        eku = [o._name for o in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value]
    except x509.ExtensionNotFound:
        eku = []
    nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
    warnings = []
    if now > na:
        status = "EXPIRED"
        warnings.append(f"expired on {na:%Y-%m-%d %H:%M} UTC: issue a new certificate")
    elif now < nb:
        status = "NOT YET VALID"
        warnings.append(f"not valid before {nb:%Y-%m-%d %H:%M} UTC: check the clock of the machine that made it")
    elif na - now < EXPIRY_WARNING:
        status = f"expires in {(na - now).days} day(s)"
        warnings.append(f"expires on {na:%Y-%m-%d %H:%M} UTC, within 7 days: renew it soon")
    else:
        status = f"valid, {(na - now).days} days left"
    if is_test_only(cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(), str(path or "")):
        warnings.append("IoT Edge test-only certificate: for development only, never in production")
    sha1, sha256 = thumbprints(cert)
    return CertInfo(path=str(path) if path else None, role=certgen.role(path) if path else None,
                    subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(),
                    self_signed=cert.subject == cert.issuer, san=san_list, eku=eku,
                    key=key_description(cert.public_key()), is_ca=bool(bc and bc.ca),
                    path_length=bc.path_length if bc else None,
                    not_before=nb, not_after=na, status=status,
                    sha1=sha1, sha256=sha256, warnings=warnings)


def inspect_file(path, now=None):
    """CertInfo for every certificate in a file (PEM bundle or DER)."""
    return [describe(c, path, now) for c in load_certificates(path)]


def info_dict(info):
    """One CertInfo as `certs inspect --json` prints it: plain JSON values, times as ISO 8601 UTC."""
    out = dict(vars(info))
    for k in ("not_before", "not_after"):
        out[k] = out[k].strftime("%Y-%m-%dT%H:%M:%SZ")
    return out


def format_info(info, index=None, count=1):
    """Lines of text for one CertInfo, as `edgekit certs inspect` prints them."""
    head = info.path or "certificate"
    if count > 1:
        head += f" [{index + 1}/{count}]"
    lines = [head + (f"  ({info.role})" if info.role and index in (None, 0) else "")]
    ca = "yes" + (f" (pathlen {info.path_length})" if info.path_length is not None else "") if info.is_ca else "no"
    rows = [("subject", info.subject), ("issuer", info.issuer + ("  (self-signed)" if info.self_signed else "")),
            ("SAN", ", ".join(info.san) or "-"), ("EKU", ", ".join(info.eku) or "-"),
            ("key", info.key), ("CA", ca),
            ("validity", f"{info.not_before:%Y-%m-%d %H:%M} to {info.not_after:%Y-%m-%d %H:%M} UTC  [{info.status}]"),
            ("SHA-1", info.sha1), ("SHA-256", info.sha256)]
    lines += [f"  {k + ':':10}{v}" for k, v in rows]
    lines += [f"  warning: {w}" for w in info.warnings]
    return lines
