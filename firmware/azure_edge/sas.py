# Shared access signatures for IoT Hub, as the Azure SDKs build them.
# HMAC is ours because MicroPython has no hmac module; hashlib.sha256 is everywhere.
import binascii
import hashlib

from azure_edge.url import quote

_BLOCK = 64  # SHA-256 block size in bytes

try:
    _sha256 = hashlib.sha256
except AttributeError:
    # CircuitPython's hashlib has only new(): "sha256" from 10.1 on; 9.x hashes sha1 only,
    # so there the pure-Python adafruit_hashlib must be on the board.
    def _sha256(data=b""):
        try:
            return hashlib.new("sha256", data)
        except ValueError:
            import adafruit_hashlib
            return adafruit_hashlib.sha256(data)


def hmac_sha256(key, msg):
    """Return HMAC-SHA256(key, msg) as 32 bytes (RFC 2104)."""
    if len(key) > _BLOCK:
        key = _sha256(key).digest()
    key = key + bytes(_BLOCK - len(key))
    inner = _sha256(bytes(b ^ 0x36 for b in key))
    inner.update(msg)
    outer = _sha256(bytes(b ^ 0x5C for b in key))
    outer.update(inner.digest())
    return outer.digest()


def resource_uri(host_name, device_id, module_id=None):
    """The token audience: `<hub>/devices/<device>[/modules/<module>]` (not yet quoted)."""
    uri = host_name + "/devices/" + device_id
    if module_id:
        uri += "/modules/" + module_id
    return uri


def signing_string(resource_uri, expiry):
    """What the key signs: the quoted audience, a newline and the expiry."""
    return quote(resource_uri) + "\n" + str(int(expiry))


def generate(resource_uri, key_b64, expiry, key_name=None):
    """Return the whole `SharedAccessSignature sr=...&sig=...&se=...` string.

    `key_b64` is the base64 key from the connection string, `expiry` Unix seconds.
    """
    expiry = int(expiry)
    sr = quote(resource_uri)
    key = binascii.a2b_base64(key_b64)
    digest = hmac_sha256(key, signing_string(resource_uri, expiry).encode())
    sig = binascii.b2a_base64(digest).decode().strip()
    token = "SharedAccessSignature sr=" + sr + "&sig=" + quote(sig) + "&se=" + str(expiry)
    if key_name:
        token += "&skn=" + quote(key_name)
    return token


def token_for(ident, expiry):
    """The token a device or module identity (connection string parts) connects with."""
    return generate(resource_uri(ident.host_name, ident.device_id, ident.module_id),
                    ident.shared_access_key, expiry, ident.shared_access_key_name)


def expiry_of(token):
    """Return the `se` field of a SAS token as an int, or raise ValueError."""
    at = token.find("&se=")
    if at < 0:
        raise ValueError("SAS token has no expiry (se=)")
    end = token.find("&", at + 4)
    return int(token[at + 4:end if end > 0 else len(token)])
