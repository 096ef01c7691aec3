"""Crash test: SIGKILL a MicroPython process (64 KiB heap) that appends and pops, many rounds.

Between rounds the tail of the newest segment is sometimes cut, garbled or grown with junk,
the way a power cut mid-write leaves flash. Every round reopens the store and checks it
against what the killed process had been told: one consecutive run in order, every record
whose append() returned still there (save at most the one torn record), pops that
returned stay popped, drops counted, the bound kept. The store grows to megabytes, far
beyond the 64 KiB heap, so a reader that loaded it whole would fail.
"""
import random
import signal
import subprocess
import time

import pytest

from conftest import ROOT, compile_outbox, tool
from outbox_crash_worker import payload_size


WORKER = ROOT / "tests" / "outbox_crash_worker.py"
HDR = 8
MAX_BYTES = 3_000_000
CAP = MAX_BYTES - MAX_BYTES // 8 - 20  # the documented room for records (the head file counts)
ROUNDS = 45
FILL = 7000  # records of 498 bytes on average: 3.5 MB, past the bound


class Model:
    """What the harness knows: the run [first, last], dropped, and the step in flight."""

    cap = CAP

    @staticmethod
    def size(k):
        """Bytes record k takes in the store's count."""
        return HDR + payload_size(k)

    def __init__(self):
        self.first = 0
        self.last = -1
        self.dropped = 0
        self.inflight = None
        self.acked = 0

    def feed(self, line):
        """Apply one line the worker printed; raise AssertionError when it breaks the order."""
        kind, *nums = line.split()
        nums = [int(n) for n in nums]
        if kind == "a":
            assert nums[0] == self.last + 1, line
            self.inflight = ("a", nums[0])
        elif kind == "A":
            assert self.inflight == ("a", nums[0]), line
            drops = nums[1] - self.dropped
            assert drops >= 0, line
            self.first += drops
            self.dropped = nums[1]
            self.last = nums[0]
            self.inflight = None
            self.acked += 1
        elif kind == "p":
            assert nums[0] == self.first <= self.last, f"peek gave {line}, oldest is {self.first}"
            self.inflight = ("p", nums[0])
        elif kind == "P":
            assert self.inflight == ("p", nums[0]), line
            self.first += 1
            self.inflight = None
        else:
            raise AssertionError(f"unexpected worker line {line!r}")

    def check(self, state, torn):
        """Compare a reopened store (STATE line) with what was acknowledged before the kill."""
        count, first, last, dropped, used = state
        drops = dropped - self.dropped
        appending = self.inflight is not None and self.inflight[0] == "a"
        popping = self.inflight is not None and self.inflight[0] == "p"
        assert drops >= 0 and (appending or drops == 0), (state, vars(self))
        low = self.first + drops  # oldest record that must still be there
        lasts = {self.last} | ({self.last + 1} if appending else set()) | ({self.last - 1} if torn else set())
        if count:
            assert first in ({low, low + 1} if popping else {low}), (state, vars(self))
            assert last in lasts, (state, vars(self))
            assert count == last - first + 1
            assert used == sum(self.size(k) for k in range(first, last + 1))
        else:
            # Empty is only right when everything acknowledged was popped, dropped or torn.
            assert low + (1 if popping else 0) > min(lasts), (state, vars(self))
        assert used <= self.cap
        self.dropped = dropped
        self.inflight = None
        if count:
            self.first, self.last = first, last
        else:
            # The worker numbers on from FLOOR = last + 1; reusing a lost number is fine.
            self.first = self.last + 1


def newest_segment(store):
    segs = sorted(store.glob("*.seg"))
    return segs[-1] if segs else None


def tear(store, model, rng):
    """Damage only the last record of the newest segment, as a cut mid-append would.

    Whichever record is last (the acknowledged one, or the one in flight), the damage
    stays inside it: the span is the smaller of the two record sizes.
    """
    seg = newest_segment(store)
    if seg is None or seg.stat().st_size == 0:
        return False
    span = HDR + min(payload_size(model.last), payload_size(model.last + 1))
    raw = bytearray(seg.read_bytes())
    span = min(span, len(raw))
    how = rng.choice(["cut", "flip", "junk"])
    if how == "cut":
        raw = raw[:len(raw) - rng.randint(1, span)]
    elif how == "flip":
        raw[len(raw) - rng.randint(1, span)] ^= 1 << rng.randint(0, 7)
    else:
        raw += bytes(rng.getrandbits(8) for _ in range(rng.randint(1, span)))
    seg.write_bytes(bytes(raw))
    return how != "junk"  # junk after a whole record loses nothing


def start(mpy_dir, store, floor, seed, mode, out):
    argv = [tool("micropython"), "-X", "heapsize=64K", str(WORKER), str(mpy_dir), str(store),
            str(MAX_BYTES), str(floor), str(seed), mode]
    return subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE, cwd=ROOT)


def wait_for_state(out_path, proc, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = out_path.read_text()
        if "\n" in text:
            return
        if proc.poll() is not None:
            return
        time.sleep(0.002)
    raise AssertionError("the worker printed no STATE line")


def wait_for_ack(out_path, proc, number, timeout=60.0):
    """Wait until the worker has acknowledged appending record `number`."""
    deadline = time.monotonic() + timeout
    with open(out_path, "rb") as f:
        while time.monotonic() < deadline and proc.poll() is None:
            f.seek(max(0, f.seek(0, 2) - 200))
            acks = [ln.split() for ln in f.read().split(b"\n")[1:-1] if ln.startswith(b"A ")]
            if acks and int(acks[-1][1]) >= number:
                return
            time.sleep(0.01)
    raise AssertionError(f"the worker did not reach record {number}")


def parse_state(line):
    kind, *nums = line.split()
    assert kind == "STATE", line
    return [int(n) for n in nums]


@pytest.mark.timeout(120)
def test_sigkill_and_torn_tails_lose_nothing_acknowledged(tmp_path):
    mpy_dir = tmp_path / "mpy"
    compile_outbox(mpy_dir)
    store = tmp_path / "store"
    rng = random.Random(5)
    model = Model()
    torn = False
    killed_in_open = tears = peak = 0

    for rnd in range(ROUNDS):
        out_path = tmp_path / f"round{rnd}.out"
        with open(out_path, "wb") as out:
            proc = start(mpy_dir, store, model.last + 1, rnd, "fill" if rnd == 0 else "run", out)
            try:
                if rnd % 9 == 4:
                    # Kill while it opens: recovery (the tail repair) must itself be crash-safe.
                    time.sleep(rng.uniform(0.0, 0.02))
                elif rnd == 0:
                    # The first life fills the store past the bound: megabytes on flash.
                    wait_for_ack(out_path, proc, FILL)
                else:
                    wait_for_state(out_path, proc)
                    time.sleep(rng.uniform(0.005, 0.25))
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            err = proc.stderr.read().decode(errors="replace")
            proc.stderr.close()
        text = out_path.read_text()
        assert proc.returncode == -signal.SIGKILL, f"worker ended by itself: {text[:300]!r} {err[-1500:]}"
        lines = text.split("\n")[:-1]  # the last piece is cut mid-line or empty
        if not lines:
            killed_in_open += 1
            continue  # killed before it could report: the next round checks the same model
        assert not lines[0].startswith("BAD"), lines[0]
        model.check(parse_state(lines[0]), torn)
        for line in lines[1:]:
            model.feed(line)
        peak = max(peak, sum(HDR + payload_size(k) for k in range(model.first, model.last + 1)))
        torn = rng.random() < 0.4 and tear(store, model, rng)
        tears += torn

    # Last life: no kill. It must find a consistent store, keep working and drain in order.
    out_path = tmp_path / "final.out"
    with open(out_path, "wb") as out:
        proc = start(mpy_dir, store, model.last + 1, 0, "final", out)
        proc.wait(timeout=60)
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
    lines = out_path.read_text().split("\n")
    assert proc.returncode == 0 and lines[1] == "DONE", lines[:3] + [err[-1500:]]
    model.check(parse_state(lines[0]), torn)

    assert model.acked >= FILL and tears >= 5  # the test did exercise what it claims
    assert peak > 2_000_000, f"the store reached only {peak} bytes"
    assert model.dropped > 0, "the bound was never hit"
    assert sum(p.stat().st_size for p in store.glob("*.seg")) <= MAX_BYTES
    assert not list(store.glob("*.tmp"))
