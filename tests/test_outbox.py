"""azure_edge.outbox under CPython and the real MicroPython interpreter (64 KiB heap).

Each case runs once per interpreter through the `fw` fixture. Damage to the files
(torn tails, half-finished renames) is done here on the host between two opens, the
way a power cut leaves them.

MicroPython runs the outbox compiled to .mpy by mpy-cross, as deploy ships it: compiling the
source on the device needs more heap than the 64 KiB runner has left.
"""
import os
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FIRMWARE, FirmwareError, compile_outbox

HDR = 8  # record header: length, CRC (docs/outbox.md)
HEAD = 20  # the head file, which the budget counts

# Helpers defined inside the firmware interpreter for every snippet.
PRELUDE = """
import sys
if sys.implementation.name == 'micropython':
    if MPY not in sys.path:
        sys.path.insert(0, MPY)
from azure_edge.outbox import Outbox
from binascii import crc32
def rec(i, size=0):
    body = ('r%05d|' % i).encode()
    return body + bytes([i & 255]) * size
def unhex(h):
    return bytes(int(h[i:i + 2], 16) for i in range(0, len(h), 2))
def digest(x):
    return None if x is None else [len(x), crc32(x) & 0xFFFFFFFF]
def state(b):
    return {'len': len(b), 'bytes': b.bytes, 'dropped': b.dropped, 'peek': digest(b.peek())}
def listing(b):
    return [digest(r) for r in b.records()]
"""


MPY_DIR = []


@pytest.fixture(scope="module", autouse=True)
def compiled_outbox(tmp_path_factory):
    """The outbox compiled to .mpy, for the MicroPython runner."""
    out = compile_outbox(tmp_path_factory.mktemp("mpy"))
    MPY_DIR[:] = [str(out)]
    yield out
    MPY_DIR.clear()


def run(fw, code):
    return fw.run(f"MPY = {MPY_DIR[0]!r}\n" + PRELUDE + code)


def rec(i, size=0):
    return f"r{i:05d}|".encode() + bytes([i & 255]) * size


def hx(b):
    """What the firmware side reports for a record: its length and CRC-32 (the runner's
    64 KiB heap cannot echo whole stores back as JSON)."""
    return [len(b), zlib.crc32(b)]


def segments(folder):
    return sorted(p for p in os.listdir(folder) if p.endswith(".seg"))


def disk_bytes(folder):
    return sum(os.path.getsize(os.path.join(folder, p)) for p in segments(folder))


# --- the API ------------------------------------------------------------------------------

def test_fifo_and_reopen(fw, tmp_path):
    box = str(tmp_path / "box")
    got = run(fw, f"""
b = Outbox({box!r})
empty = state(b)
for i in range(5):
    b.append(rec(i, i * 10))
first = state(b)
b.pop()
again = Outbox({box!r})
result = [empty, first, state(again), listing(again)]
""")
    empty, first, reopened, listed = got
    assert empty == {"len": 0, "bytes": 0, "dropped": 0, "peek": None}
    assert first == {"len": 5, "bytes": sum(HDR + 7 + i * 10 for i in range(5)), "dropped": 0,
                     "peek": hx(rec(0))}
    assert reopened["len"] == 4 and reopened["peek"] == hx(rec(1, 10))
    assert listed == [hx(rec(i, i * 10)) for i in range(1, 5)]


def test_binary_empty_and_large_records(fw, tmp_path):
    # Every byte value, the empty record, and records far larger than the 256-byte read chunk.
    make = "[bytes(range(256)), b'', bytes(8), bytes((i * 7 + 3) & 255 for i in range(5000)), b'\\xff' * 3000]"
    payloads = eval(make)
    box = str(tmp_path / "box")
    got = run(fw, f"""
b = Outbox({box!r}, 1 << 20)
for p in {make}:
    b.append(p)
b = Outbox({box!r}, 1 << 20)
out = []
while len(b):
    out.append(digest(b.peek()))
    b.pop()
result = [out, b.peek(), b.bytes]
""")
    assert got == [[hx(p) for p in payloads], None, 0]


def test_bad_arguments_are_refused(fw, tmp_path):
    box = str(tmp_path / "box")
    with pytest.raises(FirmwareError) as err:
        run(fw, f"Outbox({box!r}, 100)")
    assert err.value.kind == "ValueError" and "at least 512" in err.value.message
    with pytest.raises(FirmwareError) as err:
        run(fw, f"Outbox({box!r}).pop()")
    assert err.value.kind == "IndexError"
    with pytest.raises(FirmwareError) as err:
        run(fw, f"Outbox({box!r}, 1024).append(bytes(1000))")
    assert err.value.kind == "ValueError" and "raise max_bytes" in err.value.message
    with pytest.raises(FirmwareError) as err:
        run(fw, f"Outbox({box!r}).append('text')")
    assert err.value.kind == "TypeError" and "encode" in err.value.message
    # Nothing was written by the refused calls.
    assert run(fw, f"result = state(Outbox({box!r}))")["len"] == 0


def test_folder_is_created_or_refused(fw, tmp_path):
    nested = tmp_path / "a" / "b" / "box"
    assert run(fw, f"b = Outbox({str(nested)!r}); b.append(b'x'); result = len(b)") == 1
    assert nested.is_dir()
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(FirmwareError) as err:
        run(fw, f"Outbox({str(tmp_path / 'file')!r})")
    assert err.value.kind == "OutboxError" and "cannot be created" in err.value.message


def test_bound_drops_oldest_and_persists_count(fw, tmp_path):
    box = str(tmp_path / "box")
    # 1024 bytes: 128-byte segments and the 20-byte head file leave 876 bytes for records of
    # 8 + 7 + 41 = 56 bytes -> 15 fit.
    got = run(fw, f"""
b = Outbox({box!r}, 1024)
for i in range(40):
    b.append(rec(i, 41))
b = Outbox({box!r}, 1024)
result = [state(b), listing(b)]
""")
    st_, listed = got
    assert st_ == {"len": 15, "bytes": 15 * 56, "dropped": 25, "peek": hx(rec(25, 41))}
    assert listed == [hx(rec(i, 41)) for i in range(25, 40)]
    assert folder_bytes(box) <= 1024


def test_pop_never_rewrites_segments(fw, tmp_path):
    box = str(tmp_path / "box")
    run(fw, f"""
b = Outbox({box!r}, 4096)
for i in range(30):
    b.append(rec(i, 40))
""")
    before = {p: (tmp_path / "box" / p).read_bytes() for p in segments(box)}
    assert len(before) >= 3
    left = run(fw, f"""
b = Outbox({box!r}, 4096)
for i in range(12):
    b.pop()
result = len(b)
""")
    assert left == 18
    after = {p: (tmp_path / "box" / p).read_bytes() for p in segments(box)}
    # Consumed segments are deleted; the rest are byte-for-byte what they were.
    assert set(after) < set(before) and min(after) > min(before)
    assert all(after[p] == before[p] for p in after)


# --- crash recovery -----------------------------------------------------------------------

def fill(fw, box, count, size=30, max_bytes=65536):
    run(fw, f"""
b = Outbox({box!r}, {max_bytes})
for i in range({count}):
    b.append(rec(i, {size}))
""")


def reopen_and_list(fw, box, then_append=None):
    extra = f"b.append(rec({then_append}))\nb = Outbox({box!r})\n" if then_append is not None else ""
    return run(fw, f"""
b = Outbox({box!r})
{extra}result = [state(b), listing(b)]
""")


@pytest.mark.parametrize("damage", ["cut-header", "cut-payload", "flip-payload", "flip-length",
                                    "zeros", "junk"])
def test_torn_tail_is_discarded_and_nothing_older(fw, tmp_path, damage):
    box = str(tmp_path / "box")
    fill(fw, box, 10)
    newest = tmp_path / "box" / segments(box)[-1]
    raw = bytearray(newest.read_bytes())
    last = HDR + 7 + 30
    if damage == "cut-header":
        raw = raw[:-last + 3]
    elif damage == "cut-payload":
        raw = raw[:-5]
    elif damage == "flip-payload":
        raw[-1] ^= 0x40
    elif damage == "flip-length":
        raw[-last] ^= 0x01
    elif damage == "zeros":  # FAT can grow a file before its data lands
        raw += bytes(40)
    else:
        raw += b"\x10\x00\x00\x00garbage-garbage-garbage"
    newest.write_bytes(bytes(raw))
    kept = 10 if damage in ("zeros", "junk") else 9
    st_, listed = reopen_and_list(fw, box, then_append=99)
    assert listed == [hx(rec(i, 30)) for i in range(kept)] + [hx(rec(99))]
    assert st_["len"] == kept + 1


def test_interrupted_head_replace_is_finished(fw, tmp_path):
    box = str(tmp_path / "box")
    fill(fw, box, 10)
    run(fw, f"b = Outbox({box!r}); b.pop(); b.pop(); b.pop()")
    head = tmp_path / "box" / "head"
    # FAT fallback: the old head was removed, the power went before head.tmp was renamed.
    head.rename(tmp_path / "box" / "head.tmp")
    st_, listed = reopen_and_list(fw, box)
    assert st_["len"] == 7 and listed[0] == hx(rec(3, 30))
    assert head.exists() and not (tmp_path / "box" / "head.tmp").exists()
    # A torn head.tmp next to a good head: the good head wins.
    (tmp_path / "box" / "head.tmp").write_bytes(head.read_bytes()[:11])
    st_, _ = reopen_and_list(fw, box)
    assert st_["len"] == 7


def test_newer_head_tmp_wins_over_older_head(fw, tmp_path):
    box = str(tmp_path / "box")
    fill(fw, box, 10)
    run(fw, f"b = Outbox({box!r}); b.pop()")
    old = (tmp_path / "box" / "head").read_bytes()
    run(fw, f"b = Outbox({box!r}); b.pop()")
    # Both names hold a whole head: the rename onto head failed after head.tmp was written.
    (tmp_path / "box" / "head.tmp").write_bytes((tmp_path / "box" / "head").read_bytes())
    (tmp_path / "box" / "head").write_bytes(old)
    st_, _ = reopen_and_list(fw, box)
    assert st_["peek"] == hx(rec(2, 30))


def test_leftovers_of_interrupted_steps(fw, tmp_path):
    box = tmp_path / "box"
    fill(fw, str(box), 60, max_bytes=4096)
    segs = segments(box)
    run(fw, f"b = Outbox({str(box)!r}, 4096)\nfor i in range(20): b.pop()")
    left = segments(box)
    assert len(left) < len(segs)
    # A consumed segment whose removal the power cut: it must not come back.
    (box / segs[0]).write_bytes(b"\x03\x00\x00\x00" + b"\x00" * 20)
    # A tail repair that was cut while copying: the original stays, the copy goes.
    newest = left[-1]
    (box / (newest[:8] + ".tmp")).write_bytes(b"half")
    st_, listed = reopen_and_list(fw, str(box))
    assert listed == [hx(rec(i, 30)) for i in range(20, 60)]
    assert sorted(os.listdir(box)) == sorted(left + ["head"])
    # A tail repair cut after the original was removed: the copy is taken.
    whole = (box / newest).read_bytes()
    (box / newest).rename(box / (newest[:8] + ".tmp"))
    st_, listed = reopen_and_list(fw, str(box))
    assert st_["len"] == 40 and (box / newest).read_bytes() == whole


# --- against a model ----------------------------------------------------------------------

class Model:
    """A Python list with the outbox's documented bound: drop oldest until the record fits."""

    def __init__(self, max_bytes):
        self.cap = max_bytes - max_bytes // 8 - HEAD
        self.items = []
        self.dropped = 0

    def size(self):
        return sum(HDR + len(x) for x in self.items)

    def append(self, data):
        while self.size() + HDR + len(data) > self.cap:
            self.items.pop(0)
            self.dropped += 1
        self.items.append(data)

    def state(self):
        return {"len": len(self.items), "bytes": self.size(), "dropped": self.dropped,
                "peek": hx(self.items[0]) if self.items else None}


OPS = st.lists(st.one_of(st.tuples(st.just("append"), st.integers(0, 120)),
                         st.tuples(st.just("pop"), st.just(0)),
                         st.tuples(st.just("reopen"), st.just(0))),
               min_size=1, max_size=60)


def compact(state):
    """One step of the trace as four numbers: the runner's heap is too small for dicts."""
    peek = state["peek"][1] if state["peek"] else -1
    return [state["len"], state["bytes"], state["dropped"], peek]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS, max_bytes=st.sampled_from([512, 1024, 3000]))
def test_matches_list_model(fw, tmp_path_factory, ops, max_bytes):
    box = str(tmp_path_factory.mktemp("model") / "box")
    script = ",".join(op[0] + str(size) for op, size in ops)  # "a68,p0,r0,..."
    trace = run(fw, f"""
b = Outbox({box!r}, {max_bytes})
trace = []
n = 0
for step in {script!r}.split(','):
    if step[0] == 'a':
        b.append(rec(n, int(step[1:])))
        n += 1
    elif step[0] == 'p':
        if len(b):
            b.pop()
    else:
        b = Outbox({box!r}, {max_bytes})
    s = state(b)
    trace.extend([s['len'], s['bytes'], s['dropped'], s['peek'][1] if s['peek'] else -1])
result = [trace, listing(b)]
""")
    model = Model(max_bytes)
    expected = []
    n = 0
    for op, size in ops:
        if op == "append":
            model.append(rec(n, size))
            n += 1
        elif op == "pop" and model.items:
            model.items.pop(0)
        expected.extend(compact(model.state()))
    assert trace == [expected, [hx(x) for x in model.items]]
    assert folder_bytes(box) <= max_bytes


def test_rename_that_refuses_existing_names(tmp_path, monkeypatch):
    # CircuitPython's FAT will not rename onto an existing file: the store still works,
    # through remove-then-rename, and survives reopening. (CPython only: it patches os.)
    monkeypatch.syspath_prepend(str(FIRMWARE))
    from azure_edge import outbox

    real = os.rename
    refused = []

    def fat_rename(src, dst):
        if os.path.exists(dst):
            refused.append(dst)
            raise OSError(17, "EEXIST")
        real(src, dst)

    monkeypatch.setattr(outbox.os, "rename", fat_rename)
    box = outbox.Outbox(str(tmp_path / "box"), 2048)
    for i in range(30):
        box.append(rec(i, 20))
        if i % 3 == 2:
            box.pop()
    again = outbox.Outbox(str(tmp_path / "box"), 2048)
    assert refused and list(again.records()) == list(box.records()) == [rec(i, 20) for i in range(10, 30)]
    assert sorted(os.listdir(tmp_path / "box"))[-1] == "head"


def test_pop_many_across_segments(fw, tmp_path):
    # The client drains a window at a time: records() reads without removing, pop(n) removes
    # n records with one head write, also when the window spans segment files.
    box = str(tmp_path / "box")
    got = run(fw, f"""
b = Outbox({box!r}, 4096)
for i in range(1, 31):
    b.append(rec(i, 40))
first = [r[:7].decode() for r in b.records()][:16]
b.pop(16)
b = Outbox({box!r}, 4096)
after = [len(b), b.peek()[:7].decode(), [r[:7].decode() for r in b.records()]]
try:
    b.pop(len(b) + 1)
    too_many = None
except IndexError as e:
    too_many = len(b)
result = [first, after, too_many]
""")
    first, after, too_many = got
    assert first == [f"r{i:05d}|" for i in range(1, 17)]
    assert after[0] == 14 and after[1] == "r00017|"
    assert after[2] == [f"r{i:05d}|" for i in range(17, 31)]
    assert too_many == 14  # an over-long pop removes nothing


def test_pop_over_flash_damaged_after_open_skips_only_that_record(fw, tmp_path):
    # A header that goes bad under an open store (flash wear) must not stall pop(n): the
    # damaged record is skipped (the next whose header and CRC check out is the head), and
    # every other record stays, in order.
    box = str(tmp_path / "box")
    fill(fw, box, 30, size=40, max_bytes=4096)  # nine records to a segment
    got = run(fw, f"""
b = Outbox({box!r}, 4096)
f = open({box!r} + "/00000000.seg", "r+b")
f.seek(2 * {HDR + 47})
f.write(bytes([0xF0, 0xFF, 0xFF, 0x7F]))  # the third record's length: far past the segment
f.close()
b.pop(5)
after = [len(b), b.peek()[:7].decode()]
b = Outbox({box!r}, 4096)
result = after + [len(b), [r[:7].decode() for r in b.records()][:1]]
""")
    left, head, left_reopened, first_reopened = got
    assert head == "r00003|" and first_reopened == [head]
    assert left == left_reopened == 27


@pytest.mark.parametrize("where", ["older segment", "newest segment"])
def test_one_flipped_bit_costs_only_that_record(fw, tmp_path, where):
    # The first record of a segment loses one bit; its 6 neighbours in the segment survive.
    box = str(tmp_path / "box")
    fill(fw, box, 21 if where == "older segment" else 7, size=40, max_bytes=4096)
    seg = tmp_path / "box" / segments(box)[1 if where == "older segment" else -1]
    raw = bytearray(seg.read_bytes())
    raw[HDR + 3] ^= 0x08  # a bit of the first record's payload
    seg.write_bytes(bytes(raw))
    got = run(fw, f"""
b = Outbox({box!r}, 4096)
out = []
while len(b):
    r = b.peek()
    if r is None:
        break
    out.append(r[:7].decode())
    b.pop()
result = out
""")
    total = 21 if where == "older segment" else 7
    lost = [f"r{i:05d}|" for i in range(total) if f"r{i:05d}|" not in got]
    assert len(lost) == 1 and got == sorted(got), (lost, got)


def test_a_folder_named_like_a_segment_is_ignored(fw, tmp_path):
    box = str(tmp_path / "box")
    fill(fw, box, 5)
    os.mkdir(tmp_path / "box" / "00000098.seg")
    st_, listed = reopen_and_list(fw, box, then_append=99)
    assert listed == [hx(rec(i, 30)) for i in range(5)] + [hx(rec(99))]


def test_pop_and_append_while_iterating(fw, tmp_path):
    # The drain streams records(), pops those acknowledged and may see appends meanwhile:
    # the iteration yields exactly the records queued when it began, in order.
    box = str(tmp_path / "box")
    got = run(fw, f"""
b = Outbox({box!r}, 4096)
for i in range(1, 31):
    b.append(rec(i, 40))
seen = []
for r in b.records():
    seen.append(r[:7].decode())
    if len(seen) % 7 == 0:
        b.pop(7)
    if len(seen) == 12:
        b.append(rec(99, 40))
b = Outbox({box!r}, 4096)
result = [seen, len(b), [r[:7].decode() for r in b.records()]]
""")
    seen, left, listing = got
    assert seen == [f"r{i:05d}|" for i in range(1, 31)]
    assert left == 31 - 28 and listing == ["r00029|", "r00030|", "r00099|"]


def folder_bytes(folder):
    """Every file in the store's folder: what the budget counts (docs/outbox.md)."""
    return sum(os.path.getsize(os.path.join(folder, p)) for p in os.listdir(folder)
               if os.path.isfile(os.path.join(folder, p)))


def test_batched_drain_deletes_every_spent_segment(fw, tmp_path):
    # The client pops 16 at a time: a pop(n) that steps over segment ends, and an append whose
    # drops do, must delete every segment they leave, not only the last (issue 23: they stayed
    # on flash until the next open, and LittleFS filled up after repeated outages).
    box = str(tmp_path / "box")
    got = run(fw, f"""
import os
def used():
    return sum(os.stat({box!r} + '/' + n)[6] for n in os.listdir({box!r}))
b = Outbox({box!r}, 8192)  # 1024-byte segments: 8 records of 120 bytes each
over = []
for rnd in range(3):
    for i in range(50):
        b.append(rec(i, 105))
    while len(b):
        b.pop(min(16, len(b)))
        # At most one segment's spent front (and the head file) beyond what is queued.
        if used() > b.bytes + 1024 + 20:
            over.append([rnd, len(b), used()])
drained = sorted(os.listdir({box!r}))
# Drops that cross a segment end: small records, then one big one that pushes many out.
for i in range(40):
    b.append(rec(i, 105))
b.append(rec(99, 5000))
big = [len(b), b.dropped, used()]
result = [over, drained, big]
""")
    over, names, (left, dropped, used) = got
    assert over == []
    assert len([n for n in names if n.endswith(".seg")]) == 1 and "head" in names
    assert dropped > 16 and used <= 8192
    assert folder_bytes(box) == used


def test_stray_files_count_against_the_budget(fw, tmp_path):
    # The budget is what the folder holds: a stray file, or a leftover, takes its share
    # (counted at open: only the outbox writes there).
    box = tmp_path / "box"
    box.mkdir()
    (box / "notes.txt").write_bytes(b"x" * 3000)
    (box / "head.tmp").write_bytes(b"torn")  # ours: replaced at the next pop, not counted
    got = run(fw, f"""
b = Outbox({str(box)!r}, 8192)
for i in range(200):
    b.append(rec(i, 41))
b.pop()
result = [len(b), b.bytes, b.dropped]
""")
    left, used, dropped = got
    assert used <= 8192 - 1024 - HEAD - 3000 and dropped == 200 - left - 1
    assert folder_bytes(box) <= 8192
    with pytest.raises(FirmwareError) as err:  # nothing fits beside a stray of the whole budget
        run(fw, f"(open({str(box / 'notes.txt')!r}, 'wb')).write(bytes(8000)); Outbox({str(box)!r}, 8192).append(b'x')")
    assert err.value.kind == "ValueError" and "raise max_bytes" in err.value.message


class SmallDisk:
    """CPython: the store's files on a filesystem of `size` bytes (every file under `root`).
    A write that does not fit lands partly, then raises OSError 28, as a full disk does."""

    def __init__(self, monkeypatch, root, size):
        import builtins

        self.root, self.size, self.refusals = str(root), size, 0
        real = builtins.open
        disk = self

        class File:
            def __init__(self, f):
                self.f = f

            def write(self, b):
                self.f.flush()
                room = disk.size - disk.used()
                if len(b) > room:
                    disk.refusals += 1
                    self.f.write(bytes(b[:max(room, 0)]))
                    self.f.flush()
                    raise OSError(28, "No space left on device")
                return self.f.write(b)

            def __getattr__(self, name):
                return getattr(self.f, name)

        def small_open(name, mode="r", *args, **kw):
            f = real(name, mode, *args, **kw)
            return File(f) if str(name).startswith(self.root) and mode[0] in "wa" else f

        monkeypatch.setattr(builtins, "open", small_open)

    def used(self):
        return sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(self.root) for n in names)


def test_full_filesystem_drops_oldest_never_newest(tmp_path, monkeypatch):
    # Other files fill most of a small filesystem; the outbox's budget is larger than the room
    # left. Appends drop the oldest segments (counted) and never fail or lose the newest.
    monkeypatch.syspath_prepend(str(FIRMWARE))
    from azure_edge.outbox import Outbox, OutboxError

    (tmp_path / "other.bin").write_bytes(bytes(5000))
    disk = SmallDisk(monkeypatch, tmp_path, 9000)
    box = Outbox(str(tmp_path / "box"), 65536)
    for i in range(300):
        box.append(rec(i, i % 70))
        got = list(box.records())
        assert got[-1] == rec(i, i % 70) and got == [rec(k, k % 70) for k in range(300)][i + 1 - len(got):i + 1]
        assert len(box) + box.dropped == i + 1
    assert disk.refusals and box.dropped > 100 and disk.used() <= 9000
    assert not [n for n in os.listdir(tmp_path / "box") if n.endswith(".tmp")]
    again = Outbox(str(tmp_path / "box"), 65536)
    assert list(again.records()) == got and again.dropped == box.dropped
    # Drained, then the other files take everything: the store says so, in one line.
    again.pop(len(again))
    (tmp_path / "more.bin").write_bytes(bytes(9000 - disk.used() + disk_bytes(tmp_path / "box")))
    with pytest.raises(OutboxError) as err:
        again.append(rec(1000))
    assert "filesystem is full" in str(err.value) and "\n" not in str(err.value)
    assert segments(tmp_path / "box") == []  # the spent tail went, and the torn new one
    # Room again: it goes on, consistent.
    os.remove(tmp_path / "more.bin")
    again.append(rec(1001))
    assert list(Outbox(str(tmp_path / "box"), 65536).records()) == [rec(1001)]
