"""The console readers keep up: 100 KB the board prints at once arrives whole, at once.

They used to read what in_waiting announced and sleep 20 ms: socket:// announces at most one
byte, so about 50 bytes/s got through. Here the board (the simulated one, or a pty standing
for a serial device) prints 100 KB, and monitor(), watch() and ReplLink.monitor() must have
it all within a bound that the old rate would miss by thousands of seconds.
"""
import os
import threading
import time

import pytest
import serial

from conftest import wait_log
from edgekit.deploy.link import ReplLink
from edgekit.monitor import monitor, open_console, watch
from edgekit.sim import SimBoard

BULK = 100 * 1024
# Built on the board, so the friendly REPL's echo of the command does not contain the marker.
PRINT_BULK = b"print('x' * %d + 'END' + '-OF-BULK')\r\n" % BULK
WHOLE = b"x" * BULK + b"END-OF-BULK"


class Arrivals:
    """A stdout for monitor(): keeps the bytes and notes when the bulk was complete."""

    def __init__(self):
        self.data = bytearray()
        self.complete_at = None

    def write(self, data):
        self.data += data
        if self.complete_at is None and WHOLE in self.data:
            self.complete_at = time.monotonic()

    def flush(self):
        pass


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    flash = tmp_path_factory.mktemp("rate") / "flash"
    flash.mkdir()
    sim = SimBoard(flash, heap="512K").start()
    wait_log(sim, "Type \"help()\"")
    yield sim
    sim.stop()


def keys(text):
    """A stdin for monitor() that types text and then stays open and quiet."""
    r, w = os.pipe()
    os.write(w, text)
    return open(r, "rb", buffering=0), w


def run_monitor(port, typed, seconds):
    stdin, w = keys(typed)
    out = Arrivals()
    started = time.monotonic()
    try:
        monitor(port, stdin=stdin, stdout=out, seconds=seconds)
    finally:
        stdin.close()
        os.close(w)
    return out, started


@pytest.mark.parametrize("scheme", ["socket", "rfc2217"])
def test_monitor_takes_100k_from_the_sim(board, scheme):
    url = board.url if scheme == "socket" else board.rfc2217_url
    port = open_console(url, 115200)
    try:
        out, started = run_monitor(port, b"\r" + PRINT_BULK, seconds=4)
    finally:
        port.close()
    assert out.data.count(WHOLE) == 1, f"{len(out.data)} bytes arrived"
    # Typed, run and printed by the board, passed by the supervisor, read by monitor(): the
    # board prints 100 KB in a few ms, so 2 s is generous; at 50 bytes/s it would be 2000 s.
    assert out.complete_at - started < 2.0


def test_monitor_takes_100k_from_a_serial_device():
    # A pty is a real serial device to pyserial; the test writes the board's side.
    master, slave = os.openpty()
    port = serial.serial_for_url(os.ttyname(slave), baudrate=115200, timeout=0)
    bulk = b"y" * BULK + b"END-OF-BULK"

    def board_prints():
        time.sleep(0.3)
        view = memoryview(bulk)
        while view:
            view = view[os.write(master, view):]  # blocks while the pty's buffer is full

    writer = threading.Thread(target=board_prints)
    writer.start()
    try:
        stdin, w = keys(b"")
        got = bytearray()
        out = type("Out", (), {"write": lambda self, d: got.extend(d), "flush": lambda self: None})()
        try:
            monitor(port, stdin=stdin, stdout=out, seconds=2.5)
        finally:
            stdin.close()
            os.close(w)
        writer.join(5)
    finally:
        port.close()
        os.close(master)
        os.close(slave)
    assert bytes(got) == bulk


def test_watch_reads_past_100k_to_the_verdict():
    master, slave = os.openpty()
    port = serial.serial_for_url(os.ttyname(slave), baudrate=115200, timeout=0)
    lines = b"".join(b"[edgekit] queued telemetry #%05d, nothing wrong\r\n" % i for i in range(2200))
    assert len(lines) > BULK

    def board_prints():
        view = memoryview(lines + b"[edgekit] connected to gw:8883 as dev1\r\n")
        while view:
            view = view[os.write(master, view):]

    writer = threading.Thread(target=board_prints)
    writer.start()
    started = time.monotonic()
    try:
        outcome, line = watch(port, seconds=10)
    finally:
        writer.join(5)
        port.close()
        os.close(master)
        os.close(slave)
    assert outcome == "connected", (outcome, line)
    assert time.monotonic() - started < 3.0


def test_repl_link_monitor_takes_100k(board):
    link = ReplLink(board.url, baud=115200)
    got = Arrivals()
    try:
        link.transport.exec_raw_no_follow(PRINT_BULK.decode().strip())
        started = time.monotonic()
        link.monitor(out=got, seconds=3)
    finally:
        link.close()
    assert got.data.count(WHOLE) == 1, f"{len(got.data)} bytes arrived"
    assert got.complete_at - started < 2.0
