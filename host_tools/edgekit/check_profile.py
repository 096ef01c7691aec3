"""`edgekit check`'s TLS profile step: which TLS versions and suites a gateway accepts, and which
IoT Edge release that looks like (edgehub_profiles.py).

Each probe is one verified handshake with the version (and, for TLS 1.2, the suite) pinned,
closed at once: no credentials, no MQTT. It runs only after the TLS step verified the chain,
with the same trust and client certificate, so it never talks to an unverified gateway.
Many gateways log a failed handshake: a refused suite costs one line in edgeHub's log.
"""
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from edgekit import edgehub_profiles
from edgekit.edgehub_profiles import TLS12, TLS13

ACCEPTED, REFUSED, UNKNOWN = "accepted", "refused", "unknown"
_PINS = {TLS12: ssl.TLSVersion.TLSv1_2, TLS13: ssl.TLSVersion.TLSv1_3}
_PARALLEL = 4  # a remote gateway answers in round trips: a few at once keep the step short


def _handshake(address, port, host, make_ctx, version, suite, timeout):
    """accepted/refused/unknown for one pinned handshake; with the server's leaf (DER) when accepted."""
    ctx = make_ctx()
    ctx.minimum_version = ctx.maximum_version = _PINS[version]
    if suite:
        try:
            ctx.set_ciphers(suite)
        except ssl.SSLError:
            return UNKNOWN, None  # this machine's OpenSSL cannot offer it
    try:
        raw = socket.create_connection((address, port), timeout=timeout)
    except OSError:
        return UNKNOWN, None
    try:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            return ACCEPTED, tls.getpeercert(binary_form=True)
    except ssl.SSLCertVerificationError:
        return UNKNOWN, None  # the chain changed since the TLS step: no verdict on the version
    except ssl.SSLError:
        return REFUSED, None  # an alert: protocol version, handshake failure (no shared suite)
    except OSError:
        # A reset or an EOF mid-handshake is how some stacks refuse; a timeout says nothing.
        return UNKNOWN, None
    finally:
        raw.close()


def _key_type(der):
    key = x509.load_der_x509_certificate(der).public_key() if der else None
    if isinstance(key, rsa.RSAPublicKey):
        return "rsa"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ec"
    return None


def probe(address, port, host, make_ctx, timeout=5.0):
    """What the gateway accepts: {"versions": {v: state}, "dotnet": {suite: state}, "other": {suite: state}}.

    make_ctx(): a fresh verified client context (check.verified_context). The TLS 1.2 suites tried
    are those the served certificate's key can sign for: .NET's own, then common ones .NET refuses.
    """
    with ThreadPoolExecutor(max_workers=_PARALLEL) as pool:
        runs = {v: pool.submit(_handshake, address, port, host, make_ctx, v, None, timeout) for v in _PINS}
        versions = {v: f.result() for v, f in runs.items()}
        found = {"versions": {v: state for v, (state, _) in versions.items()}, "dotnet": {}, "other": {}}
        key_type = _key_type(versions[TLS12][1])
        if versions[TLS12][0] != ACCEPTED or key_type is None:
            return found
        dotnet, other = edgehub_profiles.suites_for(key_type)
        runs = {s: pool.submit(_handshake, address, port, host, make_ctx, TLS12, s, timeout) for s in dotnet + other}
        for s in dotnet:
            found["dotnet"][s] = runs[s].result()[0]
        for s in other:
            found["other"][s] = runs[s].result()[0]
    return found


def _of(table, state):
    return [name for name, s in table.items() if s == state]


def describe(found):
    """(summary, details, data) of a probe() result for the check's report."""
    versions = _of(found["versions"], ACCEPTED)
    unsure = _of(found["versions"], UNKNOWN)
    foreign = _of(found["other"], ACCEPTED)
    profile, verdict = edgehub_profiles.name_profile(versions, foreign)
    details = [f"TLS {v}: {found['versions'][v]}" for v in sorted(found["versions"])]
    if unsure:
        profile = None
        verdict = f"could not tell: TLS {', '.join(unsure)} neither accepted nor refused (see details)"
        details.append("a probe timed out or the connection dropped: run the check again")
    if found["dotnet"]:
        dotnet_ok = _of(found["dotnet"], ACCEPTED)
        details.append("TLS 1.2 suites of .NET on Linux accepted: " + (", ".join(dotnet_ok) or "none"))
        missing = _of(found["dotnet"], REFUSED)
        if missing:
            details.append("...refused: " + ", ".join(missing) + " (edgeHub accepts every one of these)")
        details.append("other TLS 1.2 suites accepted: " + (", ".join(foreign) or "none, as edgeHub"))
    if foreign:
        details.append("edgeHub's .NET refuses those: a proxy may terminate TLS in front of it, or its"
                       " openssl.cnf sets a CipherString; devices that use them fail against a plain edgeHub")
    if profile == "1.4":
        details.append("edgeHub 1.5 and 1.6 look the same when their SslProtocols setting is Tls12")
    elif profile and "/" in profile:
        details.append("1.5 and 1.6 run the same MQTT head and TLS defaults (1.6 moved to .NET 10):"
                       " TLS does not tell them apart")
    data = {"profile": profile, "tls_versions": found["versions"], "tls12_dotnet_suites": found["dotnet"],
            "tls12_other_suites": found["other"], "dotnet_defaults": (not foreign) if found["dotnet"] else None}
    return verdict, details, data
