# Percent-encoding as IoT Hub uses it in SAS tokens and topic property bags.
# Our own because MicroPython has no urllib.

_HEX = b"0123456789ABCDEF"
_UNRESERVED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~"


def quote(text, safe=b""):
    """Percent-encode the UTF-8 bytes of text, keeping unreserved and `safe` bytes."""
    # Bytes in, bytes out: MicroPython interns every one-character str (chr(), iterating a
    # str) for good, and a full qstr pool doubles: about 7 KB of heap on a 64-bit build.
    raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    out = bytearray()
    for b in raw:
        if b in _UNRESERVED or b in safe:
            out.append(b)
        else:
            out.append(37)  # '%'
            out.append(_HEX[b >> 4])
            out.append(_HEX[b & 15])
    return out.decode()


def unquote(text):
    """Decode %XX escapes to text; raise ValueError on a bad escape or invalid UTF-8."""
    if "%" not in text:
        return text
    raw = text.encode("utf-8")
    out = bytearray()
    i = 0
    n = len(raw)
    while i < n:
        b = raw[i]
        if b == 37:  # '%'
            hi = _hexval(raw[i + 1]) if i + 1 < n else -1
            lo = _hexval(raw[i + 2]) if i + 2 < n else -1
            if hi < 0 or lo < 0:
                # Shown as ASCII: MicroPython's decode() has no "replace" and would raise.
                raise ValueError("bad percent-escape %r" % "".join(
                    chr(c) if 32 <= c < 127 else "?" for c in raw[i:i + 3]))
            out.append(hi << 4 | lo)
            i += 3
        else:
            out.append(b)
            i += 1
    try:
        return out.decode("utf-8")
    except UnicodeError:
        raise ValueError("percent-escapes do not decode as UTF-8")


def _hexval(b):
    if 48 <= b <= 57:
        return b - 48
    b |= 32  # fold to lower case
    if 97 <= b <= 102:
        return b - 87
    return -1
