# Connection strings as the Azure IoT SDKs read them, with errors a user can act on.
# Messages name the offending part but never echo a key.
import binascii

# The keys the Azure IoT device SDKs know.
_KNOWN = ("HostName", "DeviceId", "ModuleId", "SharedAccessKey", "SharedAccessKeyName",
          "SharedAccessSignature", "GatewayHostName", "x509")
_SECRET = ("SharedAccessKey", "SharedAccessSignature")
# Characters IoT Hub allows in device and module ids.
_ID_CHARS = b"-.%_*?!(),:=@$'"
_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# What CPython's str.strip() removes. MicroPython's strip() takes only ASCII whitespace (and
# strip(chars) works on bytes), so a no-break space pasted from a web page passed on the host
# but stopped the board: both strip exactly these, compared as UTF-8 bytes (indexing a str
# on MicroPython interns each character for good).
_WS = b'\x20\x09\x0a\x0d\x0b\x0c\x1c\x1d\x1e\x1f'  # as single bytes
_WS_MB = (  # as UTF-8 sequences
    b'\xc2\x85', b'\xc2\xa0', b'\xe1\x9a\x80', b'\xe2\x80\x80', b'\xe2\x80\x81',
    b'\xe2\x80\x82', b'\xe2\x80\x83', b'\xe2\x80\x84', b'\xe2\x80\x85', b'\xe2\x80\x86',
    b'\xe2\x80\x87', b'\xe2\x80\x88', b'\xe2\x80\x89', b'\xe2\x80\x8a', b'\xe2\x80\xa8',
    b'\xe2\x80\xa9', b'\xe2\x80\xaf', b'\xe2\x81\x9f', b'\xe3\x80\x80',
)


class ConnectionString:
    """The parts of a device or module connection string."""

    def __init__(self, parts):
        self.host_name = parts["HostName"]
        self.device_id = parts["DeviceId"]
        self.module_id = parts.get("ModuleId")
        self.shared_access_key = parts.get("SharedAccessKey")
        self.shared_access_key_name = parts.get("SharedAccessKeyName")
        self.gateway_host_name = parts.get("GatewayHostName")
        self.x509 = parts.get("x509", "").lower() == "true"

    @property
    def connect_host(self):
        """The name to connect to and check the certificate against."""
        return self.gateway_host_name or self.host_name

    def __repr__(self):
        # Never show the key, even in a traceback.
        return "<ConnectionString %s/%s%s via %s, %s>" % (
            self.host_name, self.device_id, "/" + self.module_id if self.module_id else "",
            self.connect_host, "x509" if self.x509 else "sas")


def parse(text):
    """Parse a connection string; raise ValueError naming what is wrong."""
    if not isinstance(text, str):
        raise ValueError("connection string must be text")
    text = _strip(text)
    for q in ("\"", "'"):
        if len(text) >= 2 and text.startswith(q) and text.endswith(q):
            text = _strip(text[1:-1])  # pasted with its shell quotes
            break
    if not text:
        raise ValueError("connection string is empty")
    parts = {}
    for i, item in enumerate(text.split(";")):
        item = _strip(item)
        if not item:
            continue
        eq = item.find("=")
        if eq <= 0:
            raise ValueError("part %d of the connection string is not key=value (%s)"
                             % (i + 1, _shown(item)))
        key = _strip(item[:eq])
        value = _strip(item[eq + 1:])
        if key not in _KNOWN:
            raise ValueError("unknown key '%s' in connection string%s" % (_clip(key), _hint(key)))
        if key in parts:
            raise ValueError("key '%s' appears twice in connection string" % key)
        if not value:
            raise ValueError("'%s' in connection string has no value" % key)
        parts[key] = value
    for key in ("HostName", "DeviceId"):
        if key not in parts:
            raise ValueError("connection string has no %s=...; copy it whole from the portal or"
                             " 'az iot hub device-identity connection-string show'" % key)
    _check_id("DeviceId", parts["DeviceId"])
    if "ModuleId" in parts:
        _check_id("ModuleId", parts["ModuleId"])
    _check_host("HostName", parts["HostName"])
    if "GatewayHostName" in parts:
        _check_host("GatewayHostName", parts["GatewayHostName"])
    x509 = parts.get("x509")
    if x509 is not None and x509.lower() not in ("true", "false"):
        raise ValueError("x509 must be 'true' or 'false'")
    x509 = x509 is not None and x509.lower() == "true"
    key = parts.get("SharedAccessKey")
    if "SharedAccessSignature" in parts:
        raise ValueError("SharedAccessSignature tokens expire and cannot be renewed on the device;"
                         " use the SharedAccessKey connection string instead")
    if key is not None and x509:
        raise ValueError("connection string has both SharedAccessKey and x509=true; keep one")
    if key is None and not x509:
        raise ValueError("connection string has neither SharedAccessKey nor x509=true")
    if "SharedAccessKeyName" in parts and key is None:
        raise ValueError("SharedAccessKeyName given without SharedAccessKey")
    if key is not None:
        _check_b64(key)
    return ConnectionString(parts)


def _check_id(name, value):
    if len(value) > 128:
        raise ValueError("%s is longer than 128 characters" % name)
    raw = value.encode()  # bytes, not one-character strs, which MicroPython interns (url.py)
    for i in range(len(raw)):
        b = raw[i]
        if not (48 <= b <= 57 or 65 <= b <= 90 or 97 <= b <= 122 or b in _ID_CHARS):
            c = raw[i:].decode()[:1]  # a non-ASCII byte here starts its character
            raise ValueError("%s contains %r, which IoT Hub does not allow in ids" % (name, c))


def _check_host(name, value):
    if " " in value or "/" in value or ":" in value:
        raise ValueError("%s '%s' is not a host name (no scheme, port or path)"
                         % (name, _clip(value)))


def _check_b64(key):
    raw = key.encode()
    body = raw.rstrip(b"=")
    pad = len(raw) - len(body)
    if not body or pad > 2 or len(raw) % 4 or any(b not in _B64 for b in body):
        raise ValueError("SharedAccessKey is not valid base64; copy the primary key again")
    try:
        binascii.a2b_base64(raw)
    except Exception:
        raise ValueError("SharedAccessKey is not valid base64; copy the primary key again")


def _hint(key):
    low = key.lower()
    for k in _KNOWN:
        if k.lower() == low:
            return " (did you mean '%s'? keys are case-sensitive)" % k
    return ""


def _clip(s):
    # Key names are short words; anything else may be a key pasted without its name: its start only.
    if len(s) <= 24 and not [c for c in s if c not in _LETTERS]:
        return s
    return s[:4] + "..."


_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _shown(item):
    # A part without '=' might be a pasted key: show only its start.
    return "'" + item[:4] + "...'" if len(item) > 8 else "'" + item + "'"


def _strip(s):
    raw = s.encode()
    i, j = 0, len(raw)
    n = 1
    while n and i < j:
        n = _ws_len(raw[i:j], True)
        i += n
    n = 1
    while n and i < j:
        n = _ws_len(raw[i:j], False)
        j -= n
    return raw[i:j].decode()


def _ws_len(raw, front):
    # Byte length of the whitespace character at the front (or back) of raw, or 0.
    if (raw[0] if front else raw[-1]) in _WS:
        return 1
    for w in _WS_MB:
        if (raw[:len(w)] if front else raw[-len(w):]) == w:
            return len(w)
    return 0
