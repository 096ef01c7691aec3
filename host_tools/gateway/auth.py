"""edgeHub's CONNECT checks and topic authorization, as pure functions the broker plugins call.

CONNACK codes: 0 accepted; 4 (bad user name or password) when the username or token is
malformed; 5 (not authorized) when it is well formed but wrong: unknown identity, no parent
relationship, bad signature, wrong audience, expired token, certificate not accepted.
The gateway itself answers 3 (server unavailable) when its client cap is reached.
"""
import hmac

from azure_edge import sas, topics
from azure_edge.url import unquote
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from edgekit.certs.names import common_names
from edgekit.gateway import registry

ACCEPTED = 0
SERVER_UNAVAILABLE = 3
BAD_USERNAME_OR_PASSWORD = 4
NOT_AUTHORIZED = 5
_TOKEN_PREFIX = "SharedAccessSignature "


class Verdict:
    """The outcome of a CONNECT: code (CONNACK return code), identity when accepted, reason text."""

    def __init__(self, code, reason, identity=None, method=None):
        self.code = code
        self.reason = reason
        self.identity = identity
        self.method = method

    @property
    def ok(self):
        """True when the CONNECT is accepted."""
        return self.code == ACCEPTED

    def __repr__(self):
        return f"<Verdict {self.code} {self.reason}>"


def _refuse(code, reason):
    return Verdict(code, reason)


def parse_username(username, client_id):
    """(hub, query dict) of `<hub>/<client id>/?api-version=...`; ValueError saying what is wrong."""
    expected = f"'<hub>/{client_id}/?api-version={topics.API_VERSION}'"
    if not username:
        raise ValueError(f"no username; edgeHub expects {expected}")
    at = username.find("/?")
    if at < 0 or "api-version=" not in username[at:]:
        raise ValueError(f"username has no '/?api-version=' (edgeHub refuses it); expected {expected}")
    path = username[:at]
    if not path.endswith("/" + client_id) or len(path) == len(client_id) + 1:
        raise ValueError(f"username '{path}/?...' does not name the client id '{client_id}'; "
                         f"expected {expected}")
    query = topics.decode_properties(username[at + 2:])
    if not query.get("api-version"):
        raise ValueError(f"username has an empty api-version; expected {expected}")
    return path[:-len(client_id) - 1], query


def parse_token(password):
    """The fields (sr, sig, se, skn) of a SharedAccessSignature token; ValueError when malformed."""
    if not password.startswith(_TOKEN_PREFIX):
        raise ValueError("the password is not a 'SharedAccessSignature sr=...&sig=...&se=...' token")
    fields = topics.decode_properties(password[len(_TOKEN_PREFIX):])
    for name in ("sr", "sig", "se"):
        if not fields.get(name):
            raise ValueError(f"the SAS token has no {name}=")
    if not (fields["se"].isascii() and fields["se"].isdigit()):  # isdigit() alone takes '²'; int() not
        raise ValueError("the SAS token's se= is not Unix seconds")
    return fields


def check_connect(doc, client_id, username, password, peer_der, now, gateway_host=None):
    """Decide a CONNECT as edgeHub would; return a Verdict.

    doc is a loaded registry, password the SAS token text or None, peer_der the client
    certificate the TLS layer verified (DER) or None, now Unix seconds.
    """
    if not client_id:
        return _refuse(2, "empty client id; use '<device>' or '<device>/<module>'")
    parts = client_id.split("/")
    if len(parts) > 2 or not all(parts):
        return _refuse(2, f"client id '{client_id[:60]}' is not '<device>' or '<device>/<module>'")
    device_id, module_id = parts[0], parts[1] if len(parts) == 2 else None
    try:
        hub, _ = parse_username(username, client_id)
    except ValueError as e:
        return _refuse(BAD_USERNAME_OR_PASSWORD, str(e))
    ident = registry.lookup(doc, device_id, module_id)
    if ident is None:
        return _refuse(NOT_AUTHORIZED, f"'{client_id}' is not registered with this gateway; "
                                       "add it with 'edgekit gateway device add'")
    if hub.lower() != ident.hub.lower():
        hint = (" (that is the gateway's name: the username names the IoT Hub, GatewayHostName is"
                " only for TLS)" if gateway_host and hub.lower() == gateway_host.lower() else "")
        return _refuse(NOT_AUTHORIZED, f"username names hub '{hub}' but '{client_id}' belongs to "
                                       f"'{ident.hub}'{hint}")
    if not ident.parent:
        return _refuse(NOT_AUTHORIZED, f"'{client_id}' does not have this gateway as its parent; "
                                       "set the parent device in IoT Hub (here: add it without --no-parent)")
    if isinstance(password, (bytes, bytearray)):
        password = bytes(password).decode("utf-8", "replace")
    if ident.auth == registry.AUTH_SAS:
        if module_id and peer_der and not password:
            return _refuse(NOT_AUTHORIZED, f"'{client_id}' is a module: modules behind a gateway "
                                           "cannot use X.509, authenticate with its symmetric key")
        return _check_sas(ident, password, now)
    return _check_x509(ident, peer_der)


def _check_sas(ident, password, now):
    cid = ident.client_id
    if not password:
        return _refuse(NOT_AUTHORIZED, f"'{cid}' uses a symmetric key but sent no SAS token as password")
    try:
        fields = parse_token(password)
        audience = unquote(fields["sr"])
    except ValueError as e:
        return _refuse(BAD_USERNAME_OR_PASSWORD, str(e))
    expected = sas.resource_uri(ident.hub, ident.device_id, ident.module_id)
    if audience.lower() != expected.lower():
        return _refuse(NOT_AUTHORIZED, f"token audience (sr) is '{audience[:120]}' but must be "
                                       f"'{expected}' (the hub name, not the gateway's)")
    expiry = int(fields["se"])
    if expiry <= now:
        return _refuse(NOT_AUTHORIZED, f"SAS token expired {int(now - expiry)} s ago (se={expiry}); "
                                       "check the device clock (NTP) and renew tokens before expiry")
    good = sas.generate(audience, ident.key, expiry)
    good_sig = topics.decode_properties(good[len(_TOKEN_PREFIX):])["sig"]
    if not hmac.compare_digest(good_sig.encode(), fields["sig"].encode()):
        return _refuse(NOT_AUTHORIZED, f"SAS signature does not match '{cid}''s key; "
                                       "copy the connection string again (the key may have changed)")
    return Verdict(ACCEPTED, "SAS token", ident, "sas")


def _check_x509(ident, peer_der):
    cid = ident.client_id
    if peer_der is None:
        return _refuse(NOT_AUTHORIZED, f"'{cid}' uses X.509 but presented no client certificate "
                                       "(or the TLS layer did not trust it)")
    cert = x509.load_der_x509_certificate(peer_der)
    if ident.auth == registry.AUTH_THUMBPRINT:
        seen = (cert.fingerprint(hashes.SHA1()).hex().upper(),
                cert.fingerprint(hashes.SHA256()).hex().upper())
        if ident.thumbprint not in seen:
            return _refuse(NOT_AUTHORIZED, f"client certificate thumbprint {seen[0]} (SHA-1) is not "
                                           f"the one registered for '{cid}'")
        return Verdict(ACCEPTED, "X.509 thumbprint", ident, "x509_thumbprint")
    # CA-signed: TLS already verified the chain against the PKI root; a self-signed leaf
    # passes TLS only as a thumbprint anchor, so it does not count as CA-signed here.
    if cert.issuer == cert.subject:
        return _refuse(NOT_AUTHORIZED, f"'{cid}' is registered as CA-signed but presented a "
                                       "self-signed certificate")
    cns = common_names(cert.subject)
    if ident.device_id not in cns:
        return _refuse(NOT_AUTHORIZED, f"client certificate CN {cns[0] if cns else '(none)'!r} is not "
                                       f"the device id '{ident.device_id}'")
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
