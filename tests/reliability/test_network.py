"""Issue 8, item 2: network faults through the FaultProxy (drop, stall longer than the keepalive,
half-open black hole, reset mid-packet, slow reads) with the real MicroPython device publishing
every 50 ms: it notices a dead link within its keepalive bound, reconnects and loses nothing."""
import os
import random
import time

import pytest

from device_helpers import DEVICE_HEAP, Device, build_board, readings_of, wait_for
from edgekit.faultproxy import FaultProxy

from .conftest import RestartableGateway, make_seq_bundle
from .soak import FAULTS, KEEPALIVE, network


def test_network_faults_lose_nothing(tmp_path, rel_pki, seq_board):
    seed = int(os.environ.get("EDGEKIT_SEED", random.randrange(1 << 30)))
    res = network(tmp_path, rel_pki, seq_board, random.Random(seed), rounds=len(FAULTS))
    print(f"seed {seed}: {res.line()}")
    r = res.report
    assert r["lost"] == 0 and r["out_of_order"] == 0, (seed, r)
    assert r["received"] == r["sent"] > 0
    # A busy device waits at most one keepalive for a PUBACK (it waited a fixed 10 s before);
    # the bound is MQTT's own for a silent peer, 1.5 x keepalive, leaving room for a loaded host.
    assert res.notes["max_detect_s"] <= 1.5 * KEEPALIVE + 0.5, res.notes
    assert res.reconnects >= len(FAULTS) - 1  # every fault but the slow link ends the session


@pytest.fixture(scope="module")
def app_board(tmp_path_factory):
    return build_board(tmp_path_factory.mktemp("app-board"))


def test_idle_device_detects_silent_dead_link_by_ping(tmp_path, rel_pki, app_board):
    # The real firmware/main.py with nothing to send for a minute: only its PINGREQ can tell
    # that the link died silently. Bound: a ping after one keepalive of quiet, and one keepalive
    # for the PINGRESP.
    keepalive = 2
    gw = RestartableGateway(tmp_path / "gateway", pki=rel_pki).start()
    proxy = FaultProxy("127.0.0.1", gw.port).start()
    bundle = make_seq_bundle(gw, tmp_path, "idle", port=proxy.port, keepalive=keepalive, interval=60)
    dev = Device("micropython", bundle, app_board, heap=DEVICE_HEAP)
    try:
        dev.wait_log(r"connected to localhost:\d+ as idle", 30)
        wait_for(lambda: readings_of(gw, "idle"), 15, "first reading")
        time.sleep(0.5)
        t0 = time.monotonic()
        proxy.stall()
        dev.wait_log(r"link to gateway lost", 2 * keepalive + 10)
        took = time.monotonic() - t0
        proxy.resume()
        wait_for(lambda: dev.console().count("[edgekit] connected to ") >= 2, 30, "the device connected again")
        print(f"idle dead link noticed after {took:.1f} s (keepalive {keepalive} s)")
        assert took <= 2 * keepalive + 1.5, took
        assert "Traceback" not in dev.console()
    finally:
        dev.stop()
        proxy.stop()
        gw.stop()
