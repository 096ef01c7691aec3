"""Crash test of the partition log (azure_edge/partlog.py): SIGKILL a MicroPython process
(64 KiB heap, as the file outbox's test) that appends and pops on the sim's esp32.Partition,
many rounds, and tear the last record between rounds the way a cut mid-program leaves NOR
flash: part of it still erased (0xFF), or bits cleared past the log's end.

The harness is tests/test_outbox_crash.py's: the same worker, model and checks, with the
record sizes and the bound of the partition log. The chip is strict (EDGEKIT_SIM_NOR_STRICT):
a program that would set a cleared bit fails the worker.
"""
import os
import random
import signal
import struct
import subprocess
import sys
import time
import zlib

import pytest

from conftest import FIRMWARE, ROOT, compile_outbox, tool
from edgekit.sim.supervisor import partition_table, partitions_env
from outbox_crash_worker import payload_size
from test_outbox_crash import Model, parse_state, wait_for_ack, wait_for_state

WORKER = ROOT / "tests" / "outbox_crash_worker.py"
BOARD = ROOT / "host_tools" / "edgekit" / "sim" / "board"
BS = 4096
HEAD = 20
BLOCKS = 48  # 192 KiB: the fill below passes it, so the full log drops its oldest
ROUNDS = 25
FILL = 900  # records of 498 bytes on average: about 450 KB


def padded(k):
    return (8 + payload_size(k) + 3) & ~3


class PartModel(Model):
    cap = (BLOCKS - 1) * (BS - HEAD)
    size = staticmethod(padded)


def start(mpy_dir, store, image, floor, seed, mode, out):
    env = dict(os.environ, EDGEKIT_SIM_PARTITIONS=partitions_env(partition_table(BLOCKS), image),
               EDGEKIT_SIM_NOR_STRICT="1")
    argv = [tool("micropython"), "-X", "heapsize=64K", str(WORKER), str(mpy_dir), f"part:{store}",
            "0", str(floor), str(seed), mode, str(BOARD)]
    return subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE, cwd=ROOT, env=env)


def tail_record(raw):
    """(block, offset, size) of the newest block's last record, and where its log ends."""
    best = None
    for b in range(BLOCKS):
        h = raw[b * BS:b * BS + HEAD]
        magic, seq, _, _, crc = struct.unpack("<IIIII", h)
        if magic == 0x4C4B4445 and zlib.crc32(h[:16]) == crc and (best is None or seq > best[0]):
            best = (seq, b)
    if best is None:
        return None
    b = best[1]
    at, last = HEAD, None
    while at + 8 <= BS:
        n = struct.unpack_from("<H", raw, b * BS + at)[0]
        if n == 0xFFFF:
            break
        last = (at, (8 + n + 3) & ~3)
        at += last[1]
    return b, last, at


def tear(image, rng):
    """Tear the last record of the newest block as a cut mid-program would; True when the
    record itself was damaged (it may be lost), False for bits cleared past the log's end."""
    raw = bytearray(image.read_bytes())
    found = tail_record(raw)
    if found is None or found[1] is None:
        return False
    b, (at, size), end = found
    base = b * BS
    how = rng.choice(["cut", "bit", "junk"])
    if how == "junk":
        if end + 8 > BS:
            return False
        for _ in range(rng.randint(1, 8)):  # a program that cleared a few bits and stopped
            i = base + rng.randrange(end, BS)
            raw[i] &= ~(1 << rng.randint(0, 7)) & 0xFF
    elif how == "cut":
        cut = rng.randint(1, size - 1)  # the program stopped after `cut` bytes
        raw[base + at + cut:base + at + size] = b"\xff" * (size - cut)
    else:
        zeros = [(i, j) for i in range(base + at + 2, base + at + size) for j in range(8)
                 if i != base + at + 2 and not raw[i] >> j & 1]  # never the state byte
        if not zeros:
            return False
        i, j = rng.choice(zeros)
        raw[i] |= 1 << j  # one bit the program had not cleared yet
    image.write_bytes(bytes(raw))
    return how != "junk"


@pytest.mark.timeout(120)
def test_partition_log_sigkill_and_torn_tails_lose_nothing_acknowledged(tmp_path):
    mpy_dir = compile_outbox(tmp_path / "mpy")
    store = tmp_path / "outbox"
    image = tmp_path / "outbox.img"
    rng = random.Random(11)
    model = PartModel()
    torn = False
    tears = peak = 0

    for rnd in range(ROUNDS):
        out_path = tmp_path / f"round{rnd}.out"
        with open(out_path, "wb") as out:
            proc = start(mpy_dir, store, image, model.last + 1, rnd, "fill" if rnd == 0 else "run", out)
            try:
                if rnd % 9 == 4:
                    time.sleep(rng.uniform(0.0, 0.02))  # while it reads the log back
                elif rnd == 0:
                    wait_for_ack(out_path, proc, FILL)
                else:
                    wait_for_state(out_path, proc)
                    time.sleep(rng.uniform(0.005, 0.15))
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
        lines = text.split("\n")[:-1]
        if not lines:
            continue  # killed before it could report: the next round checks the same model
        assert not lines[0].startswith("BAD"), lines[0]
        model.check(parse_state(lines[0]), torn)
        for line in lines[1:]:
            model.feed(line)
        peak = max(peak, sum(padded(k) for k in range(model.first, model.last + 1)))
        torn = rng.random() < 0.5 and tear(image, rng)
        tears += torn

    out_path = tmp_path / "final.out"
    with open(out_path, "wb") as out:
        proc = start(mpy_dir, store, image, model.last + 1, 0, "final", out)
        proc.wait(timeout=60)
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
    lines = out_path.read_text().split("\n")
    assert proc.returncode == 0 and lines[1] == "DONE", lines[:3] + [err[-1500:]]
    model.check(parse_state(lines[0]), torn)

    assert model.acked >= FILL and tears >= 4  # the test did exercise what it claims
    assert peak > 0.8 * PartModel.cap, f"the log reached only {peak} bytes"
    assert model.dropped > 0, "the full log never dropped its oldest"
    assert not store.exists()  # the log wrote no files


CUT_WORKER = ROOT / "tests" / "partlog_cut_worker.py"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_partition_log_survives_a_power_cut_at_every_flash_operation(tmp_path, seed):
    # tests/partlog_cut_worker.py: the power goes at every program and every erase of a
    # workload in turn, each leaving its operation half done (seeds 1 and 2 fill the 4-block
    # partition, so the cuts hit its drops too).
    mpy_dir = compile_outbox(tmp_path / "mpy")
    done = subprocess.run([tool("micropython"), "-X", "heapsize=256K", str(CUT_WORKER), str(mpy_dir),
                           str(BOARD), str(tmp_path), str(seed)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(("OK", "BAD"))]
    assert done.returncode == 0 and lines and lines[-1].startswith("OK"), (lines[-1:], done.stderr[-1500:])
    cuts, appends, dropped = map(int, lines[-1].split()[1:])
    assert cuts > 400 and appends > 140 and (dropped > 0 or seed == 3)


MOVER = """
import sys
sys.path.insert(0, sys.argv[1])
sys.path.append(sys.argv[2])
from azure_edge import partlog, startup


Base = partlog.PartLog


class Loud(Base):
    # Says each reading the move programs into the log, so the test can kill it mid-move.
    def append(self, data):
        Base.append(self, data)
        sys.stdout.write("a\\n")
        if hasattr(sys.stdout, "flush"):
            sys.stdout.flush()  # CPython buffers a pipe


partlog.PartLog = Loud
startup.log = lambda msg: sys.stdout.write("log " + msg + "\\n")
startup._outbox({"outbox_path": sys.argv[3], "outbox_bytes": 65536}, None)
sys.stdout.write("done\\n")
"""


@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_sigkill_while_an_earlier_outbox_moves_in_loses_nothing(runtime, tmp_path):
    # The upgrade path (partlog_recover.adopt) under the real micropython in a board's heap, and CPython,
    # killed after a random number of appends each life: every reading the files held reaches
    # the log in order; a kill may repeat up to the 16 of one batch (the file outbox's pop comes
    # after the appends: duplicates, never a loss, docs/outbox.md).
    if str(FIRMWARE) not in sys.path:
        sys.path.append(str(FIRMWARE))
    from azure_edge.outbox import Outbox
    sys.modules.pop("azure_edge.outbox_recover", None)
    ob, image = tmp_path / "ob", tmp_path / "outbox.img"
    old = Outbox(str(ob), 65536)
    total = 230
    for i in range(total):
        old.append(b"old%04d|" % i + bytes(100))
    old = None
    worker = tmp_path / "mover.py"
    worker.write_text(MOVER)
    env = dict(os.environ, EDGEKIT_SIM_PARTITIONS=partitions_env(partition_table(BLOCKS), image),
               EDGEKIT_SIM_NOR_STRICT="1")
    from edgekit import mpy
    lib = tmp_path / "lib"
    for src in (FIRMWARE / "azure_edge").glob("*.py"):  # as deploy ships them: .mpy
        mpy.compile_file(src, lib / "azure_edge" / (src.stem + ".mpy"), source_name=f"azure_edge/{src.name}")
    argv = [tool("micropython"), "-X", "heapsize=64K", str(worker), str(lib), str(BOARD), str(ob)]
    if runtime == "cpython":
        argv = [sys.executable, str(worker), str(FIRMWARE), str(BOARD), str(ob)]
    rng = random.Random(23)
    lives = 0
    while True:
        lives += 1
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env)
        kill_at, seen, lines = rng.randrange(1, 120), 0, []
        for line in proc.stdout:
            lines.append(line)
            seen += line == b"a\n"
            if seen >= kill_at:
                proc.send_signal(signal.SIGKILL)
                break
        out, err = proc.communicate(timeout=30)
        lines += out.splitlines(keepends=True)
        if b"done\n" in lines:
            break
        assert proc.returncode == -signal.SIGKILL, (lines[-3:], err[-800:])
        assert lives < 30, "the move never finished"
    assert not ob.exists() and lives > 2
    # What the log holds, read back by the firmware's own reader under CPython.
    got = subprocess.run([sys.executable, "-c", READBACK, str(FIRMWARE), str(BOARD)], env=env,
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert got.returncode == 0, got.stderr[-800:]
    seqs = [int(line[3:7]) for line in got.stdout.split()]
    assert sorted(set(seqs)) == list(range(total))
    firsts = [seqs.index(i) for i in range(total)]
    assert firsts == sorted(firsts)  # in order; a repeat only re-sends a batch already in
    assert len(seqs) - total <= 16 * (lives - 1)


READBACK = """
import sys
sys.path.insert(0, sys.argv[1])
sys.path.append(sys.argv[2])
import esp32
from azure_edge.partlog import PartLog
log = PartLog(esp32.Partition.find(esp32.Partition.TYPE_DATA, label="outbox")[0], "/nowhere")
for r in log.records():
    print(bytes(r[:8]).decode())
"""
