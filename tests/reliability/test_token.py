"""Issue 8, item 4: SAS tokens of 4 s while publishing every 50 ms: no gap in the sequence and
about one reconnect per renewal interval (3 s), not a storm."""
import os
import random

from .soak import token


def test_token_expiry_under_load(tmp_path, rel_pki, seq_board):
    seed = int(os.environ.get("EDGEKIT_SEED", random.randrange(1 << 30)))
    res = token(tmp_path, rel_pki, seq_board, random.Random(seed), rounds=1)
    print(f"seed {seed}: {res.line()}")
    r = res.report
    assert r["lost"] == 0 and r["out_of_order"] == 0, r
    assert r["sent"] >= 12 / 0.05 * 0.8  # the device kept publishing through the renewals
    assert res.notes["renewals"] >= 3
