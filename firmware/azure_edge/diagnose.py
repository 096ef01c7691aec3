# Turn connection failures into one line a user can act on. Never includes secrets.
import time

from azure_edge import clock

_HINTS = (
    # (text found in the error, what to say); MicroPython/mbedTLS and CPython wordings.
    ("does not match with the expected CN", "name"),
    ("Hostname mismatch", "name"),
    ("doesn't match", "name"),
    ("not correctly signed by the trusted CA", "issuer"),
    ("unable to get local issuer", "issuer"),
    ("self-signed certificate in certificate chain", "issuer"),
    ("validity has expired", "expired"),
    ("certificate has expired", "expired"),
    ("validity starts in the future", "future"),
    ("not yet valid", "future"),
    ("addrinfo", "dns"),
    ("Name or service not known", "dns"),
    ("nodename nor servname", "dns"),
)


# The broker's TLS alerts about the certificate the device presented (CPython's wording).
# With TLS 1.3 the client's handshake ends before the broker has checked its certificate, so
# the refusal shows as the link closing before CONNACK.
_CLIENT_CERT = ("alert bad certificate", "alert unknown ca", "alert certificate required",
                "alert certificate unknown", "alert unsupported certificate", "FATAL_ALERT",
                "EOF occurred in violation of protocol", "closed by peer",
                "Unexpected error while waiting for messages")


def explain(err, host, port, x509=False):
    """One line saying what went wrong connecting to the gateway and what to do.

    With x509 (the device presents a client certificate), a handshake the gateway breaks
    off is put down to that certificate."""
    code = getattr(err, "code", None)
    if code == 5:
        return ("gateway refused the device: not authorized (CONNACK 5). Set the gateway as the"
                " device's parent in IoT Hub, check the key, and check the clock (device time "
                + utc_now() + ")")
    if code == 4:
        return ("gateway refused the username or password (CONNACK 4): HostName in the connection"
                " string must be the IoT Hub name, not the gateway's")
    if code is not None and code != 0:
        return "gateway refused the connection (CONNACK %s)" % code
    if isinstance(err, KeyError) and err.args and isinstance(err.args[0], int):
        # A return code MiniMQTT's table lacks (an MQTT 5 broker's reason codes): a refusal.
        return "gateway refused the connection (CONNACK %d)" % err.args[0]
    if isinstance(err, (AssertionError, KeyError, IndexError, UnicodeError)):
        return ("cannot connect to %s:%d: protocol error: malformed input from the gateway (%s)"
                % (host, port, type(err).__name__))
    text = message(err)
    errno_ = err.args[0] if isinstance(err, OSError) and err.args else None
    cause = getattr(err, "__cause__", None)  # CPython keeps what MiniMQTT wrapped
    if x509 and (errno_ in (32, 104, -30592) or any(a in text or a in str(cause)
                                                     for a in _CLIENT_CERT)):
        # mbedTLS sees the broker hang up while it sends its certificate (EPIPE, a reset or
        # a fatal alert); CPython reads the alert itself.
        return ("TLS: the gateway refused the device's client certificate: check that the"
                " certificate chain (leaf and intermediates, as 'edgekit bundle --cert"
                " <full-chain.pem>' keeps them) reaches the gateway's trust bundle")
    for needle, kind in _HINTS:
        if needle in text:
            return _say(kind, host, port)
    if errno_ in (111, 61):  # ECONNREFUSED on Linux/lwIP and macOS
        return ("%s:%d refused the connection: is edgeHub running, and is port %d open on the"
                " gateway's firewall?" % (host, port, port))
    if errno_ in (110, 116, 60) or "timed out" in text:
        return ("no answer from %s:%d (timed out): check the gateway is reachable from this"
                " network and port %d is open" % (host, port, port))
    if errno_ in (113, 101, 118):
        return "no route to %s:%d: check the network and the gateway's address" % (host, port)
    return "cannot connect to %s:%d: %s" % (host, port, text.strip()[:120] or type(err).__name__)


def message(err):
    """An exception's text; MiniMQTT's (which carry a code) without their (text, code) tuple."""
    if hasattr(err, "code") and err.args:
        return str(err.args[0])
    return str(err)


def _say(kind, host, port):
    if kind == "name":
        return ("TLS: the gateway's certificate does not cover '%s'. GatewayHostName must equal"
                " the hostname in the gateway's config.toml exactly (FQDN vs short name)" % host)
    if kind == "issuer":
        return ("TLS: the gateway's certificate does not chain to the CA in the bundle. Bundle"
                " the gateway's root CA, and configure the edge CA as a full chain on the gateway")
    if kind == "expired":
        return ("TLS: a certificate in the gateway's chain has expired, or this device's clock is"
                " wrong (device time " + utc_now() + ")")
    if kind == "future":
        return ("TLS: the gateway's certificate is not valid yet: this device's clock is wrong"
                " (device time " + utc_now() + "); sync time first")
    return ("cannot resolve '%s': add a DNS record or a hosts entry for the gateway, or use its"
            " address in GatewayHostName if its certificate covers it" % host)


def utc_now():
    """The device's idea of now, for messages about the clock."""
    # CircuitPython has no gmtime; its localtime is UTC (it keeps no time zone).
    t = (time.gmtime if hasattr(time, "gmtime") else time.localtime)(
        clock.unix_time() - clock._offset)
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % t[:6]
