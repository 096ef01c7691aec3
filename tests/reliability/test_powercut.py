"""Issue 8, item 3: power cuts (SIGKILL) of the real MicroPython device while it writes its
outbox and while PUBACKs are due; it boots again on the same flash folder. Every reading it had
handed over (acknowledged, or durable in the outbox) arrives; the outbox reopens clean and
within its bound after every cut."""
import os
import random

from .soak import powercut


def test_power_cuts_lose_nothing_handed_over(tmp_path, rel_pki, seq_board):
    seed = int(os.environ.get("EDGEKIT_SEED", random.randrange(1 << 30)))
    res = powercut(tmp_path, rel_pki, seq_board, random.Random(seed), rounds=4)
    print(f"seed {seed}: {res.line()}")
    r = res.report
    assert r["lost"] == 0 and r["out_of_order"] == 0, (seed, r)
    assert r["received"] == r["sent"] > 0
    assert res.notes["boots"] == 5
    assert res.notes["max_queued_at_cut"] > 0  # a cut did land while the outbox was being written
    assert res.notes["cut_awaiting_puback"] == 1  # and one after the gateway kept a PUBLISH, before its PUBACK
