"""What each IoT Edge release's edgeHub offers on its TLS port, and naming a gateway by it.

One table, read by `gateway serve --edgehub` (what to offer) and by `edgekit check` (which
release a gateway's TLS looks like). Sources, in docs/gateway.md's TLS rows:
- versions: edgeHub's `DefaultSslProtocols` (Hub.Service/Program.cs): Tls12 up to 1.4, then
  Tls12 | Tls13 (Azure/iotedge #7173, 2023-12); 1.6 changed the runtime (.NET 10 on
  `dotnet/aspnet:10.0-alpine`, #7503), not the MQTT head nor this setting;
- TLS 1.2 suites: .NET on Linux with no CipherString in openssl.cnf uses its own fixed list
  (dotnet/runtime `pal_ssl.c` DOTNET_DEFAULT_CIPHERSTRING; dotnet/docs
  core/compatibility/cryptography/5.0/default-cipher-suites-for-tls-on-linux.md): ECDHE only,
  AES-GCM and AES-CBC-SHA256/384, no ChaCha20-Poly1305. TLS 1.3 keeps OpenSSL's own three.
Pure data and functions, no TLS library: both sides import it.
"""
from dataclasses import dataclass

TLS12 = "1.2"
TLS13 = "1.3"

# The order is .NET's (server preference). Only the ECDHE-RSA half can be used with the RSA-2048
# certificate IoT Edge issues to edgeHub; the ECDSA half is listed because .NET offers it.
DOTNET_TLS12_SUITES = (
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-SHA384", "ECDHE-ECDSA-AES128-SHA256",
    "ECDHE-RSA-AES256-SHA384", "ECDHE-RSA-AES128-SHA256",
)

# Suites a TLS 1.2 client commonly offers that .NET's default refuses: one accepted means the
# port is not edgeHub with .NET's defaults (a proxy in front, or an openssl.cnf CipherString).
OTHER_TLS12_SUITES = {
    "rsa": ("ECDHE-RSA-CHACHA20-POLY1305", "ECDHE-RSA-AES128-SHA", "ECDHE-RSA-AES256-SHA",
            "AES128-GCM-SHA256", "AES256-GCM-SHA384", "AES128-SHA256", "DHE-RSA-AES128-GCM-SHA256"),
    "ec": ("ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA"),
}


@dataclass(frozen=True)
class Release:
    """One IoT Edge release line as a downstream device sees it on 8883."""

    name: str
    tls: tuple          # TLS versions edgeHub accepts by default
    runtime: str        # what edgeHub runs on (why its TLS is what it is)
    end_of_life: str    # ISO date


RELEASES = {
    "1.4": Release("1.4", (TLS12,), ".NET 6 on Alpine", "2024-11-12"),
    "1.5": Release("1.5", (TLS12, TLS13), ".NET 8 on Alpine (dotnet/aspnet:8.0-alpine)", "2026-11-10"),
    "1.6": Release("1.6", (TLS12, TLS13), ".NET 10 on Alpine (dotnet/aspnet:10.0-alpine)", "2028-11-14"),
}
# 1.4 stays the default: TLS 1.2 only is the narrowest, so a device that works against it works
# against every release; --edgehub 1.6 adds what the supported release offers.
DEFAULT = "1.4"


def suites_for(key_type):
    """(.NET's suites, other common suites) a server with a `key_type` ("rsa" or "ec") certificate can use."""
    auth = "ECDHE-RSA-" if key_type == "rsa" else "ECDHE-ECDSA-"
    return tuple(s for s in DOTNET_TLS12_SUITES if s.startswith(auth)), OTHER_TLS12_SUITES[key_type]


def releases_with(versions):
    """The release names whose TLS versions are exactly `versions` (an iterable of "1.2", "1.3")."""
    wanted = set(versions)
    return [r.name for r in RELEASES.values() if set(r.tls) == wanted]


def name_profile(versions, foreign_suites=()):
    """(profile or None, one-line verdict) for what a gateway accepted.

    versions: the TLS versions it accepted; foreign_suites: TLS 1.2 suites it accepted that .NET's
    default refuses. 1.5 and 1.6 offer the same TLS, so they are named together ("1.5/1.6").
    """
    matches = releases_with(versions)
    shown = " and ".join(f"TLS {v}" for v in sorted(versions)) or "no TLS version accepted"
    shown += " only" if len(versions) == 1 else ""
    if not matches:
        return None, f"{shown}: like no IoT Edge release (edgeHub speaks TLS 1.2, and 1.3 from 1.5 on)"
    profile = "/".join(matches)
    if len(matches) > 1:
        verdict = f"{shown}: looks like IoT Edge {' or '.join(matches)} (their TLS is the same: TLS cannot tell them apart)"
    else:
        r = RELEASES[profile]
        verdict = f"{shown}: looks like IoT Edge {profile} (end of life {r.end_of_life})"
    if foreign_suites:
        verdict += "; but it accepts suites edgeHub's .NET does not offer"
    return profile, verdict
