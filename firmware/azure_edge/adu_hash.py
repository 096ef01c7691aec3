# The files of an ADU deployment checked as they stream: size and SHA-256 against the update
# manifest (Hasher, file_ok), and the refusal every ADU check raises (Refused). Split from
# azure_edge/adu_verify.py, which imports it, so that a download does not hold the signature
# check's code in the heap (the deployment's peak): adu_verify.Hasher is this Hasher.
import binascii
import hashlib

try:
    _sha256 = hashlib.sha256
except AttributeError:
    # CircuitPython: hashlib.new("sha256") from 10.1 on; 9.x needs adafruit_hashlib (see sas.py).
    def _sha256(data=b""):
        try:
            return hashlib.new("sha256", data)
        except ValueError:
            import adafruit_hashlib
            return adafruit_hashlib.sha256(data)


FAILURE = 0  # ADUC_Result_Failure: the resultCode of every refusal

FILE_HASH_EMPTY = 0x00100001  # ADUC_ERC_VALIDATION_FILE_HASH_IS_EMPTY
FILE_HASH = 0x00100003  # ADUC_ERC_VALIDATION_FILE_HASH_INVALID_HASH (a wrong size too: no own code)


class Refused(Exception):
    """A manifest, signature or file ADU's agent would refuse: `code` (resultCode) and `extended`
    (extendedResultCode, signed 32-bit) go to lastInstallResult, `msg` is the one console line."""

    def __init__(self, code, extended, msg):
        super().__init__(msg)
        self.code = code
        self.extended = extended
        self.msg = msg


def _no(extended, msg):
    raise Refused(FAILURE, extended, "ADU refused: %s (0x%08X)" % (msg, extended & 0xFFFFFFFF))


def _b64(text, url, extended, what):
    # Decode base64 (url: the JWS alphabet, unpadded) as strictly as az_base64_url_decode and
    # az_base64_decode do: binascii skips characters outside the alphabet, which shows as a result
    # shorter than the text's length promises, so that is refused.
    if not isinstance(text, str) or not text:
        _no(extended, what + " is missing")
    if url:
        if "+" in text or "/" in text or "=" in text:
            _no(extended, what + " is not base64url")
        text = text.replace("-", "+").replace("_", "/")
        if len(text) % 4:
            text += "=" * (4 - len(text) % 4)
    raw = None
    if not len(text) % 4:
        try:
            raw = binascii.a2b_base64(text)
        except ValueError:
            pass
    pad = (text[-1:] == "=") + (text[-2:] == "==")
    if raw is None or len(raw) != len(text) // 4 * 3 - pad:
        _no(extended, what + " is not " + ("base64url" if url else "base64"))
    return raw


class Hasher:
    """Checks one file of the manifest as it streams: update(chunk) per chunk, finish() at the
    end. It refuses as soon as more bytes come than sizeInBytes, so the writer can stop at once.
    To resume a download, feed it the part already on flash first (file_ok does that)."""

    def __init__(self, entry):
        size = entry.get("sizeInBytes") if isinstance(entry, dict) else None
        want = (entry.get("hashes") or {}).get("sha256") if size is not None else None
        if not isinstance(size, int) or size < 0 or not want:
            _no(FILE_HASH_EMPTY, "file entry has no sizeInBytes or sha256")
        self.name = entry.get("fileName") or "file"
        self.size = size
        self.want = _b64(want, False, FILE_HASH_EMPTY, self.name + " sha256")
        self.got = 0
        self._h = _sha256()

    def update(self, chunk):
        self.got += len(chunk)
        if self.got > self.size:
            _no(FILE_HASH, "%s is longer than its %d bytes" % (self.name, self.size))
        self._h.update(chunk)

    def finish(self):
        if self.got != self.size:
            _no(FILE_HASH, "%s has %d bytes, not %d" % (self.name, self.got, self.size))
        if self._h.digest() != self.want:
            _no(FILE_HASH, "%s does not match its SHA-256" % self.name)


def file_ok(entry, path, buf=None):
    """Check a whole file on flash against its manifest entry in small reads; True or Refused."""
    h = Hasher(entry)
    buf = buf or bytearray(512)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    h.finish()
    return True
