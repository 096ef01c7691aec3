"""A hostile hub, against the real device: firmware/main.py under the real MicroPython and
CPython, over verified TLS to a hub of our own that speaks raw MQTT (tests/raw_hub.py).

Every malformed input a hub can send costs one console line and the link, never the program:
the device backs off, reconnects, and every reading is delivered (README, "bad input").
A reading the gateway refuses every time (while it takes others) is moved aside, kept and
retried, instead of jamming the queue; a gateway that takes no reading at all is backed off
from with nothing set aside; and the size check counts the whole PUBLISH packet as edgeHub's decoder does.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

from conftest import FIRMWARE, ROOT

from device_helpers import Device, wait_for, write_bundle
from device_helpers import board, pki  # noqa: F401  (fixtures)
from raw_hub import RawHub

DEVICE = "hostile"
HEAP = "112K"

# (case the hub plays on one connection, the console line it must cost)
CASES = [
    ("early_publish", r"ignored a message on \$iothub/methods/POST/reboot/\?\$rid=77 sent before CONNACK"),
    ("bad_utf8_topic", r"link to gateway lost \(protocol error: malformed input from the gateway"
                       r" \(Unicode\w*Error\)\)"),
    ("qos2_publish", r"link to gateway lost \(protocol error: malformed input from the gateway"
                     r" \(AssertionError\)\)"),
    ("puback_len", r"link to gateway lost \(MMQTTException: protocol error: malformed PUBACK from"
                   r" the gateway\)"),
    ("connack_rc6", r"gateway refused the connection \(CONNACK 6\)"),
    ("connack_rc255", r"gateway refused the connection \(CONNACK 255\)"),
    ("connack_len", r"cannot connect to localhost:\d+: protocol error: malformed input from the"
                    r" gateway \(AssertionError\)"),
    ("suback_pid", r"cannot connect to localhost:\d+: protocol error: malformed SUBACK from the"
                   r" gateway"),
    ("cut_oversized", r"link to gateway lost \(.*\); reconnecting"),
]


class Session:
    def __init__(self, dev, hub):
        self.dev = dev
        self.hub = hub

    def count(self, pattern):
        return len(re.findall(pattern, self.dev.console()))


def _contiguous(seqs):
    got = set(s for s in seqs if isinstance(s, int) and s > 0)
    return got and got == set(range(min(got), max(got) + 1))


@pytest.fixture(scope="module", params=["micropython", "cpython"])
def session(request, tmp_path_factory, pki, board):
    tmp = tmp_path_factory.mktemp("hostile-" + request.param)
    hub = RawHub(pki[1].cert, pki[1].key)
    dev = Device(request.param, write_bundle(tmp, pki[0], hub.port, device=DEVICE, interval=0.2),
                 board, heap=HEAP)
    try:
        dev.wait_log(r"connected to localhost:\d+ as " + DEVICE)
        wait_for(lambda: len(hub.seqs()) >= 2, 15, "first readings")
        yield Session(dev, hub)
    finally:
        dev.stop()
        hub.stop()


@pytest.mark.parametrize("case,line", CASES, ids=[c for c, _ in CASES])
def test_hostile_input_costs_one_line_and_loses_nothing(session, case, line):
    s = session
    before = s.count(line)
    connects = s.hub.connects
    reports = len(s.hub.reported)
    s.hub.cases.append(case)
    s.hub.kick()  # the case plays on the device's next connection
    s.dev.wait_log(line) if before == 0 else wait_for(lambda: s.count(line) > before, 15, line)
    # Back off, reconnect to a hub that behaves, and deliver what was queued meanwhile.
    # (A PUBLISH before CONNACK is ignored, not a reason to leave: that link stays up.)
    wait_for(lambda: s.hub.connects > connects and s.hub.played[-1] in (None, "early_publish")
             and case in s.hub.played, 20, "a good reconnect")
    n = max(s.hub.seqs())
    wait_for(lambda: max(s.hub.seqs()) > n + 2, 20, "readings after the reconnect")
    # One line per case; the cut message's line comes on top of the kick's, same wording.
    assert s.count(line) == before + (2 if case == "cut_oversized" else 1), s.dev.console()[-2000:]
    assert s.dev.alive(), s.dev.console()[-2000:]
    text = s.dev.console()
    assert "Traceback" not in text and "rebooting" not in text, text[-2000:]
    assert _contiguous(s.hub.seqs()), sorted(set(s.hub.seqs()))
    if case == "cut_oversized":
        # The next link's first message (the twin) is not taken for the rest of the cut one.
        wait_for(lambda: len(s.hub.reported) > reports or "dropped a" in s.dev.console(), 10,
                 "the twin applied after the reconnect")
        assert "dropped a" not in s.dev.console(), s.dev.console()[-2000:]


def test_every_reconnect_subscribes_again_and_gets_the_twin(session):
    # Desired changes made while offline, methods and C2D all depend on it (the classic
    # umqtt.robust bug, micropython-lib #321): a gateway need not keep a session's subscriptions.
    s = session
    n = len(s.hub.sessions)
    s.hub.kick()
    wait_for(lambda: len(s.hub.sessions) > n and s.hub.sessions[-1]["twin_gets"] >= 1, 15,
             "a reconnect that asks for the twin")
    assert {"$iothub/methods/POST/#", "$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#",
            f"devices/{DEVICE}/messages/devicebound/#"} <= set(s.hub.sessions[-1]["subs"])


PROBE = r"the gateway closed the link for other readings too"
ASIDE = (r"set aside the oldest queued reading: the gateway closed the link for it 3 times in a"
         r" row while it took others \((\d+) held aside, retried in 5 s\)")


@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_a_reading_the_gateway_always_refuses_is_moved_aside_and_retried(runtime, tmp_path, pki, board):
    # Reading 25 closes the link every time; the hub takes every other reading and answers PINGs.
    # It comes 5 s after boot, with the link steady: sent at once, then three drains with it at
    # the head (set_aside_after), then the probe: the next reading alone (taken), then the head
    # alone, which closes the link once more: only now is it moved aside.
    hub = RawHub(pki[1].cert, pki[1].key, drop_seq=25)
    dev = Device(runtime, write_bundle(tmp_path, pki[0], hub.port, device="jam", interval=0.2,
                                       set_aside_retry=5), board, heap=HEAP)
    try:
        dev.wait_log(ASIDE, timeout=40)
        # Counted where it arrives: the first send, three strikes and the probe's.
        assert hub.drop_hits == 5, hub.drop_hits
        wait_for(lambda: max(hub.seqs() or [0]) >= 32, 20, "readings behind the jam")
        seqs = set(hub.seqs())
        assert 25 not in seqs and set(range(1, 33)) - {25} <= seqs, sorted(seqs)
        wait_for(lambda: any(r.get("set_aside") == 1 for r in hub.reported), 10, "set_aside reported")
        # Kept, not deleted: after set_aside_retry it goes to the hub again, and aside again.
        dev.wait_log(r"retrying 1 reading\(s\) held aside", timeout=20)
        wait_for(lambda: len(re.findall(ASIDE, dev.console())) >= 2, 40, "set aside a second time")
        assert hub.drop_hits == 9, hub.drop_hits
        seqs = hub.seqs()
        assert _contiguous(seqs + [25]) and 25 not in seqs, sorted(set(seqs))
        assert dev.alive() and "Traceback" not in dev.console()
    finally:
        dev.stop()
        hub.stop()


@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_a_reading_held_aside_is_tried_again_at_boot(runtime, tmp_path, pki, board):
    # Set aside with its retry a day away (the default), then the board restarts: the boot moves
    # it back to the outbox, and the gateway, which takes it now, gets it once.
    hub = RawHub(pki[1].cert, pki[1].key, drop_seq=25)
    folder = write_bundle(tmp_path, pki[0], hub.port, device="reboot", interval=0.2)
    dev = Device(runtime, folder, board, heap=HEAP)
    try:
        dev.wait_log(ASIDE.replace("5 s", "86400 s"), timeout=40)
    finally:
        dev.stop()
    try:
        hub.drop_seq = None
        assert 25 not in hub.seqs()
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(dict(cfg, interval=600)))  # no new seq 25
        dev = Device(runtime, folder, board, heap=HEAP, logfile=tmp_path / f"console-{runtime}-2.log")
        dev.wait_log(r"1 reading\(s\) held aside moved back to the outbox, to try them again")
        wait_for(lambda: 25 in hub.seqs(), 20, "the reading held aside")
        assert hub.seqs().count(25) == 1 and dev.alive() and "Traceback" not in dev.console()
    finally:
        dev.stop()
        hub.stop()


@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_a_gateway_that_takes_no_reading_gets_none_set_aside_and_is_backed_off(runtime, tmp_path, pki,
                                                                                board):
    # A gateway whose disk is full: the link comes up, PINGs and the twin are answered, and every
    # reading closes the link. No reading is to blame: nothing may be set aside, nothing lost,
    # and the device must back off as from any failing link (it made ~92 connects a minute).
    hub = RawHub(pki[1].cert, pki[1].key)
    dev = Device(runtime, write_bundle(tmp_path, pki[0], hub.port, device="full", interval=0.2,
                                       backoff_cap=4), board, heap=HEAP)
    try:
        dev.wait_log(r"connected to localhost:\d+ as full")
        wait_for(lambda: len(hub.seqs()) >= 2, 15, "first readings")
        hub.refuse_all = True
        connects = hub.connects
        t0 = time.monotonic()
        # Held until the probe has asked about another reading: three strikes, each after a
        # longer back-off (2 s, 4 s, 4 s with 0.75x-1.25x jitter, timed by the device), so the
        # probe cannot come sooner than 7.5 s. A fixed outage raced the jitter on a loaded machine.
        dev.wait_log(PROBE, timeout=40)
        took = time.monotonic() - t0
        during = hub.connects - connects
        hub.refuse_all = False
        n = max(hub.seqs())
        wait_for(lambda: max(hub.seqs()) > n + 60, 30, "the backlog after the gateway recovered")
        text = dev.console()
        # Without the back-off it would be four connects within a second or two.
        assert took >= 7 and 3 <= during <= 6, (took, during, text[-3000:])
        assert "set aside" not in text, text[-3000:]
        assert _contiguous(hub.seqs()) and min(hub.seqs()) == 1, sorted(set(hub.seqs()))
        assert all(r.get("set_aside") == 0 for r in hub.reported), hub.reported
        assert dev.alive() and "Traceback" not in text
    finally:
        dev.stop()
        hub.stop()


@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_a_refused_subscription_costs_one_line_not_the_link(runtime, tmp_path, pki, board):
    hub = RawHub(pki[1].cert, pki[1].key)
    hub.refuse_filter = "$iothub/methods/"
    dev = Device(runtime, write_bundle(tmp_path, pki[0], hub.port, device="subs", interval=0.2),
                 board, heap=HEAP)
    try:
        dev.wait_log(r"connected to localhost:\d+ as subs")
        wait_for(lambda: len(hub.seqs()) >= 3, 15, "readings on the link")
        text = dev.console()
        lines = [ln for ln in text.splitlines() if "SUBACK" in ln]
        assert lines == ["[edgekit] the gateway refused the subscription to $iothub/methods/POST/#"
                         " (SUBACK 0x80): no direct methods on this link"], text[-2000:]
        assert hub.connects == 1 and "link to gateway lost" not in text, text[-2000:]
    finally:
        dev.stop()
        hub.stop()


OUTAGE = 60  # seconds, as the issue asks: about six connect attempts that each wait out 10 s
# Said once per failed attempt; the diagnosis itself ("no answer ... (timed out)") only when it changes.
ATTEMPT_ENDED = r"retrying in [\d.]+ s"


@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_readings_stay_on_time_while_the_gateway_blackholes(runtime, tmp_path, pki, board):
    # The gateway's address takes the TCP connect and never answers TLS: each connect attempt
    # waits out its 10 s. Readings are the user's data: their timer must not wait with it.
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)  # the kernel completes the handshakes; nobody ever reads or writes
    dev = Device(runtime, write_bundle(tmp_path, pki[0], hole.getsockname()[1], device="hole",
                                       interval=0.5), board, heap=HEAP)
    try:
        dev.wait_log(r"queued \S+ \(1 waiting\)", timeout=30)
        t0 = time.monotonic()
        # The first attempt can time out before the first reading is queued: only attempts that
        # end after t0 count, and the window holds at least one whole wait (the outage goes on
        # until one ends, so a window that held no wait cannot pass for one that did).
        before = len(re.findall(ATTEMPT_ENDED, dev.console()))
        wait_for(lambda: time.monotonic() - t0 >= OUTAGE and len(re.findall(ATTEMPT_ENDED, dev.console())) > before,
                 OUTAGE + 30, "a connect attempt to end")
        text = dev.console()
        expected = (time.monotonic() - t0) / 0.5
        queued = len(re.findall(r"queued \S+ \(\d+ waiting\)", text)) - 1
        waits = len(re.findall(ATTEMPT_ENDED, text)) - before
        assert waits >= 3 and "(timed out)" in text, (waits, text[-1500:])  # each attempt waited out its 10 s
        # Within one interval of the clock (and the moment of t0 within one more).
        assert expected - 2 <= queued <= expected + 1, (queued, expected, text[-1500:])
        assert dev.alive() and "Traceback" not in text
    finally:
        dev.stop()
        hole.close()


@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_size_edge_counts_the_whole_packet(runtime, tmp_path, pki, board):
    hub = RawHub(pki[1].cert, pki[1].key)
    folder = write_bundle(tmp_path, pki[0], hub.port, device="big", interval=600)
    own = tmp_path / "board"
    shutil.copytree(board / "lib", own / "lib")
    shutil.copy(ROOT / "tests" / "size_device.py", own / "main.py")
    if runtime == "micropython":  # a 262 KB body needs the heap of a board with PSRAM
        dev = Device(runtime, folder, own, heap="2M")
    else:  # Device runs firmware/main.py under CPython: run ours instead
        dev = _cpython_script(folder, ROOT / "tests" / "size_device.py")
    try:
        dev.wait_log(r"size test done", timeout=60)
        text = dev.console()
        assert "accepted 262144" in text, text[-2000:]
        assert "refused 262145: message is a 262145-byte MQTT packet; the gateway takes at most" \
               " 262144: send a smaller body" in text, text[-2000:]
        pads = [r for r in hub.readings if isinstance(r, dict) and r.get("seq") == -1]
        assert len(pads) == 1 and hub.connects == 1, (len(pads), hub.connects)
        assert "link to gateway lost" not in text and "Traceback" not in text
    finally:
        dev.stop()
        hub.stop()


def _cpython_script(bundle_dir, script):
    """A Device running script (not firmware/main.py) under CPython."""
    dev = Device.__new__(Device)
    dev.log_path = bundle_dir.parent / "console-size-cpython.log"
    dev.log = open(dev.log_path, "wb")
    env = dict(os.environ, EDGEKIT_BUNDLE=str(bundle_dir), PYTHONPATH=str(FIRMWARE))
    dev.proc = subprocess.Popen([sys.executable, str(script)], stdout=dev.log, stderr=subprocess.STDOUT,
                                env=env, cwd=ROOT)
    return dev
