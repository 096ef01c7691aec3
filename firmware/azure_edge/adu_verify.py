# PLACEHOLDER until the verification helper's adu_verify.py is merged (issue 24): the same API,
# and it refuses everything. Never accepts a manifest or a file.
#   check(manifest_str, signature_jws, roots, disabled=()) -> manifest dict, or raises Refused
#   Hasher(file_entry): update(chunk), then check() raises Refused unless size and SHA-256 match


class Refused(Exception):
    """An update refused: ADU result code, extended result code, one console line."""
    # Raised as Refused(code, extended, msg): in args only, as MicroPython's exceptions take no
    # attributes of their own.


_NOT_YET = (0, 0x7E0000FF, "update verification not built into this firmware yet")


def check(manifest_str, signature_jws, roots, disabled=()):
    raise Refused(*_NOT_YET)


class Hasher:
    def __init__(self, entry):
        self.entry = entry

    def update(self, chunk):
        pass

    def check(self):
        raise Refused(*_NOT_YET)
