"""When a set of certificates stops working: the first to expire decides for the whole chain.

Used where a tool starts something that will serve a chain for a while (`gateway serve`): an
expired chain is refused at once, one about to expire is named, instead of devices failing
their handshakes later with nothing said where the chain was loaded.
"""
import datetime

from cryptography.hazmat.primitives import hashes

from edgekit.certs.names import display_name

WARN_BEFORE = datetime.timedelta(days=30)


class Ending:
    """The certificate of a set that expires first, and where it came from."""

    def __init__(self, cert, source, others):
        self.cert = cert
        self.source = source    # the file it was read from, for the message
        self.others = others    # how many more of the set end at the same moment or before now

    @property
    def name(self):
        return display_name(self.cert.subject)

    @property
    def not_after(self):
        return self.cert.not_valid_after_utc

    def left(self, now):
        return self.not_after - now


def first_to_expire(sources, now=None):
    """The Ending of the certificates in `sources` ({path: [certificates]}) that expires first; None for none.

    The same certificate under several paths (a full-chain file repeats the root) counts once.
    `others` counts the rest that are expired too (or, when none is, that end at the same moment).
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    seen, certs = set(), []
    for path, chain in sources.items():
        for c in chain:
            fp = c.fingerprint(hashes.SHA256())
            if fp not in seen:
                seen.add(fp)
                certs.append((c, path))
    if not certs:
        return None
    certs.sort(key=lambda cp: cp[0].not_valid_after_utc)
    first, path = certs[0]
    if first.not_valid_after_utc < now:
        others = sum(1 for c, _ in certs[1:] if c.not_valid_after_utc < now)
    else:
        others = sum(1 for c, _ in certs[1:] if c.not_valid_after_utc == first.not_valid_after_utc)
    return Ending(first, path, others)
