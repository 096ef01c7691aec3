# Test stand-in for azure_edge/adu_verify.py (the verification helper's module, merged apart):
# the same API. It takes the signature "good-signature" as valid and checks files for real
# (size and base64 SHA-256), so the agent's own paths are what the tests exercise.
import binascii
import hashlib
import json


class Refused(Exception):
    """Refused(code, extended, msg): in args only (MicroPython's exceptions take no attributes)."""


def check(manifest_str, signature_jws, roots, disabled=()):
    if signature_jws != "good-signature":
        raise Refused(0, 0x7E0000AA, "signature refused (test stand-in)")
    return json.loads(manifest_str)


class Hasher:
    def __init__(self, entry):
        self.entry = entry
        self.h = hashlib.sha256()
        self.n = 0

    def update(self, chunk):
        self.h.update(chunk)
        self.n += len(chunk)

    def check(self):
        if self.n != self.entry["sizeInBytes"]:
            raise Refused(0, 0x7E0000AB, "size %d, manifest %d" % (self.n, self.entry["sizeInBytes"]))
        got = binascii.b2a_base64(self.h.digest()).decode().strip()
        if got != self.entry["hashes"]["sha256"]:
            raise Refused(0, 0x7E0000AC, "hash mismatch")
