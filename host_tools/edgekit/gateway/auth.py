"""edgeHub's CONNECT checks and topic authorization, as pure functions the protocol head calls.

The order and the answers follow edgeHub (Azure/iotedge edge-hub/core/src, docs/gateway.md
cites the lines): the username is parsed first and a malformed one is an exception there, which
the MQTT adapter answers with CONNACK 3 (server unavailable). A password means SAS, else a client
certificate means X.509; every credential that is wrong, expired, unknown or out of scope is
"unauthenticated", CONNACK 5. SAS tokens are checked here with CPython's hmac and urllib, not
with the firmware's azure_edge.sas, so a signing bug in the firmware fails its tests.
"""
import base64
import binascii
import datetime
import hashlib
import hmac
from urllib.parse import quote, unquote, unquote_plus

from cryptography import x509

from edgekit.certs.names import common_names
from edgekit.certs.pem import is_ca, thumbprints
from edgekit.gateway import clientchain, registry, topics

ACCEPTED = 0
SERVER_UNAVAILABLE = 3
BAD_USERNAME_OR_PASSWORD = 4
NOT_AUTHORIZED = 5
MALFORMED_USERNAME = SERVER_UNAVAILABLE  # MqttAdapter answers an identity-provider exception with 3
_TOKEN_PREFIX = "SharedAccessSignature"


class Verdict:
    """The outcome of a CONNECT: code (CONNACK return code), identity when accepted, reason text.

    model_id and device_client_type come from the username (None / "" when it has none);
    warning is a line to log for an accepted CONNECT that IoT Hub itself would refuse.
    """

    def __init__(self, code, reason, identity=None, method=None, model_id=None, device_client_type="",
                 warning=None):
        self.code = code
        self.reason = reason
        self.identity = identity
        self.method = method
        self.model_id = model_id
        self.device_client_type = device_client_type
        self.warning = warning

    @property
    def ok(self):
        """True when the CONNECT is accepted."""
        return self.code == ACCEPTED

    def __repr__(self):
        return f"<Verdict {self.code} {self.reason}>"


def _refuse(code, reason):
    return Verdict(code, reason)


class ClientInfo:
    """What MqttUsernameParser reads from a username."""

    def __init__(self, hub, device_id, module_id, query):
        self.hub = hub
        self.device_id = device_id
        self.module_id = module_id or None
        self.api_version = query.get("api-version")
        self.device_client_type = query.get("DeviceClientType", "")
        self.model_id = query.get("model-id", "").strip() or None

    @property
    def client_id(self):
        """`dev` or `dev/mod`: the identity the username names."""
        return self.device_id + "/" + self.module_id if self.module_id else self.device_id


def _query(text):
    # First occurrence of a key wins; values are percent-decoded ('+' stays '+': Uri.UnescapeDataString).
    out = {}
    for pair in text.split("&"):
        key, _, value = pair.partition("=")
        out.setdefault(key, unquote(value))
    return out


def parse_username(username):
    """ClientInfo of `<hub>/<device>[/<module>]/?<props>` or `.../<props>`; ValueError saying what is wrong."""
    expected = f"'<hub>/<device>[/<module>]/?api-version={topics.API_VERSION}'"
    if not username or not username.strip():
        raise ValueError(f"no username; edgeHub expects {expected}")
    segments = username.split("/")
    last = segments[-1]
    if last.startswith("?"):
        query = last[1:].strip()
    elif "api-version=" in last:
        query = last.strip()
    else:
        raise ValueError(f"username has no api-version (edgeHub refuses it); expected {expected}")
    if len(segments) not in (3, 4):
        raise ValueError(f"username has {len(segments)} '/'-separated parts, not 3 or 4; expected {expected}")
    info = ClientInfo(segments[0], segments[1].strip(), segments[2].strip() if len(segments) == 4 else None,
                      _query(query))
    if not (info.api_version or "").strip():
        raise ValueError(f"username has no or an empty api-version; expected {expected}")
    if not info.device_id:
        raise ValueError(f"username names no device id; expected {expected}")
    return info


def parse_token(password):
    """The fields of a `SharedAccessSignature sr=...&sig=...&se=...` token; ValueError when malformed.

    As the IoT SDK's SharedAccessSignature.Parse: field names case-insensitive, sr kept as sent
    (it is what was signed), the other values URL-decoded ('+' is a space), a repeated field refused.
    """
    parts = password.split()
    if len(parts) != 2 or parts[0] != _TOKEN_PREFIX:
        raise ValueError("the password is not a 'SharedAccessSignature sr=...&sig=...&se=...' token")
    fields = {}
    for field in parts[1].split("&"):
        if not field:
            continue
        name, _, value = field.partition("=")
        name = name.lower()
        if name in fields:
            raise ValueError(f"the SAS token has {name}= twice")
        fields[name] = value.split("=")[0] if name == "sr" else unquote_plus(value.split("=")[0])
    for name in ("sr", "sig", "se"):
        if not fields.get(name):
            raise ValueError(f"the SAS token has no {name}=")
    if not (fields["se"].isascii() and fields["se"].isdigit()):  # isdigit() alone takes '²'; int() not
        raise ValueError("the SAS token's se= is not Unix seconds")
    return fields


def sign(encoded_audience, key_b64, expiry):
    """The base64 HMAC-SHA256 of `<sr as sent>\\n<se>` with a base64 key (IoT Hub's SAS signature)."""
    key = base64.b64decode(key_b64)
    digest = hmac.new(key, f"{encoded_audience}\n{expiry}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def _audience(encoded):
    # DeviceScopeTokenAuthenticator.ParseAudience: host/devices/<d>[/modules/<m>].
    parts = unquote_plus(encoded.strip()).split("/")
    if len(parts) == 3:
        return parts[0], parts[2], None
    if len(parts) == 5:
        return parts[0], parts[2], parts[4]
    raise ValueError(f"token audience (sr) '{unquote_plus(encoded)[:120]}' is not "
                     "'<hub>/devices/<device>[/modules/<module>]'")


def check_connect(doc, client_id, username, password, peer_der, now, gateway_host=None, peer_chain=None,
                  trust_bundle=None):
    """Decide a CONNECT as edgeHub would; return a Verdict.

    doc is a loaded registry (registry.Watcher adds its "trust_bundle"), password the SAS token
    text or None, peer_der the certificate the TLS handshake proved (DER) or None, peer_chain what
    the client presented (DER list, leaf first; default [peer_der]), now Unix seconds, gateway_host the
    gateway's hostname (a SAS audience may name it), trust_bundle CA certificates (cryptography)
    a CA-signed device must chain to (default doc["trust_bundle"]).
    """
    if not client_id:
        return _refuse(2, "empty client id; use '<device>' or '<device>/<module>'")
    try:
        info = parse_username(username)
    except ValueError as e:
        return _refuse(MALFORMED_USERNAME, str(e))
    if client_id != info.client_id:
        return _refuse(NOT_AUTHORIZED, f"client id '{client_id[:60]}' is not the identity the username "
                                       f"names ('{info.client_id[:60]}'); they must be the same")
    if isinstance(password, (bytes, bytearray)):
        password = bytes(password).decode("utf-8", "replace")
    chain = list(peer_chain) if peer_chain else ([peer_der] if peer_der else [])
    if peer_der and chain[0] != peer_der:
        # The leaf is the certificate TLS proved, wherever it sits in what was presented.
        chain = [peer_der] + [c for c in chain if c != peer_der]
    ident = registry.lookup(doc, info.device_id, info.module_id)
    if ident is None:
        return _refuse(NOT_AUTHORIZED, f"'{client_id}' is not registered with this gateway; "
                                       "add it with 'edgekit gateway device add'")
    if not ident.parent:
        return _refuse(NOT_AUTHORIZED, f"'{client_id}' does not have this gateway as its parent; "
                                       "set the parent device in IoT Hub (here: add it without --no-parent)")
    if password:
        verdict = _check_sas(doc, ident, password, now, gateway_host)
    elif chain:
        bundle = trust_bundle if trust_bundle is not None else doc.get("trust_bundle", [])
        verdict = _check_x509(ident, chain, now, bundle)
    else:
        return _refuse(NOT_AUTHORIZED, f"'{client_id}' sent neither a SAS token (password) nor a client "
                                       "certificate")
    if verdict.ok:
        verdict.model_id, verdict.device_client_type = info.model_id, info.device_client_type
        if info.hub != ident.hub:
            # edgeHub does not look at this segment; IoT Hub would refuse the connection.
            verdict.warning = (f"{client_id}: username names hub '{info.hub[:80]}', not its IoT Hub "
                               f"'{ident.hub}' (edgeHub accepts it, IoT Hub would not)")
    return verdict


def _check_sas(doc, ident, password, now, gateway_host):
    cid = ident.client_id
    if ident.auth != registry.AUTH_SAS:
        return _refuse(NOT_AUTHORIZED, f"'{cid}' is registered for X.509 but sent a SAS token")
    try:
        fields = parse_token(password)
        host, device_id, module_id = _audience(fields["sr"])
    except ValueError as e:
        return _refuse(NOT_AUTHORIZED, str(e))
    expected = f"{ident.hub}/devices/{ident.device_id}" + (f"/modules/{ident.module_id}" if ident.module_id else "")
    signer = ident
    if module_id is None and ident.module_id:
        # allowDeviceAuthForModule: a module may sign with its device's key.
        signer = registry.lookup(doc, ident.device_id)
        if device_id != ident.device_id or signer is None:
            return _refuse(NOT_AUTHORIZED, f"token audience (sr) names '{device_id}', not '{cid}' or its "
                                           f"device; expected '{expected}'")
    elif (device_id, module_id) != (ident.device_id, ident.module_id):
        named = device_id + (f"/{module_id}" if module_id else "")
        return _refuse(NOT_AUTHORIZED, f"token audience (sr) names '{named}', not '{cid}'; "
                                       f"expected '{expected}' (ids are case-sensitive)")
    if host not in (ident.hub, gateway_host):
        return _refuse(NOT_AUTHORIZED, f"token audience (sr) names host '{host[:80]}', neither the IoT Hub "
                                       f"'{ident.hub}' nor the gateway '{gateway_host}'")
    keys = [k for k in (signer.key, signer.secondary_key) if k]
    try:
        good = [sign(fields["sr"], k, fields["se"]) for k in keys]
    except (binascii.Error, ValueError):
        return _refuse(NOT_AUTHORIZED, f"'{cid}' has an unreadable key in the registry; add it again")
    if not any(hmac.compare_digest(g.encode(), fields["sig"].encode()) for g in good):
        return _refuse(NOT_AUTHORIZED, f"SAS signature matches neither key of '{signer.client_id}' "
                                       f"(signed text: '{fields['sr'][:120]}\\n{fields['se']}', the "
                                       f"audience quoted as quote(uri, safe='') gives "
                                       f"'{quote(expected, safe='')}'); copy the connection string again")
    expiry = int(fields["se"])
    if expiry <= now:
        return _refuse(NOT_AUTHORIZED, f"SAS token expired {int(now - expiry)} s ago (se={expiry}); "
                                       "check the device clock (NTP) and renew tokens before expiry")
    return Verdict(ACCEPTED, "SAS token", ident, "sas")


def _valid_at(cert, now):
    at = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
    return cert.not_valid_before_utc <= at <= cert.not_valid_after_utc


def _check_x509(ident, chain, now, trust_bundle):
    cid = ident.client_id
    if ident.module_id:
        return _refuse(NOT_AUTHORIZED, f"'{cid}' is a module: modules behind a gateway cannot use X.509, "
                                       "authenticate with its symmetric key")
    if ident.auth == registry.AUTH_SAS:
        return _refuse(NOT_AUTHORIZED, f"'{cid}' uses a symmetric key but sent no SAS token as password "
                                       "(only a client certificate)")
    try:
        leaf = x509.load_der_x509_certificate(chain[0])
    except ValueError:
        return _refuse(NOT_AUTHORIZED, f"'{cid}' presented a certificate that does not parse")
    if not _valid_at(leaf, now):
        return _refuse(NOT_AUTHORIZED, f"client certificate of '{cid}' is not valid now (valid "
                                       f"{leaf.not_valid_before_utc:%Y-%m-%d} to {leaf.not_valid_after_utc:%Y-%m-%d});"
                                       " check the device clock or issue a new certificate")
    if ident.auth == registry.AUTH_THUMBPRINT:
        seen = thumbprints(leaf)
        if not set(seen) & {t for t in (ident.thumbprint, ident.secondary_thumbprint) if t}:
            return _refuse(NOT_AUTHORIZED, f"client certificate thumbprint {seen[0]} (SHA-1) is neither "
                                           f"thumbprint registered for '{cid}'")
        return Verdict(ACCEPTED, "X.509 thumbprint", ident, "x509_thumbprint")
    # CA-signed: the chain must reach the trust bundle; thumbprint certificates are never issuers.
    cns = common_names(leaf.subject)
    if cns != [ident.device_id]:
        return _refuse(NOT_AUTHORIZED, f"client certificate CN {cns[0] if cns else '(none)'!r} is not "
                                       f"the device id '{ident.device_id}'")
    if is_ca(leaf):
        return _refuse(NOT_AUTHORIZED, f"'{cid}' presented a CA certificate (basicConstraints CA:TRUE) "
                                       "as its device certificate; issue a device (end-entity) certificate")
    if not trust_bundle:
        return _refuse(NOT_AUTHORIZED, f"'{cid}' is CA-signed but the gateway has no trust bundle")
    if len(chain) > clientchain.MAX_PRESENTED:  # before parsing them: the count bounds the work
        return _refuse(NOT_AUTHORIZED, f"'{cid}' presented {len(chain)} certificates, more than the "
                                       f"{clientchain.MAX_PRESENTED} this gateway reads (leaf, up to 8 "
                                       "intermediates and the root)")
    try:
        certs = [leaf] + [x509.load_der_x509_certificate(der) for der in chain[1:]]
    except ValueError:
        return _refuse(NOT_AUTHORIZED, f"'{cid}' presented a certificate that does not parse")
    try:
        clientchain.verify(leaf, certs, trust_bundle, datetime.datetime.fromtimestamp(now, datetime.timezone.utc))
    except clientchain.ChainError as e:
        hint = (" (the device sent its leaf only: present the intermediate CA too, as with a real "
                "gateway that trusts the root only)" if len(certs) == 1 and leaf.issuer != leaf.subject else "")
        return _refuse(NOT_AUTHORIZED, f"client certificate chain of '{cid}' is not trusted: {e}{hint}")
    return Verdict(ACCEPTED, "X.509 CA-signed", ident, "x509_ca")


def may_publish(ident, topic):
    """True when this identity may publish to topic: its own telemetry or the $iothub requests."""
    if topic.startswith("$iothub/"):
        return (topic.startswith("$iothub/twin/GET/") or topic.startswith("$iothub/twin/PATCH/properties/reported/")
                or topic.startswith("$iothub/methods/res/"))
    own = topics.telemetry(ident.device_id, ident.module_id)
    return topic.startswith(own) or topic == own[:-1]


def allowed_filters(ident):
    """The subscription filters edgeHub allows this identity (C2D is for devices only)."""
    out = [topics.METHODS_FILTER, topics.TWIN_RES_FILTER, topics.DESIRED_FILTER]
    if not ident.module_id:
        out.append(topics.c2d_filter(ident.device_id))
    return out


def may_subscribe(ident, topic_filter):
    """True when this identity may subscribe to topic_filter."""
    return topic_filter in allowed_filters(ident)
