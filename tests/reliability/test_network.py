"""Issue 8, item 2: network faults through the FaultProxy (drop, stall longer than the keepalive,
half-open black hole, reset mid-packet, slow reads) with the real MicroPython device publishing
every 50 ms: it notices a dead link within its keepalive bound, reconnects and loses nothing."""
import os
import random

from .soak import FAULTS, KEEPALIVE, network


def test_network_faults_lose_nothing(tmp_path, rel_pki, seq_board):
    seed = int(os.environ.get("EDGEKIT_SEED", random.randrange(1 << 30)))
    res = network(tmp_path, rel_pki, seq_board, random.Random(seed), rounds=len(FAULTS))
    print(f"seed {seed}: {res.line()}")
    r = res.report
    assert r["lost"] == 0 and r["out_of_order"] == 0, (seed, r)
    assert r["received"] == r["sent"] > 0
    # A busy device waits at most one keepalive for a PUBACK; +1 s for the step it is in.
    assert res.notes["max_detect_s"] <= KEEPALIVE + 1, res.notes
    assert res.reconnects >= len(FAULTS) - 1  # every fault but the slow link ends the session
