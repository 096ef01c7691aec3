"""azure_edge.partlog, the outbox as a log on a raw partition, under CPython and the real
MicroPython interpreter, on the sim's esp32.Partition stand-in (host_tools/edgekit/sim/board/
esp32.py) over its NOR chip, strict: a program that would set a cleared bit raises.

Damage (a bit gone bad in an old record) is done here on the host between two opens. Power
cuts and torn records are tests/test_partlog_crash.py's; the wear figure tests/test_wear.py's.
"""
import json
import struct
import zlib

import pytest

from conftest import ROOT, FirmwareError, compile_outbox
from edgekit.sim.supervisor import partition_table, partitions_env

BOARD = ROOT / "host_tools" / "edgekit" / "sim" / "board"
BS = 4096
HEAD = 20

PRELUDE = """
import sys, os
if sys.implementation.name == 'micropython' and MPY not in sys.path:
    sys.path.insert(0, MPY)
if BOARD not in sys.path:
    sys.path.append(BOARD)
from binascii import crc32
import esp32
from azure_edge.partlog import PartLog
from azure_edge.outbox import Outbox
def setenv(k, v):
    os.putenv(k, v)
    if hasattr(os, 'environ'):
        os.environ[k] = v
def part(table):
    # A board with this partition table (JSON, as the sim's supervisor passes it: table()).
    setenv('EDGEKIT_SIM_PARTITIONS', table)
    setenv('EDGEKIT_SIM_NOR_STRICT', '1')
    for c in esp32._chips.values():
        c._f.close()  # the runner lives on: close the last test's chip
    esp32._chips.clear()
    import gc
    gc.collect()
    found = esp32.Partition.find(esp32.Partition.TYPE_DATA, label='outbox')
    return found[0] if found else None
def rec(i, size=0):
    return ('r%05d|' % i).encode() + bytes([i & 255]) * size
def digest(x):
    return None if x is None else [len(x), crc32(x) & 0xFFFFFFFF]
def listing(b):
    return [digest(r) for r in b.records()]
def chip(p):
    return p._nor.counters()
"""

MPY_DIR = []


@pytest.fixture(scope="module", autouse=True)
def compiled(tmp_path_factory):
    MPY_DIR[:] = [str(compile_outbox(tmp_path_factory.mktemp("mpy")))]
    yield
    MPY_DIR.clear()


def run(fw, code):
    return fw.run(f"MPY = {MPY_DIR[0]!r}\nBOARD = {str(BOARD)!r}\n" + PRELUDE + code)


def table(image, blocks):
    # The partition table the sim's supervisor passes its esp32 stand-in: the one `edgekit flash`
    # writes, its outbox `blocks` 4096-byte blocks in the host file `image` (none without).
    if blocks == 1:  # below what a table may hold (edgekit.partitions), for PartLog's own guard
        return json.dumps([["outbox", 1, 0x80, 0x3FF000, BS, str(image)]])
    return partitions_env(partition_table(blocks if image else 0), image)


def hx(b):
    return [len(b), zlib.crc32(b)]


def rec(i, size=0):
    return f"r{i:05d}|".encode() + bytes([i & 255]) * size


def test_same_answers_as_the_file_outbox(fw, tmp_path):
    # One random workload on both stores and a list: every answer the client relies on (len,
    # peek, records, pop) agrees, across reopens, with records of 0 to 2000 bytes.
    got = run(fw, f"""
import random
random.seed(7)
p = part({table(str(tmp_path / 'p.img'), 64)!r})
a = PartLog(p, {str(tmp_path / 'ob')!r})
b = Outbox({str(tmp_path / 'files')!r}, 1 << 20)
model = []
k = 0
bad = []
for step in range(400):
    r = random.random()
    if r < 0.55:
        d = rec(k, random.randint(0, 2000) if random.random() < 0.1 else random.randint(0, 150))
        k += 1
        a.append(d); b.append(d); model.append(d)
    elif r < 0.9 and model:
        n = random.randint(1, min(16, len(model)))
        a.pop(n); b.pop(n); del model[:n]
    elif r < 0.95:
        a = PartLog(p, {str(tmp_path / 'ob')!r})
        b = Outbox({str(tmp_path / 'files')!r}, 1 << 20)
    else:
        it = a.records()
        for x in it:
            a.append(rec(k)); b.append(rec(k)); model.append(rec(k)); k += 1  # appends while iterating
            break
        it.close()
    want = [len(model), digest(model[0] if model else None)]
    if [len(a), digest(a.peek())] != want or [len(b), digest(b.peek())] != want:
        bad.append(step)
    if step % 40 == 0 and (listing(a) != [digest(x) for x in model] or listing(b) != listing(a)):
        bad.append(('list', step))
c = chip(p)
result = [bad, k, len(model), a.dropped, b.dropped, c['program_violations']]
""")
    bad, appended, left, dropped_a, dropped_b, violations = got
    assert bad == [] and appended > 180 and left >= 0 and dropped_a == dropped_b == 0 and violations == 0


def test_full_partition_drops_the_oldest_and_counts_it(fw, tmp_path):
    # 4 blocks: 3 hold records. The newest reading always goes in; the oldest block's go.
    got = run(fw, f"""
p = part({table(str(tmp_path / 'p.img'), 4)!r})
a = PartLog(p, '/nowhere')
for i in range(300):
    a.append(rec(i, 100))
    assert len(a) + a.dropped == i + 1
first = int(bytes(a.peek())[1:6])
last = int(bytes(list(a.records())[-1])[1:6])
again = PartLog(p, '/nowhere')
result = [[len(a), a.dropped], first, last, a.max_bytes, a.bytes, [len(again), again.dropped, digest(again.peek())],
          chip(p)['hottest_erases'], chip(p)['erases']]
""")
    (n, dropped), first, last, cap, used, reopened, hottest, erases = got
    assert last == 299 and n + dropped == 300 and first == dropped  # the oldest went, in order
    assert 3 * 31 - 31 <= n <= 3 * 31 and used <= cap == 3 * (BS - HEAD)
    assert reopened == [n, dropped, hx(rec(first, 100))]  # dropped is kept on flash
    assert erases <= 300 // 31 + 1 and hottest <= 3  # one erase per block filled, spread over all four


def test_a_drain_costs_no_erase(fw, tmp_path):
    # Acknowledging readings clears one state byte per record in place: no erase at all.
    got = run(fw, f"""
p = part({table(str(tmp_path / 'p.img'), 16)!r})
a = PartLog(p, '/nowhere')
for i in range(240):
    a.append(rec(i, 110))
before = chip(p)
while len(a):
    a.pop(min(16, len(a)))
after = chip(p)
result = [after['erases'] - before['erases'], after['programmed_bytes'] - before['programmed_bytes'], len(PartLog(p, '/x'))]
""")
    assert got == [0, 240, 0]


def test_bad_input_gets_one_line_and_loses_nothing(fw, tmp_path):
    img = str(tmp_path / "p.img")
    for code, kind, words in [
        ("a.append('text')", "TypeError", "encode text"),
        ("a.append(bytes(4069))", "ValueError", "at most 4068"),
        ("a.pop(3)", "IndexError", "pop 3 from an outbox of 2"),
    ]:
        with pytest.raises(FirmwareError) as err:
            run(fw, f"p = part({table(img, 8)!r})\na = PartLog(p, '/x')\nwhile len(a) < 2:\n    a.append(rec(len(a)))\n" + code)
        assert err.value.kind == kind and words in err.value.message and "\n" not in err.value.message
    assert run(fw, f"a = PartLog(part({table(img, 8)!r}), '/x')\nresult = [len(a), listing(a)]") == \
        [2, [hx(rec(0)), hx(rec(1))]]
    with pytest.raises(FirmwareError) as err:
        run(fw, f"PartLog(part({table(str(tmp_path / 'one.img'), 1)!r}), '/x')")
    assert err.value.kind == "ValueError" and "needs at least 2" in err.value.message
    assert run(fw, f"result = [part({table(None, 0)!r}), len(esp32.Partition.find(esp32.Partition.TYPE_DATA))]") == \
        [None, 3]


def test_a_damaged_old_record_is_skipped_not_a_stall(fw, tmp_path):
    img = tmp_path / "p.img"
    run(fw, f"""
a = PartLog(part({table(str(img), 8)!r}), '/x')
for i in range(100):
    a.append(rec(i, 100))
""")
    raw = bytearray(img.read_bytes())
    # Record 5 of the first block (116 bytes each, 35 to a block): a bit of its payload goes
    # bad (a 1 reads as 0).
    at = HEAD + 5 * 116 + 8 + 20
    assert raw[at] & 1
    raw[at] &= 0xFE
    img.write_bytes(bytes(raw))
    got = run(fw, f"""
a = PartLog(part({table(str(img), 8)!r}), '/x')
n = len(a)
walked = len(listing(a))
first = int(bytes(a.peek())[1:6])
a.append(rec(100))
result = [n, walked, first, len(a), int(bytes(list(a.records())[-1])[1:6])]
""")
    # Records 0-4 stay; 5 and the rest of its block (to 34) are lost; the log goes on.
    assert got == [70, 70, 0, 71, 100]


def test_startup_uses_the_partition_when_the_table_has_it(fw, tmp_path):
    got = run(fw, f"""
from azure_edge import startup
startup.log = lambda msg: None  # stdout is the runner's channel
cfg = {{'outbox_path': {str(tmp_path / 'ob')!r}, 'outbox_bytes': 8192}}
part({table(str(tmp_path / 'p.img'), 16)!r})
with_part = type(startup._outbox(cfg, None)).__name__
part({table(None, 0)!r})
without = type(startup._outbox(cfg, None)).__name__
result = [with_part, without]
""")
    assert got == ["PartLog", "Outbox"]


def test_partition_stand_in_mirrors_esp32_partition(fw, tmp_path):
    # ports/esp32/esp32_partition.c: find() gives a list; Partition(label) raises ENOENT;
    # writeblocks without an offset erases first; info() is a 6-tuple. The chip ANDs a program
    # over cleared bits unless strict.
    got = run(fw, f"""
p = part({table(str(tmp_path / 'p.img'), 4)!r})
info = list(p.info())
try:
    esp32.Partition('nope')
    missing = None
except OSError as e:
    missing = e.args[0]
p.writeblocks(1, b'\\x0f', 8)
try:
    p.writeblocks(1, b'\\xf0', 8)
    strict = 'no error'
except OSError as e:
    strict = e.args[0]
setenv('EDGEKIT_SIM_NOR_STRICT', '0')
p._nor._f.close()
esp32._chips.clear()
q = esp32.Partition('outbox')
q.writeblocks(1, b'\\xf0', 8)
b = bytearray(1)
q.readblocks(1, b, 8)
anded = b[0]
q.writeblocks(1, b'\\x77' * 5000)
c = bytearray(2)
q.readblocks(1, c, 4094)
q.readblocks(2, b, 903)
result = [info, missing, strict, anded, list(c), b[0], q.ioctl(4, 0), q.ioctl(5, 0), len(esp32.Partition.find())]
""")
    info, missing, strict, anded, cross, tail, blocks, size, apps = got
    assert info == [1, 0x80, 0x400000 - 4 * BS, 4 * BS, "outbox", False]
    assert missing == 2 and strict == 5 and anded == 0x00
    assert cross == [0x77, 0x77] and tail == 0x77 and blocks == 4 and size == BS and apps == 1


def test_readings_set_aside_go_beside_it_and_come_back(fw, tmp_path):
    # azure_edge/aside.py keeps a refused reading in a file outbox at <path>.aside, then moves
    # it back to the log's tail; startup does that at boot from box.path.
    got = run(fw, f"""
from azure_edge import aside
a = PartLog(part({table(str(tmp_path / 'p.img'), 8)!r}), {str(tmp_path / 'ob')!r})
for i in range(3):
    a.append(rec(i))
held = aside.hold(a, a.peek())
a.pop(1)
a = PartLog(part({table(str(tmp_path / 'p.img'), 8)!r}), {str(tmp_path / 'ob')!r})
back = aside.restore(a)
result = [held, back, listing(a), len(aside._box(a, False))]
""")
    assert got == [1, 1, [hx(rec(1)), hx(rec(2)), hx(rec(0))], 0]
    assert (tmp_path / "ob.aside").is_dir() and not (tmp_path / "ob").exists()


UPGRADE = """
from azure_edge import startup
said = []
startup.log = said.append  # stdout is the runner's channel
def files(path, n, popped=0, size=40):
    # The file outbox an earlier firmware left: n readings queued, the first `popped` sent.
    b = Outbox(path, max_bytes=65536)
    for i in range(n):
        b.append(rec(i, size))
    if popped:
        b.pop(popped)
"""


def test_an_earlier_file_outbox_moves_into_the_partition_at_first_boot(fw, tmp_path):
    # A board's first boot with the partition while /data/outbox still holds readings: they go
    # to the log, oldest first, ahead of anything new, and the folder goes once they are in.
    ob = str(tmp_path / "ob")
    got = run(fw, UPGRADE + f"""
files({ob!r}, 300, popped=7)
Outbox({ob!r}, max_bytes=65536).append(b'B' * 5000)  # fits a file outbox, not a partition block
cfg = {{'outbox_path': {ob!r}, 'outbox_bytes': 32768}}
p = part({table(str(tmp_path / 'p.img'), 16)!r})
box = startup._outbox(cfg, None)
box.append(b'new')
again = startup._outbox(cfg, None)  # the next boot: nothing left to move
# One record at a time: the long-lived runner's heap may hold no 4 KB in one piece for a list.
want = 7
in_order = True
for r in again.records():
    in_order = in_order and r == (rec(want, 40) if want < 300 else b'new')
    want += 1
result = [type(box).__name__, in_order and want == 301, said]
""")
    kind, in_order, said = got
    assert kind == "PartLog" and in_order
    assert not (tmp_path / "ob").exists()
    assert said == ["a reading of 5000 bytes does not fit the partition: dropped",
                    f"293 reading(s) moved from the old outbox {tmp_path / 'ob'} to the partition",
                    "outbox on partition (64 KiB): 293 queued", "outbox on partition (64 KiB): 294 queued"]


def test_a_cut_while_the_old_files_go_sends_nothing_twice(fw, tmp_path):
    # Moved, and the cut came after the segments went but before the head did: the head names no
    # segment, so the next boot finds an empty outbox and only removes it.
    ob = tmp_path / "ob"
    run(fw, UPGRADE + f"files({str(ob)!r}, 20, popped=20)\nresult = None")
    for seg in ob.glob("*.seg"):
        seg.unlink()
    assert (ob / "head").exists()
    got = run(fw, UPGRADE + f"""
p = part({table(str(tmp_path / 'p.img'), 4)!r})
box = startup._outbox({{'outbox_path': {str(ob)!r}, 'outbox_bytes': 65536}}, None)
result = [len(box), said[0]]
""")
    assert got == [0, f"0 reading(s) moved from the old outbox {ob} to the partition"]
    assert not ob.exists()


def test_a_budget_beyond_the_partition_is_said_and_the_partition_holds(fw, tmp_path):
    # outbox_bytes bounds the file outbox; the log holds what its partition holds (blocks - 1
    # of 4076 bytes), drops its oldest beyond that, and says so once at boot.
    got = run(fw, UPGRADE + f"""
p = part({table(str(tmp_path / 'p.img'), 4)!r})
box = startup._outbox({{'outbox_path': {str(tmp_path / 'ob')!r}, 'outbox_bytes': 1048576}}, None)
for i in range(200):
    box.append(rec(i, 120))
small = startup._outbox({{'outbox_path': {str(tmp_path / 'ob')!r}, 'outbox_bytes': 8192}}, None)
result = [said, box.max_bytes, len(box), box.dropped, len(small)]
""")
    said, cap, queued, dropped, kept = got
    assert cap == 3 * 4076 and said[:2] == [
        "outbox on partition (16 KiB): 0 queued",
        "outbox_bytes 1048576 is more than the outbox partition holds (12228 bytes): the oldest readings go beyond that"]
    assert queued + dropped == 200 and queued * 136 <= cap and dropped
    # A smaller budget does not shrink the log: what it holds stays queued, no line said.
    assert kept == queued and len(said) == 3 and said[2].endswith(f": {queued} queued")
