"""How many connections may wait unauthenticated: overall and per source address.

A connection costs a file descriptor from the TCP accept on, and one that never finishes its
TLS handshake (30 s) or never sends CONNECT (60 s) holds it for free. Without a bound, about a
thousand idle TCP connections used up serve's 1024 open files and a registered device could no
longer connect. So connections are counted from the accept until their CONNECT is accepted
(or they close): past either bound a new one is closed at once, and authenticated devices,
which are bounded by max_clients, never count.

edgeHub has no such count (DotNetty accepts what the OS gives it, and .NET's own file limit is
the bound); the figures are ours and follow from the file limit the process really has:
- overall, at most MAX_WAITING, and never more than the open-file limit (RLIMIT_NOFILE) leaves
  after max_clients authenticated devices and FILES_KEPT of serve's own files (log, store,
  sessions, control and web listeners);
- per address, MAX_WAITING_PER_ADDRESS: devices behind one NAT share an address, and after a
  gateway restart all of edgeHub's 100 clients (MaxConnectedClients) may reconnect at once.
"""
import logging
import resource
import time

log = logging.getLogger(__name__)
MAX_WAITING = 512
MAX_WAITING_PER_ADDRESS = 128
FILES_KEPT = 64
REPORT_EVERY = 10.0  # seconds between two log lines about refused connections


def limits(max_clients, total=MAX_WAITING, per_address=MAX_WAITING_PER_ADDRESS, open_files=None):
    """(overall, per address) bounds for this process: the given ones, lowered to fit its file limit."""
    if open_files is None:
        open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if open_files != resource.RLIM_INFINITY:
        total = min(total, open_files - max_clients - FILES_KEPT)
    total = max(1, total)
    return total, max(1, min(per_address, total))


class Admission:
    """Counts the connections not yet authenticated; admit() says whether one more may wait."""

    def __init__(self, total, per_address, clock=time.monotonic):
        self.total = total
        self.per_address = per_address
        self.waiting = 0
        self._by_address = {}
        self._clock = clock
        self._refused = 0
        self._reported = None

    def admit(self, address):
        """True (and counted) when a connection from address may wait; else False, logged now and then."""
        here = self._by_address.get(address, 0)
        if self.waiting >= self.total or here >= self.per_address:
            self._refuse(address, here)
            return False
        self.waiting += 1
        self._by_address[address] = here + 1
        return True

    def release(self, address):
        """The connection authenticated or closed: it waits no more."""
        here = self._by_address.get(address, 0)
        if here <= 0:
            return
        self.waiting -= 1
        if here == 1:
            del self._by_address[address]
        else:
            self._by_address[address] = here - 1

    def _refuse(self, address, here):
        # One line now and then, not one per connection: a flood must not flood the log too.
        self._refused += 1
        now = self._clock()
        if self._reported is not None and now - self._reported < REPORT_EVERY:
            return
        which = (f"{here} from {address} (at most {self.per_address} per address)" if here >= self.per_address
                 else f"{self.waiting} in all (at most {self.total})")
        log.warning("closed %d new connection(s): %s are waiting for TLS or CONNECT", self._refused, which)
        self._refused, self._reported = 0, now
