# What the client does when something goes wrong: a failed connect, a lost link, a reading
# that keeps closing the link, an inbound message too big to load. Rare by nature, so azure_edge.client
# loads this module for the moment it is needed and unloads it again: its code and messages
# do not sit in the heap of a device that is doing fine.
import random
import time

from azure_edge import mqtt, run_and_unload
from azure_edge.client import _LINK_ERRORS, OOM_RESET, _short
from adafruit_ticks import ticks_add, ticks_diff, ticks_ms


def connect_failed(c, e):
    """Back off (longer after an auth refusal), say why once, and ask for a reset after
    OOM_RESET connects in a row failed for lack of heap."""
    auth = getattr(e, "code", None) in (4, 5)
    delay = _backoff(c, 15 if auth else 1, c.auth_backoff_cap if auth else c.backoff_cap)
    c._oom = c._oom + 1 if isinstance(e, MemoryError) else 0
    try:
        msg = run_and_unload("diagnose", "explain", e, c.cs.connect_host, c.port, c.cs.x509)
    except MemoryError:
        msg = "out of memory while connecting"
    if msg != c.last_error:
        c.log(msg)
    c.last_error = msg
    if c._oom >= OOM_RESET:
        # A heap too fragmented to connect does not heal by waiting; the outbox is on flash.
        c.log("out of memory %d times in a row while connecting: resetting" % c._oom)
        c.reboot_requested = True
    c.log("retrying in %.1f s" % delay)


def lost(c, err):
    """The link closed. One that lived under a minute with no reading acknowledged is a
    failed connect: a gateway that takes the link and drops it at once (its disk full, a
    reading it refuses) is backed off from like one that refuses it, not dialled 90 times a
    minute. After a good link the first reconnect is at once."""
    if ticks_diff(ticks_ms(), c._retry_at) > 60000:  # _retry_at: when the link came up
        c._failures = 0
    delay = _backoff(c, 1, c.backoff_cap) if c._failures else 0
    if not delay:
        c._failures = 1
        c._retry_at = ticks_ms()
    c.log("link to gateway lost (%s); reconnecting%s" % (_short(err), delay and " in %.1f s" % delay or ""))


def _backoff(c, base, cap):
    # Exponential, with jitter (0.75x to 1.25x) so that devices a gateway restart dropped
    # together do not all come back at once.
    c._failures += 1
    delay = min(cap, base * (1 << min(c._failures - 1, 12)))
    delay = delay * (0.75 + random.getrandbits(8) / 512)
    c._retry_at = ticks_add(ticks_ms(), int(delay * 1000))
    return delay


def jammed(c):
    """The head reading was in flight when the link closed: one strike against it. That alone
    does not blame it (a gateway whose disk is full closes the link on every reading): after
    set_aside_after strikes in a row, probe() asks the gateway about another reading."""
    head = c._gone + getattr(c.outbox, "dropped", 0)
    c._jam_count = c._jam_count + 1 if head == c._jam_head else 1
    c._jam_head = head


def probe(c):
    """Send the reading behind the head alone, then the head alone. The gateway taking the
    first and closing the link right after the head: the head is moved aside (kept on flash,
    retried later). Taking both, it has recovered: nobody is blamed. Closing the link for the
    first, the gateway is in trouble: nobody is blamed, and the link backs off."""
    box = c.outbox
    c._jam_count = 0  # the strikes are spent either way
    drops = getattr(box, "dropped", 0)
    it = box.records()
    try:
        head = next(it)
        rec = next(it)
    finally:
        it.close()
    try:
        _alone(c, rec)
    except _LINK_ERRORS:
        c.log("the gateway closed the link for other readings too: it is in trouble, not"
              " the oldest queued reading")
        raise
    try:
        _alone(c, head)
    except _LINK_ERRORS:
        if getattr(box, "dropped", 0) == drops:  # else the head is gone already
            _set_aside(c, box, head)
        raise
    if getattr(box, "dropped", 0) == drops:
        box.pop(2)  # both acknowledged
        c._gone += 2


def _alone(c, rec):
    cut = rec.find(b"\n")
    pid = mqtt.next_pid(c.mqtt)
    c._publish(c._prefix, rec[:cut], rec[cut + 1:], pid)
    c._puback(pid)
    c.sent += 1


def _set_aside(c, box, head):
    from azure_edge import aside
    c.set_aside = aside.hold(box, head)
    box.pop(2)  # after the append: a cut between leaves a duplicate, never a loss
    c._gone += 2
    c._aside_at = time.time() + c.aside_retry
    c.log("set aside the oldest queued reading: the gateway closed the link for it %d times"
          " in a row while it took others (%d held aside, retried in %d s)"
          % (c.set_aside_after, c.set_aside, c.aside_retry))
    # The link is gone: the report after the reconnect carries the new set_aside.


def retry(c):
    """Move the readings held aside back to the outbox's tail, to try them again."""
    from azure_edge import aside
    n = aside.restore(c.outbox)
    c.set_aside = 0
    c.log("retrying %d reading(s) held aside" % n)
    _report(c)


def _report(c):
    # The reported set_aside says how many are held aside now.
    if c.info is not None:
        c.report(run_and_unload("twin", "device_report", c))


def refused(c, filters):
    """Say which subscriptions the gateway refused (SUBACK 0x80) and what that costs."""
    from azure_edge import topics
    lose = {topics.METHODS_FILTER: "direct methods", topics.TWIN_RES_FILTER: "the twin",
            topics.DESIRED_FILTER: "desired property patches"}
    c.log("the gateway refused the subscription to %s (SUBACK 0x80): no %s on this link"
          % (", ".join(filters), ", ".join([lose.get(f, "cloud-to-device messages") for f in filters])))


def oversize(c, topic, limit):
    """Say which message was dropped for being over `limit` bytes; a method gets 413."""
    from azure_edge import topics
    size, c.mqtt.skipped = c.mqtt.skipped, 0
    c.log("dropped a %d-byte message on %s: over the device's %d-byte limit"
          % (size, topic[:64] or "(topic too long)", limit))
    if topic.startswith(topics.METHOD_PREFIX):
        rid = topics.parse_method(topic)[1]
        c._reply(topics.method_response(413, rid), '{"error": "payload over %d bytes"}' % limit)
