# What the client does when something goes wrong: a failed connect, a reading that keeps
# closing the link, an inbound message too big to load. Rare by nature, so azure_edge.client
# loads this module for the moment it is needed and unloads it again: its code and messages
# do not sit in the heap of a device that is doing fine.
import random

from azure_edge import run_and_unload
from azure_edge.client import OOM_RESET
from adafruit_ticks import ticks_add, ticks_ms


def connect_failed(c, e):
    """Back off (longer after an auth refusal), say why once, and ask for a reset after
    OOM_RESET connects in a row failed for lack of heap."""
    c._failures += 1
    auth = getattr(e, "code", None) in (4, 5)
    cap = c.auth_backoff_cap if auth else c.backoff_cap
    base = 15 if auth else 1
    delay = min(cap, base * (1 << min(c._failures - 1, 12)))
    delay = delay * (0.75 + random.getrandbits(8) / 512)  # jitter: 0.75x to 1.25x
    c._retry_at = ticks_add(ticks_ms(), int(delay * 1000))
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


def jammed(c):
    """The head reading was in flight when the link closed. A gateway that refuses it every
    time (edgeHub closes the link for a packet it will not take) would hold back everything
    behind it for good: after set_aside_after links in a row, remove it."""
    box = c.outbox
    head = c._gone + getattr(box, "dropped", 0)
    c._jam_count = c._jam_count + 1 if head == c._jam_head else 1
    c._jam_head = head
    if c._jam_count < c.set_aside_after or not len(box):
        return
    box.pop(1)
    c._gone += 1
    c._jam_count = 0
    c.set_aside += 1
    c.log("set aside the oldest queued reading: sending it closed the link %d times in a"
          " row (%d set aside since boot)" % (c.set_aside_after, c.set_aside))


def oversize(c, topic, limit):
    """Say which message was dropped for being over `limit` bytes; a method gets 413."""
    from azure_edge import topics
    size, c.mqtt.skipped = c.mqtt.skipped, 0
    c.log("dropped a %d-byte message on %s: over the device's %d-byte limit"
          % (size, topic[:64] or "(topic too long)", limit))
    if topic.startswith(topics.METHOD_PREFIX):
        rid = topics.parse_method(topic)[1]
        c._reply(topics.method_response(413, rid), '{"error": "payload over %d bytes"}' % limit)
