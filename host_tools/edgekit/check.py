"""Check a gateway the way a downstream device will use it: DNS, TCP, TLS, its profile, MQTT login.

Each step is a function that returns a `Step` (status, one-line summary, details,
fixes, and machine-readable data); `run_check` chains them and `render_text` /
`render_json` show the same `Report` to people and to scripts. Credentials are
only ever sent over a connection whose chain and hostname were verified.
"""
import _ssl  # Certificate objects of the pre-3.13 chain API encode with its constants
import datetime
import json
import os
import re
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from edgekit import use_firmware  # noqa: E402

use_firmware()
from azure_edge import connstr, sas, topics  # noqa: E402  (the same code the board runs)

from edgekit import check_profile  # noqa: E402
from edgekit.certs import CertError, expiry, load_certificates  # noqa: E402
from edgekit.certs.names import display_name, parse_ip, san_names  # noqa: E402
from edgekit.printable import printable  # noqa: E402

MQTT_PORT = 8883
# The other ports Microsoft's gateway guide lists; MQTT devices need only 8883.
OTHER_PORTS = {5671: "AMQP", 443: "MQTT/AMQP over WebSockets"}
SAS_TTL = 3600  # what the Azure SDKs use
OK, FAIL, SKIP, INFO = "ok", "fail", "skip", "info"

# OpenSSL verify codes (x509_vfy.h) grouped by what the user has to fix.
_UNKNOWN_ISSUER = {2, 7, 18, 19, 20, 21}
_EXPIRED = {10}
_NOT_YET_VALID = {9}
_NAME_MISMATCH = {62, 64}

_CONNACK = {
    0: "accepted",
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


class CheckError(ValueError):
    """Bad input to the check (unreadable ROOT, conflicting options); nothing was contacted."""


@dataclass
class Step:
    """The outcome of one step: status is ok, fail, skip (not run) or info (never fails)."""

    name: str
    status: str
    summary: str
    details: list = field(default_factory=list)
    fixes: list = field(default_factory=list)
    data: dict = field(default_factory=dict)


@dataclass
class Report:
    """All steps of one check; `ok` is true only when no step failed or was skipped."""

    host: str
    port: int
    steps: list = field(default_factory=list)

    @property
    def ok(self):
        return all(s.status in (OK, INFO) for s in self.steps)

    def as_dict(self):
        return {"host": self.host, "port": self.port, "ok": self.ok,
                "steps": [asdict(s) for s in self.steps]}


@dataclass
class Identity:
    """What the MQTT step logs in with. `password` is a secret: never print it."""

    client_id: str
    username: str
    password: str = None
    cert: str = None
    key: str = None
    auth: str = "sas"
    token_expiry: int = None


# --- inputs -----------------------------------------------------------------------------


def split_host_port(text, default_port=MQTT_PORT):
    """`host`, `host:port` or `[v6]:port` -> (host, port); raise CheckError when malformed."""
    text = (text or "").strip()
    if not text:
        raise CheckError("no gateway host given: pass HOST[:PORT] or --connection-string with GatewayHostName")
    host, port = text, default_port
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise CheckError(f"'{text}' has '[' without ']'; write an IPv6 address as [addr]:port")
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise CheckError(f"'{text}' is not HOST[:PORT]")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if "/" in host or not host:
        raise CheckError(f"'{text}' is not HOST[:PORT] (no scheme or path, e.g. mygateway.contoso.com:8883)")
    try:
        port = int(port)
    except ValueError:
        raise CheckError(f"port '{port}' is not a number") from None
    if not 0 < port < 65536:
        raise CheckError(f"port {port} is out of range 1-65535")
    return host, port


def load_root(path):
    """Read the trusted root (PEM or DER, one or more certificates) -> list of certificates."""
    try:
        return load_certificates(path)
    except CertError as e:
        raise CheckError(f"--ca: {e}") from None


def identity_from(cs_text, cert=None, key=None, now=None):
    """Build the MQTT identity from a connection string (and client cert/key for x509=true).

    The username and the token audience name the IoT hub (HostName), never the gateway.
    """
    try:
        cs = connstr.parse(cs_text)
    except ValueError as e:
        raise CheckError(f"connection string: {e}") from None
    if (cert is None) != (key is None):
        raise CheckError("give --cert and --key together (the device certificate and its private key)")
    if cs.x509:
        if cs.module_id:
            raise CheckError("modules behind a gateway authenticate with a SharedAccessKey only;"
                             " X.509 is for devices")
        if cert is None:
            raise CheckError("the connection string says x509=true: add --cert and --key for the device")
    elif cert is not None:
        raise CheckError("the connection string has a SharedAccessKey; --cert/--key are for"
                         " x509=true connection strings (drop them, or use the X.509 connection string)")
    ident = Identity(client_id=topics.client_id(cs.device_id, cs.module_id),
                     username=topics.username(cs.host_name, cs.device_id, cs.module_id))
    if cs.x509:
        _check_readable(cert, "--cert")
        _check_readable(key, "--key")
        ident.cert, ident.key, ident.auth = cert, key, "x509"
    else:
        expiry = int(now if now is not None else time.time()) + SAS_TTL
        uri = sas.resource_uri(cs.host_name, cs.device_id, cs.module_id)
        ident.password = sas.generate(uri, cs.shared_access_key, expiry, cs.shared_access_key_name)
        ident.token_expiry = expiry
    return cs, ident


def _check_readable(path, what):
    if not os.path.isfile(path):
        raise CheckError(f"{what} '{path}' does not exist")


# --- step 1: DNS --------------------------------------------------------------------------


def resolve(host, timeout=5.0):
    """Resolve host; on failure say which DNS record or hosts line to add."""
    if parse_ip(host) is not None:
        return Step("dns", OK, f"{host} is an address; no lookup needed", data={"addresses": [host]})
    box = {}

    def lookup():
        try:
            box["infos"] = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError as e:
            box["error"] = e

    # getaddrinfo has no timeout of its own: run it in a thread we can stop waiting for.
    t = threading.Thread(target=lookup, daemon=True)
    t.start()
    t.join(timeout)
    if "infos" in box:
        addrs = []
        for info in box["infos"]:
            if info[4][0] not in addrs:
                addrs.append(info[4][0])
        return Step("dns", OK, f"{host} resolves to {', '.join(addrs)}", data={"addresses": addrs})
    why = "timed out after %gs" % timeout if t.is_alive() else _gai_reason(box.get("error"))
    fixes = [f"add a DNS record for {host}, or a line to this machine's hosts file"
             " (/etc/hosts; C:\\Windows\\System32\\drivers\\etc\\hosts on Windows):",
             f"    <gateway-ip>  {host}"]
    if "." not in host:
        fixes.append(f"{host} is a short name: if the gateway's config.toml hostname is an FQDN,"
                     " use that same FQDN as GatewayHostName")
    return Step("dns", FAIL, f"{host} does not resolve: {why}", fixes=fixes,
                data={"addresses": [], "error": why})


def _gai_reason(err):
    if err is None:
        return "no addresses"
    if isinstance(err, socket.gaierror) and err.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
        return "no such name"
    return err.strerror or str(err)


# --- step 2: TCP --------------------------------------------------------------------------


def classify_connect_error(err):
    """Name a connect failure: refused, reset, timed out, unreachable or error."""
    if isinstance(err, ConnectionRefusedError):
        return "refused"
    if isinstance(err, (ConnectionResetError, BrokenPipeError)):
        return "reset"
    if isinstance(err, (socket.timeout, TimeoutError)):
        return "timed out"
    import errno
    if getattr(err, "errno", None) in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL):
        return "unreachable"
    return "error"


def probe_port(address, port, timeout=5.0):
    """Try one TCP connect -> (state, detail) with state open/refused/reset/timed out/unreachable/error."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return "open", ""
    except OSError as e:
        return classify_connect_error(e), e.strerror or str(e)


_TCP_FIX = {
    "refused": "nothing listens on {port} at {addr}: is edgeHub running (`sudo iotedge list`) and does"
               " its deployment publish {port} (HostConfig.PortBindings)?",
    "timed out": "packets to {addr}:{port} are dropped: open {port}/tcp in the gateway's firewall"
                 " (and any network firewall or cloud security group) between here and the gateway",
    "reset": "{addr}:{port} accepted and then reset the connection: a firewall or proxy in between,"
             " or a service that drops new clients",
    "unreachable": "no route to {addr}: check this machine's network, VPN and the gateway's address",
    "error": "cannot connect to {addr}:{port}; check the address and the network",
}


def tcp_probe(host, port, addresses, timeout=5.0, other_ports=OTHER_PORTS):
    """Connect to the MQTT port (each address in turn) and report the other gateway ports.

    Returns (mqtt_step, other_step); the second never fails: MQTT devices need only one port.
    """
    others = [p for p in other_ports if p != port]
    with ThreadPoolExecutor(max_workers=1 + len(others)) as pool:
        side = {p: pool.submit(probe_port, addresses[0], p, timeout) for p in others}
        tried = []
        for addr in addresses:
            state, detail = probe_port(addr, port, timeout)
            tried.append({"address": addr, "state": state, "detail": detail})
            if state == "open":
                break
        other_states = {p: side[p].result() for p in others}
    last = tried[-1]
    data = {"port": port, "tried": tried}
    if last["state"] == "open":
        main = Step("tcp", OK, f"{host}:{port} accepts connections ({last['address']})", data=data)
    else:
        details = [f"{t['address']}:{port} {t['state']}" + (f" ({t['detail']})" if t["detail"] else "")
                   for t in tried]
        fixes = [_TCP_FIX[t["state"]].format(addr=t["address"], port=port) for t in tried]
        main = Step("tcp", FAIL, f"{host}:{port} {last['state']}", details=details,
                    fixes=list(dict.fromkeys(fixes)), data=data)
    parts = [f"{p} ({other_ports[p]}) {other_states[p][0]}" for p in others]
    other = Step("ports", INFO, "; ".join(parts) if parts else "no other ports to report",
                 details=["only needed for AMQP or WebSocket clients; MQTT devices use 8883"] if parts else [],
                 data={str(p): other_states[p][0] for p in others})
    return main, other


# --- step 3: TLS --------------------------------------------------------------------------


def verified_context(root_certs, cert=None, key=None):
    """A client context that trusts only root_certs and checks chain and hostname (no switch to turn it off)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname by default
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cadata="".join(
        c.public_bytes(serialization.Encoding.PEM).decode() for c in root_certs))
    if cert:
        try:
            ctx.load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as e:
            why = getattr(e, "reason", None) or str(e)
            if "MISMATCH" in why:
                why = "the key does not belong to the certificate"
            raise CheckError(f"cannot use --cert/--key: {why};"
                             " pass the PEM certificate (full chain for CA-signed) and its own unencrypted key") from None
    return ctx


def _peer_chain(sslobj):
    """The chain the server sent, as DER, whatever the verdict (Python 3.13 API, else the 3.10+ one).

    OpenSSL keeps the peer's chain even when verification failed, so the verifying handshake
    itself shows what was served: no second, unverified connection is needed.
    """
    getter = getattr(sslobj, "get_unverified_chain", None)
    if getter is None:
        getter = getattr(getattr(sslobj, "_sslobj", None), "get_unverified_chain", None)
    if getter is None:
        return []
    try:
        chain = getter() or []
    except (ValueError, ssl.SSLError):
        return []
    return [c if isinstance(c, bytes) else c.public_bytes(_ssl.ENCODING_DER) for c in chain]


def open_verified(address, port, host, ctx, timeout=5.0):
    """TCP + verified TLS handshake -> (tls_socket or None, error or None, served chain as DER)."""
    raw = socket.create_connection((address, port), timeout=timeout)
    tls = ctx.wrap_socket(raw, server_hostname=host, do_handshake_on_connect=False)
    try:
        tls.do_handshake()
    except (ssl.SSLError, OSError) as e:
        chain = _peer_chain(tls)
        tls.close()
        return None, e, chain
    return tls, None, _peer_chain(tls)


def describe_cert(cert):
    """Subject, issuer, validity and names of one certificate, as plain data."""
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "not_before": cert.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "not_after": cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "names": san_names(cert),  # what TLS clients match; they ignore the CN
        "sha256": cert.fingerprint(hashes.SHA256()).hex().upper(),
    }


def tls_check(host, port, address, root_certs, timeout=5.0, cert=None, key=None, now=None):
    """Handshake trusting only root_certs; verify chain and hostname; diagnose what fails."""
    ctx = verified_context(root_certs, cert, key)
    try:
        tls, err, chain_der = open_verified(address, port, host, ctx, timeout)
    except OSError as e:
        return Step("tls", FAIL, f"could not reconnect to {address}:{port}: {classify_connect_error(e)}",
                    data={"verified": False})
    version = tls.version() if tls else None
    if tls:
        tls.close()
    chain = []
    for der in chain_der:
        try:
            chain.append(x509.load_der_x509_certificate(der))
        except ValueError:
            pass
    now = now or datetime.datetime.now(datetime.timezone.utc)
    data = {"verified": err is None, "version": version, "chain": [describe_cert(c) for c in chain],
            "verify_code": 0 if err is None else getattr(err, "verify_code", None)}
    details = chain_lines(chain)
    notes = _notes(chain, root_certs, now, _client_cert(cert))
    if err is None:
        return Step("tls", OK, f"Verification: OK ({version}, {len(chain)} certificates served)",
                    details=details + notes, data=data)
    summary, fixes = diagnose_tls(err, host, chain, root_certs, now)
    data["verify_message"] = getattr(err, "verify_message", None) or getattr(err, "reason", None) or str(err)
    data["problem"] = summary.split(":")[0]
    return Step("tls", FAIL, summary, details=details + notes, fixes=fixes, data=data)


def chain_lines(chain):
    """The served chain in the style of `openssl s_client -showcerts`."""
    lines = ["certificate chain served:"] if chain else ["the gateway's certificates could not be read"]
    for i, c in enumerate(chain):
        d = describe_cert(c)
        lines.append(f" {i} s: {d['subject']}")
        lines.append(f"   i: {d['issuer']}")
        lines.append(f"   v: {d['not_before']} to {d['not_after']}")
        if d["names"]:
            lines.append(f"   names: {', '.join(d['names'])}")
    return lines


_TEST_ONLY = re.compile(r"test[-_ ]only", re.I)  # certGen.sh marks its certificates so


def _client_cert(path):
    # The device's own certificate, for its expiry; an unreadable one fails the handshake, said there.
    try:
        return x509.load_pem_x509_certificate(open(path, "rb").read()) if path else None
    except (OSError, ValueError):
        return None


# What to do before each kind of certificate ends: a fleet is re-trusted before it is locked out.
_RENEW = {"served": "renew the gateway's certificates before then",
          "trusted root": "send the devices the new root first (docs/updates.md, 'edgekit/trust:1')",
          "device": "issue the device a new certificate before then"}


def _notes(chain, roots, now, client=None):
    notes = []
    if any(_TEST_ONLY.search(c.subject.rfc4514_string()) for c in list(chain) + list(roots)):
        notes.append("note: IoT Edge test-only certificates (certGen.sh); fine for development, not production")
    # Warned as far ahead as `gateway serve` warns (certGen's certificates live 30 days); one line
    # per kind, for the one that ends first: the chain stops working then.
    served = {c.fingerprint(hashes.SHA256()) for c in chain}
    kinds = [("served", list(chain)),
             ("trusted root", [r for r in roots if r.fingerprint(hashes.SHA256()) not in served]),
             ("device", [client] if client is not None else [])]
    for what, certs in kinds:
        if not certs:
            continue
        c = min(certs, key=lambda c: c.not_valid_after_utc)
        left = c.not_valid_after_utc - now
        if datetime.timedelta(0) < left < expiry.WARN_BEFORE:
            notes.append(f"note: {what} certificate '{display_name(c.subject)}' expires in {left.days} days"
                         f" ({c.not_valid_after_utc:%Y-%m-%d}): {_RENEW[what]}")
    return notes


def diagnose_tls(err, host, chain, roots, now):
    """(summary, fixes) for a failed handshake, from the verify code and the served chain."""
    code = getattr(err, "verify_code", None)
    if code in _NAME_MISMATCH:
        names = san_names(chain[0]) if chain else []
        shown = ", ".join(names) if names else f"none (no subjectAltName; CN is '{display_name(chain[0].subject)}')" \
            if chain else "unknown"
        fixes = [f"the name used is '{host}'; the certificate covers: {shown}"]
        fixes += _name_hint(host, names)
        return f"name mismatch: the certificate is not for '{host}'", fixes
    if code in _EXPIRED:
        bad = [c for c in chain if c.not_valid_after_utc < now]
        who = ", ".join(f"'{display_name(c.subject)}' (ended {c.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)" for c in bad)
        return (f"expired: {who or 'a certificate in the chain'}",
                ["renew the edge CA certificate (certGen.sh create_edge_device_ca_certificate, or"
                 " `edgekit certs demo` for a demo PKI), then `sudo iotedge config apply` so edgeHub serves it",
                 f"if the dates look right, check this machine's clock: it says {now:%Y-%m-%d %H:%M} UTC"])
    if code in _NOT_YET_VALID:
        bad = [c for c in chain if c.not_valid_before_utc > now]
        who = ", ".join(f"'{display_name(c.subject)}' (from {c.not_valid_before_utc:%Y-%m-%d %H:%M} UTC)" for c in bad)
        return (f"not yet valid: {who or 'a certificate in the chain'}",
                [f"check this machine's clock: it says {now:%Y-%m-%d %H:%M} UTC (timedatectl, NTP);"
                 " a board must sync its clock before TLS",
                 "or the gateway's clock was ahead when it issued the certificate"])
    if code in _UNKNOWN_ISSUER:
        return "unknown issuer: the chain does not lead to ROOT", _issuer_hints(chain, roots)
    text = str(getattr(err, "reason", None) or err)
    if "WRONG_VERSION_NUMBER" in text or "record layer failure" in text.lower():
        return "not TLS: the port answered, but not with TLS", [
            "MQTT over TLS is 8883; 1883 is plain MQTT, which edgeHub does not offer"]
    if isinstance(err, (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError)):
        return "connection closed during the handshake", [
            "the port may not speak TLS (plain MQTT is 1883; edgeHub's MQTT over TLS is 8883)",
            "or the gateway requires a client certificate: pass --cert and --key with an x509=true"
            " connection string"]
    if isinstance(err, (socket.timeout, TimeoutError)):
        return "handshake timed out", ["the port accepts TCP but no TLS answer came: is it edgeHub?"]
    if "CERTIFICATE_REQUIRED" in text.upper() or "HANDSHAKE_FAILURE" in text.upper():
        return f"handshake refused: {text}", [
            "the gateway may require a client certificate: pass --cert and --key with an x509=true connection string"]
    if code is not None:
        return f"verification failed: {getattr(err, 'verify_message', text)}", []
    return f"handshake failed: {text}", []


def _name_hint(host, names):
    hints = []
    for n in names:
        if "." in n and n.split(".")[0].lower() == host.lower():
            hints.append(f"'{host}' is the short name of '{n}': set GatewayHostName={n}"
                         " (it must equal the hostname in the gateway's config.toml)")
        elif "." in host and host.split(".")[0].lower() == n.lower():
            hints.append(f"the gateway's certificate is for the short name '{n}': set hostname = \"{host}\""
                         " in /etc/aziot/config.toml and `sudo iotedge config apply`, or use GatewayHostName={n}")
    if not hints:
        hints.append("GatewayHostName must be exactly the hostname in the gateway's /etc/aziot/config.toml"
                     " (edgeHub's certificate is issued for it)")
    return hints


def _issuer_hints(chain, roots):
    root_names = {r.subject for r in roots}
    root_desc = ", ".join(f"'{display_name(r.subject)}'" for r in roots)
    hints = [f"ROOT '{display_name(r.subject)}' is not a root (it is issued by '{display_name(r.issuer)}'): pass the"
             " self-signed root CA, e.g. certs/azure-iot-test-only.root.ca.cert.pem"
             for r in roots if r.issuer != r.subject]
    if not chain:
        return hints + [f"the served chain could not be read; check that ROOT ({root_desc}) is the gateway's root CA"]
    top = chain[-1]
    if top.issuer in root_names:
        return hints + [f"the chain ends at '{display_name(top.subject)}', issued by a certificate named like ROOT,"
                " but ROOT's key did not sign it: ROOT is from another (older or regenerated) PKI;"
                " copy the root the gateway's certificates were made with"]
    if top.issuer == top.subject:
        return hints + [f"the gateway's chain ends at root '{display_name(top.subject)}', but ROOT is {root_desc}:"
                " wrong root; use the gateway's root CA certificate"]
    return hints + [f"the gateway sent {len(chain)} certificate(s) ending at '{display_name(top.subject)}',"
            f" issued by '{display_name(top.issuer)}', which is neither served nor ROOT ({root_desc})",
            "either the edge CA is not configured as a full chain (point edge_ca cert in config.toml at"
            " iot-edge-device-ca-<name>-full-chain.cert.pem, then `sudo iotedge config apply`),"
            " or ROOT is the wrong root"]


# --- step 4: which IoT Edge release the TLS looks like -----------------------------------


def profile_check(host, port, address, root_certs, timeout=5.0, cert=None, key=None):
    """Probe the TLS versions and suites the gateway accepts and name the release (check_profile.py)."""
    found = check_profile.probe(address, port, host, lambda: verified_context(root_certs, cert, key), timeout)
    summary, details, data = check_profile.describe(found)
    return Step("profile", INFO, summary, details=details, data=data)


# --- step 5: MQTT -------------------------------------------------------------------------


def _mqtt_str(s):
    raw = s.encode("utf-8")
    return len(raw).to_bytes(2, "big") + raw


def connect_packet(client_id, username=None, password=None, keepalive=60, clean_session=False):
    """An MQTT 3.1.1 CONNECT packet as edgeHub expects it."""
    flags = (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    flags |= 0x02 if clean_session else 0
    body = b"\x00\x04MQTT\x04" + bytes([flags]) + keepalive.to_bytes(2, "big") + _mqtt_str(client_id)
    if username is not None:
        body += _mqtt_str(username)
    if password is not None:
        body += _mqtt_str(password)
    n, length = len(body), b""
    while True:
        byte, n = n & 0x7F, n >> 7
        length += bytes([byte | (0x80 if n else 0)])
        if not n:
            return b"\x10" + length + body


def read_connack(sock):
    """Read a CONNACK -> return code; raise ConnectionError if the peer closes first or sends else."""
    buf = b""
    while len(buf) < 4:
        chunk = sock.recv(4 - len(buf))
        if not chunk:
            raise ConnectionError("the gateway closed the connection without a CONNACK")
        buf += chunk
    if buf[0] != 0x20 or buf[1] != 2:
        raise ConnectionError(f"expected a CONNACK, got packet type {buf[0] >> 4}")
    return buf[3]


def connack_fixes(code, ident, hub):
    """Likely causes of a refused CONNACK, most frequent first."""
    if code == 5:
        causes = ["the device identity has no parent: make the gateway its parent"
                  " (portal: device > Parent, or `az iot hub device-identity parent set`)"]
        if ident.auth == "sas":
            causes += ["wrong key: the key was regenerated; copy the connection string again",
                       f"token audience not the hub: HostName must be the IoT hub ({hub}),"
                       " not the gateway",
                       f"clock skew: the token expires at {ident.token_expiry} (Unix seconds) by this"
                       " machine's clock; check the clock here and on the gateway"]
        else:
            causes += ["the certificate is not registered: self-signed needs its thumbprint on the"
                       " identity; CA-signed needs the CA uploaded and verified in the hub"]
        return causes
    if code == 4:
        return [f"bad user name or password format: the user name must be '{ident.username}'"
                " (<hub>/<device>/?api-version=...) and the password a SharedAccessSignature token",
                "the connection string's HostName must be the hub name (<hub>.azure-devices.net)"]
    if code == 2:
        return ["identifier rejected: the client id must be the device id (or <device>/<module>)"]
    if code == 3:
        return ["edgeHub is up but cannot serve this identity now: look at `sudo iotedge logs edgeHub`"
                " (offline with no cached identity, or upstream unreachable)"]
    if code == 1:
        return ["the server does not speak MQTT 3.1.1: is this port edgeHub?"]
    return [f"unexpected CONNACK code {code}"]


def mqtt_login(host, port, address, root_certs, ident, hub, timeout=5.0):
    """Send a real CONNECT over a verified TLS connection and interpret the CONNACK."""
    ctx = verified_context(root_certs, ident.cert, ident.key)
    data = {"client_id": ident.client_id, "username": ident.username, "auth": ident.auth,
            "password": redact_token(ident.password)}
    try:
        tls, err, _ = open_verified(address, port, host, ctx, timeout)
    except OSError as e:
        return Step("mqtt", FAIL, f"could not reconnect: {classify_connect_error(e)}", data=data)
    if tls is None:
        return Step("mqtt", FAIL, f"TLS failed before login: {err}", data=data,
                    fixes=["the gateway refused the client certificate" if ident.cert else "see the TLS step"])
    try:
        with tls:
            tls.sendall(connect_packet(ident.client_id, ident.username, ident.password))
            code = read_connack(tls)
            if code == 0:
                tls.sendall(b"\xe0\x00")  # DISCONNECT, so the session ends cleanly
    except ssl.SSLError as e:
        why = getattr(e, "reason", None) or str(e)
        fixes = [f"the gateway refused the client certificate ({why}): register its thumbprint or its CA"] \
            if ident.cert else []
        return Step("mqtt", FAIL, f"TLS alert during login: {why}", fixes=fixes, data=data)
    except (ConnectionError, OSError) as e:
        state = "no CONNACK within %gs" % timeout if isinstance(e, (socket.timeout, TimeoutError)) else str(e)
        fixes = ["edgeHub closes connections it cannot authenticate before CONNACK when the user name"
                 " is malformed; check the connection string"]
        if ident.cert:
            fixes.insert(0, "the gateway may have refused the client certificate")
        return Step("mqtt", FAIL, state, fixes=fixes, data=data)
    data["connack"] = code
    text = f"CONNACK {code}: {_CONNACK.get(code, 'unknown code')}"
    details = [f"client id {ident.client_id}, user name {ident.username}, {ident.auth} auth"]
    if code == 0:
        return Step("mqtt", OK, text, details=details, data=data)
    return Step("mqtt", FAIL, text, details=details, fixes=connack_fixes(code, ident, hub), data=data)


def redact_token(token):
    """A SAS token with its signature hidden, safe to print; None stays None."""
    if not token:
        return None
    at = token.find("sig=")
    if at < 0:
        return "<hidden>"
    end = token.find("&", at)
    return token[:at + 4] + "<hidden>" + (token[end:] if end > 0 else "")


# --- the whole check ----------------------------------------------------------------------


def run_check(target=None, ca=None, connection_string=None, cert=None, key=None, timeout=5.0):
    """Run every step against target (`HOST[:PORT]`, default: the connection string's gateway).

    Raises CheckError on bad input before any network traffic; returns a Report otherwise.
    """
    if not ca:
        raise CheckError("--ca ROOT is required: the gateway's root CA certificate")
    if timeout <= 0:
        raise CheckError("--timeout must be a positive number of seconds")
    roots = load_root(ca)
    cs = ident = None
    if connection_string:
        cs, ident = identity_from(connection_string, cert, key)
    elif cert or key:
        raise CheckError("--cert/--key need --connection-string with x509=true:"
                         " the MQTT user name names the hub and the device")
    # Fail on an unusable --cert/--key now, before any traffic.
    verified_context(roots, ident.cert if ident else None, ident.key if ident else None)
    if target is None and cs is None:
        raise CheckError("give HOST[:PORT], or --connection-string with GatewayHostName")
    host, port = split_host_port(target if target is not None else cs.connect_host)
    report = Report(host, port)
    if cs is not None and cs.connect_host.lower() != host.lower():
        report.steps.append(Step("config", FAIL, f"HOST '{host}' is not the connection string's"
                                 f" GatewayHostName '{cs.connect_host}'",
                                 fixes=[f"the device connects to '{cs.connect_host}': check that name,"
                                        " or correct GatewayHostName"],
                                 data={"host": host, "gateway_host_name": cs.connect_host}))
    dns = resolve(host, timeout)
    report.steps.append(dns)
    if dns.status != OK:
        return _skip_rest(report, ["tcp", "tls"] + (["mqtt"] if ident else []), "DNS failed")
    main, other = tcp_probe(host, port, dns.data["addresses"], timeout)
    report.steps += [main, other]
    if main.status != OK:
        return _skip_rest(report, ["tls"] + (["mqtt"] if ident else []), "TCP failed")
    address = next(t["address"] for t in main.data["tried"] if t["state"] == "open")
    cert, key = (ident.cert, ident.key) if ident else (None, None)
    tls = _name_root(tls_check(host, port, address, roots, timeout, cert, key), ca)
    report.steps.append(tls)
    if tls.status != OK:
        # Credentials go only over a verified connection, and so do the profile's probes.
        return _skip_rest(report, ["mqtt"] if ident else [], "TLS was not verified; credentials are not sent")
    report.steps.append(profile_check(host, port, address, roots, timeout, cert, key))
    if ident is None:
        return report
    report.steps.append(mqtt_login(host, port, address, roots, ident, cs.host_name, timeout))
    return report


def _name_root(step, ca):
    """The TLS step's text with its placeholder ROOT replaced by the --ca file as given: the user
    sees which of their files the chain does not lead to (with --device, the bundle's)."""
    name = os.fspath(ca)
    step.summary = re.sub(r"\bROOT\b", lambda _: name, step.summary)
    step.fixes = [re.sub(r"\bROOT\b", lambda _: name, f) for f in step.fixes]
    return step


def _skip_rest(report, names, why):
    for n in names:
        report.steps.append(Step(n, SKIP, f"not run: {why}"))
    return report


_LABEL = {OK: "ok", FAIL: "FAIL", SKIP: "skip", INFO: "info"}
_TITLE = {"config": "Config", "dns": "DNS", "tcp": "TCP", "ports": "Ports", "tls": "TLS", "profile": "TLS profile",
          "mqtt": "MQTT"}


def render_text(report):
    """The report for people: one line per step, then its details and what to fix."""
    # Summaries and details quote what the gateway sent (certificate names, above all): a CR,
    # ESC or BEL there must not rewrite the report, so each piece is printed escaped.
    lines = [f"Checking {printable(report.host)}:{report.port}"]
    tcp_ok = any(s.name == "tcp" and s.status == OK for s in report.steps)
    for s in report.steps:
        if s.name == "ports" and tcp_ok:
            # AMQP and WebSocket ports matter to MQTT devices only as a clue when 8883 fails;
            # --json keeps the step for scripts.
            continue
        lines.append(f"[{_LABEL[s.status]:>4}] {_TITLE.get(s.name, s.name)}: {printable(s.summary)}")
        lines += ["       " + printable(d) for d in s.details]
        lines += ["       fix: " + printable(f) if not f.startswith(" ") else "       " + printable(f) for f in s.fixes]
    lines.append("All checks passed." if report.ok else "Some checks failed; see 'fix:' lines above.")
    return "\n".join(lines)


def render_json(report):
    """The same report as JSON for scripts."""
    return json.dumps(report.as_dict(), indent=2)
