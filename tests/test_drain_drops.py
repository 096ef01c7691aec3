"""A drain under drops (issue 25), against the real device: the device API under the real
MicroPython and CPython, over verified TLS to a hub of our own (tests/raw_hub.py).

A small outbox fills while the gateway is away and drops its oldest readings; the gateway comes
back slow to acknowledge, and readings keep coming during the drain from both producers: a
periodic task between passes, and a C2D callback inside a pass, while the drain waits for its
PUBACKs. Drops then hit readings in flight, readings acknowledged but not yet popped, and
readings never sent. Every reading handed to send_telemetry must be accounted for: received by
the hub, or among the readings the outbox dropped (and so in `dropped`, which the twin reports).
A reading never sent must never be popped as acknowledged.
"""
import time

import pytest

from device_helpers import DEVICE_HEAP, Device, wait_for, write_bundle
from device_helpers import board, pki  # noqa: F401  (fixtures)
from raw_hub import RawHub

# The app records which readings the outbox drops (the oldest, at each append that overflows
# it) by wrapping the outbox's append; the firmware under test is unchanged.
APP = r'''
import json, sys
sys.path.append("/lib")
from azure_edge.device import Device

dev = Device()
c = dev.client
box = c.outbox
real_append = box.append
handed = [0]
gone = []        # seqs of the readings the outbox dropped, in order
live = [0]       # how many of those it dropped while linked: during the drain
stopped = [False]


def seq_of(rec):
    return json.loads(rec[rec.find(b"\n") + 1:].decode())["seq"]


def append(data):
    before = box.dropped
    head = [seq_of(r) for r in box.records()]
    real_append(data)
    k = box.dropped - before
    if k:
        gone.extend(head[:k])
        if c.connected:
            live[0] += k


box.append = append


def next_seq():
    handed[0] += 1
    return handed[0]


def on_c2d(body, props):
    # Inside the drain's wait for PUBACKs: the client's own callback, not the device API's
    # (which holds a handler's sends till after the step), queues at once.
    if body == b"stop":
        stopped[0] = True
    else:
        c.send_telemetry({"seq": next_seq(), "src": "c2d"})


c.on_c2d = on_c2d


def tick():
    if not stopped[0]:
        for _ in range(2):
            dev.send({"seq": next_seq(), "src": "tick"})


dev.every(0.02, tick)
while True:
    dev.step(0.05)
    if stopped[0] and c.connected and not len(box):
        c.send_telemetry({"stats": {"handed": handed[0], "dropped": box.dropped, "gone": gone,
                                    "live": live[0]}})
        stopped[0] = None
'''


@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_drain_under_drops_accounts_for_every_reading(runtime, tmp_path, pki, board):  # noqa: F811
    hub = RawHub(pki[1].cert, pki[1].key)
    hub.away = True
    hub.ack_delay = 0.03
    app = tmp_path / "app.py"
    app.write_text(APP)
    # 3 KiB: about 20 readings on flash. Quiet: no console line per reading.
    folder = write_bundle(tmp_path, pki[0], hub.port, device="drops-" + runtime,
                          outbox_bytes=3072, log_level="quiet", interval=60)
    dev = Device(runtime, folder, board, heap=DEVICE_HEAP, main=app)
    try:
        dev.wait_log(r"cannot connect to localhost:\d+", timeout=20)
        time.sleep(1.5)  # some 60 readings into a 20-reading outbox: it drops its oldest
        # Back, slow: a PUBACK per 30 ms, and two C2D messages (two readings queued inside
        # the pass) per reading for the next 60 readings; then "stop" and fast PUBACKs.
        hub.c2d_per_reading = 2
        hub.c2d_budget = 60
        hub.away = False
        stats = wait_for(lambda: [r["stats"] for r in list(hub.readings)
                                  if isinstance(r, dict) and "stats" in r], 20, "the device's stats")[0]
        text = dev.console()
        assert dev.alive() and "Traceback" not in text, text[-2000:]
        assert "link to gateway lost" not in text, text[-2000:]
        got = [r["seq"] for r in hub.readings if isinstance(r, dict) and "seq" in r]
        handed = set(range(1, stats["handed"] + 1))
        received = set(got)
        gone = stats["gone"]
        # In order, each once (the link never closed), and only readings the device handed over.
        assert got == sorted(received), got
        assert received <= handed, sorted(received - handed)
        assert len(gone) == len(set(gone)) == stats["dropped"] and set(gone) <= handed, stats
        # A reading that never reached the hub was dropped by the full outbox: none popped as
        # acknowledged without having been sent.
        silent = sorted(handed - received - set(gone))
        assert not silent, (f"{len(silent)} readings never reached the hub and were not dropped"
                            f" by the outbox: {silent}")
        # The count: handed, less received, is what the outbox dropped, less the readings it
        # dropped while they were in flight or acknowledged but not yet popped (those reached
        # the hub: `dropped` counts them too).
        in_flight = set(gone) & received
        assert len(handed) - len(received) == stats["dropped"] - len(in_flight), stats
        # The drain did run under drops: inside a pass (of readings in flight) and of readings
        # never sent, while linked.
        assert stats["live"] > 0 and in_flight and set(gone) - received, stats
        print(f"{runtime}: handed {len(handed)}, received {len(received)}, dropped {stats['dropped']}"
              f" ({stats['live']} during the drain, {len(in_flight)} of them in flight)")
    finally:
        dev.stop()
        hub.stop()
