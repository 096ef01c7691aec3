"""Issue 8, item 1: the gateway is killed and restarted at random moments while the real
MicroPython device publishes every 50 ms; every reading arrives, in order, duplicates counted."""
import os
import random

from .soak import BACKOFF_CAP, restarts


def test_gateway_restarts_lose_nothing(tmp_path, rel_pki, seq_board):
    seed = int(os.environ.get("EDGEKIT_SEED", random.randrange(1 << 30)))
    res = restarts(tmp_path, rel_pki, seq_board, random.Random(seed), rounds=3)
    print(f"seed {seed}: {res.line()}")
    r = res.report
    assert r["lost"] == 0 and r["out_of_order"] == 0, (seed, r)
    assert r["received"] == r["sent"] > 0
    assert res.notes["restarts"] == 3 and res.notes["longest_down_s"] > BACKOFF_CAP
    assert res.reconnects >= 3  # one per restart at least: the device came back each time


def test_accounting_counts_lost_duplicates_and_order():
    from .conftest import account
    got = [("a", 1, 10), ("a", 2, 30), ("a", 2, 30), ("a", 4, 20), ("a", 3, 5), ("b", 1, 7), ("b", 3, 7)]
    r = account({"a": 5, "b": 2}, got)
    # a: 5 handed, 1-4 arrived (3 after 4: out of order), 2 twice; b: 1 and 3 arrived, 2 never.
    assert (r["sent"], r["received"], r["lost"], r["duplicates"], r["out_of_order"], r["max_heap"]) \
        == (8, 6, 2, 1, 1, 30)
    assert sorted(r["missing"]) == [("a", 5), ("b", 2)]
