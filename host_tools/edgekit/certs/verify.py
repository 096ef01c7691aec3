"""Chain verification with the rules mbedTLS (MicroPython's TLS) applies on the board.

Paths are built from the leaf whatever order the chain file has (edgeHub has served
unsorted chains). Each problem is one sentence that says what to fix.
"""
import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from edgekit.certs.names import common_names, display_name, parse_ip, san_names, subject_alt_name
from edgekit.certs.pem import CertError, is_ca, key_matches

PURPOSES = {"server": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH}
EXPIRY_WARNING = datetime.timedelta(days=7)
_MAX_DEPTH = 10


class VerifyResult:
    """Outcome of verify_chain: ok, problems (one line each), warnings, and path (leaf to root)."""

    def __init__(self, problems, warnings, path):
        self.problems = problems
        self.warnings = warnings
        self.path = path
        self.ok = not problems


def name_of(cert):
    """Short display name: the subject CN, else the whole subject."""
    return f"'{display_name(cert.subject)}'"


def _issued_by(child, parent):
    try:
        child.verify_directly_issued_by(parent)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def find_leaf(chain):
    """The certificate no other certificate in the chain was issued by (order does not matter)."""
    if len(chain) == 1:
        return chain[0]
    candidates = [c for c in chain
                  if not any(o is not c and o.issuer == c.subject and _issued_by(o, c) for o in chain)]
    # Prefer an end-entity; several candidates means unrelated certificates were bundled.
    for c in candidates:
        if not is_ca(c):
            return c
    return candidates[0] if candidates else chain[0]


def build_path(leaf, pool, roots):
    """(path leaf..anchor, anchored) following issuer signatures through pool to one of roots."""
    path = [leaf]
    seen = {leaf.fingerprint(hashes.SHA256())}
    current = leaf
    for _ in range(_MAX_DEPTH):
        if any(current == r for r in roots):
            return path, True
        for r in roots:
            if current.issuer == r.subject and _issued_by(current, r):
                path.append(r)
                return path, True
        nxt = None
        for c in pool:
            if c.fingerprint(hashes.SHA256()) not in seen and current.issuer == c.subject and _issued_by(current, c):
                nxt = c
                break
        if nxt is None:
            return path, False
        seen.add(nxt.fingerprint(hashes.SHA256()))
        path.append(nxt)
        current = nxt
    return path, False


def _ext(cert, cls):
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def hostname_matches(cert, hostname):
    """mbedTLS rules: SAN only when present (DNS exact or '*.' whole left-most label, IP by value),
    the subject CN only when there is no SAN; case-insensitive; no partial wildcards."""
    san = subject_alt_name(cert)
    if san is not None:
        ip = parse_ip(hostname)
        if ip is not None and ip in san.get_values_for_type(x509.IPAddress):
            return True
        return any(_dns_match(n, hostname) for n in san.get_values_for_type(x509.DNSName))
    return any(_dns_match(cn, hostname) for cn in common_names(cert.subject))


def _dns_match(pattern, hostname):
    pattern = pattern.lower()
    hostname = hostname.lower()
    if pattern == hostname:
        return True
    if pattern.startswith("*.") and "." in hostname:
        # The wildcard stands for exactly the first label, never part of one, never several.
        return hostname.split(".", 1)[1] == pattern[2:] and hostname.split(".", 1)[0] != ""
    return False


def names_of(cert):
    """The names a server certificate covers, for messages: SAN entries or the CN."""
    if subject_alt_name(cert) is not None:
        return san_names(cert)
    return common_names(cert.subject)


def _validity(cert, at, role, problems, warnings):
    nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
    if at > na:
        problems.append(f"{role} {name_of(cert)} expired on {na:%Y-%m-%d %H:%M} UTC; "
                        f"issue a new one{' and re-deploy it to every device' if role == 'root' else ''}")
    elif at < nb:
        problems.append(f"{role} {name_of(cert)} is not valid before {nb:%Y-%m-%d %H:%M} UTC; "
                        "check the clock (the board must set its time before TLS)")
    elif na - at < EXPIRY_WARNING:
        warnings.append(f"{role} {name_of(cert)} expires on {na:%Y-%m-%d %H:%M} UTC (in less than 7 days)")


def _check_ca(cert, role, below, problems):
    """below: number of non-self-issued CA certificates under this one in the path."""
    bc = _ext(cert, x509.BasicConstraints)
    if not bc or not bc.ca:
        problems.append(f"{role} {name_of(cert)} is not a CA (basicConstraints CA:TRUE missing); "
                        "it cannot sign other certificates: issue it as a CA")
        return
    if bc.path_length is not None and below > bc.path_length:
        problems.append(f"{role} {name_of(cert)} allows {bc.path_length} CA(s) below it (pathlen) but the "
                        f"chain has {below}; shorten the chain or reissue the CA")
    ku = _ext(cert, x509.KeyUsage)
    if ku is not None and not ku.key_cert_sign:
        problems.append(f"{role} {name_of(cert)} lacks keyUsage keyCertSign; reissue it with keyCertSign")


def _check_leaf(cert, purpose, problems):
    eku = _ext(cert, x509.ExtendedKeyUsage)
    want = PURPOSES[purpose]
    if eku is not None and want not in eku and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku:
        problems.append(f"leaf {name_of(cert)} lacks extendedKeyUsage {purpose}Auth; "
                        f"reissue it for {'TLS server' if purpose == 'server' else 'TLS client'} use")
    ku = _ext(cert, x509.KeyUsage)
    rsa_key = isinstance(cert.public_key(), rsa.RSAPublicKey)
    if ku is not None and not ku.digital_signature and not (rsa_key and ku.key_encipherment):
        problems.append(f"leaf {name_of(cert)} keyUsage has no digitalSignature; "
                        "TLS needs it: reissue the certificate")


def verify_chain(roots, chain, hostname=None, at=None, purpose="server", key=None):
    """Verify a chain (list of certificates, any order) against trusted roots (list).

    Checks signatures along the path, basic constraints, pathlen and keyCertSign on CAs,
    EKU and key usage on the leaf, validity at `at` (default now, aware datetime),
    the hostname with mbedTLS rules, and, when `key` is given, that it matches the leaf.
    """
    if purpose not in PURPOSES:
        raise CertError(f"unknown purpose '{purpose}'; use server or client")
    if not roots:
        raise CertError("no root CA given; pass the gateway's root CA with --ca")
    if not chain:
        raise CertError("no certificate to verify")
    at = at or datetime.datetime.now(datetime.timezone.utc)
    problems, warnings = [], []
    leaf = find_leaf(chain)
    pool = [c for c in chain if c is not leaf]
    path, anchored = build_path(leaf, pool, roots)
    if not anchored:
        top = path[-1]
        given = ", ".join(name_of(r) for r in roots)
        if top.subject == top.issuer:
            problems.append(f"the chain does not lead to the given root: it ends at root {name_of(top)}, which "
                            f"is not the --ca root ({given}) even if the names look alike; give the device the "
                            "root CA this chain was made with")
        else:
            problems.append(f"the chain does not lead to the given root: it ends at {name_of(top)} issued by "
                            f"'{top.issuer.rfc4514_string()}', which no --ca certificate ({given}) signed; "
                            "use the root CA this chain was made with, or add the missing intermediate")
    # Validity and constraints are judged on what path building found, even when not anchored,
    # so one run lists every fix needed.
    last = len(path) - 1
    for i, cert in enumerate(path):
        if i == 0:
            role = "leaf" if last else ("root" if anchored else "leaf")
        elif i == last and anchored:
            role = "root"
        else:
            role = "intermediate"
        _validity(cert, at, role, problems, warnings)
        if i > 0:
            below = sum(1 for c in path[1:i] if c.issuer != c.subject)
            _check_ca(cert, role, below, problems)
    if last > 0 or not anchored:
        _check_leaf(leaf, purpose, problems)
    if hostname is not None and is_ca(leaf):
        warnings.append(f"{name_of(leaf)} is a CA, so --hostname was not checked: IoT Edge issues the server "
                        "certificate from the edge CA at start; check the running gateway for the hostname")
    elif hostname is not None and not hostname_matches(leaf, hostname):
        names = names_of(leaf)
        problems.append(f"hostname '{hostname}' is not covered by {name_of(leaf)} (it covers: "
                        f"{', '.join(names) or 'nothing'}); connect with a name it lists (GatewayHostName "
                        "must equal the gateway's config 'hostname') or reissue the certificate")
    if key is not None and not key_matches(leaf, key):
        problems.append(f"the private key does not match leaf {name_of(leaf)}; pair the certificate "
                        "with the key it was issued for")
    return VerifyResult(problems, warnings, path)
