# The outbox on the filesystems boards mount: MicroPython's own VfsLfs2 and VfsFat, on a
# RAM block device, run by tests/test_outbox_vfs.py under the real micropython.
#
#   micropython outbox_vfs_worker.py MPY_DIR lfs|fat ops SEED
#   micropython outbox_vfs_worker.py MPY_DIR lfs|fat cut SEED torn|whole
#
# ops: a long random run of append/pop/reopen checked against a list after every step.
# cut: power cuts. The block device stops programming after N block writes (with "torn",
#      the write in progress lands only partly), the filesystem is mounted afresh from what
#      reached the "flash", and the store must hold every record whose append returned and
#      keep every pop that returned. N takes every value across the workload.
# Prints OK <summary> on success, BAD <why> otherwise.
import gc
import os
import sys

sys.path.insert(0, sys.argv[1])
from azure_edge.outbox import Outbox  # noqa: E402
import random  # noqa: E402

BLOCK = 512
BLOCKS = 384
MAX_BYTES = 16384


class Flash:
    """A RAM block device (the extended interface littlefs and FAT use) that can lose power."""

    def __init__(self):
        self.data = bytearray(b"\xff" * (BLOCK * BLOCKS))
        self.writes = 0
        self.cut_at = -1  # block writes allowed before the power goes; -1: never
        self.torn = True

    def readblocks(self, block, buf, offset=0):
        at = block * BLOCK + offset
        try:
            buf[:] = self.data[at:at + len(buf)]
        except MemoryError:
            # Called from a file's finaliser while the GC holds the heap locked: copy
            # without allocating.
            for i in range(len(buf)):
                buf[i] = self.data[at + i]

    def writeblocks(self, block, buf, offset=0):
        # Failures are returned as -EIO, not raised: a file's finaliser may flush through
        # here while the GC holds the heap locked, where raising cannot allocate.
        at = block * BLOCK + offset
        if self.cut_at >= 0 and self.writes >= self.cut_at:
            if self.writes == self.cut_at:
                # The write in progress when the power went lands only partly.
                part = random.randint(0, len(buf)) if self.torn else 0
                self.data[at:at + part] = buf[:part]
                self.writes += 1
            return -5
        self.data[at:at + len(buf)] = buf
        self.writes += 1
        return 0

    def ioctl(self, op, arg):
        if op == 4:
            return BLOCKS
        if op == 5:
            return BLOCK
        if op == 6:  # erase
            if self.cut_at >= 0 and self.writes >= self.cut_at:
                self.writes = max(self.writes, self.cut_at + 1)
                return -5
            self.data[arg * BLOCK:(arg + 1) * BLOCK] = b"\xff" * BLOCK
            return 0
        return 0


def vfs_class(kind):
    return os.VfsLfs2 if kind == "lfs" else os.VfsFat


def mount(flash, kind):
    vfs = vfs_class(kind)(flash)
    os.mount(vfs, "/flash")


def unmount():
    try:
        os.umount("/flash")
    except OSError:
        pass


def fresh(kind):
    flash = Flash()
    vfs_class(kind).mkfs(flash)
    mount(flash, kind)
    return flash


def rec(k):
    return ("%06d" % k).encode() + bytes([k & 255]) * ((k * 37) % 300)


def numbers(box):
    out = []
    for r in box.records():
        out.append(int(r[:6]))
        if r != rec(out[-1]):
            out.append(-1)
    return out


def bad(why):
    print("BAD " + why)
    unmount()
    sys.exit(1)


def run_ops(kind, seed):
    random.seed(seed)
    fresh(kind)
    cap = MAX_BYTES - MAX_BYTES // 8 - 20  # the head file counts too
    box = Outbox("/flash/box", MAX_BYTES)
    model = []
    dropped = 0
    nxt = 0
    for step in range(1500):
        r = random.random()
        if r < 0.6:
            data = rec(nxt)
            while sum(8 + len(x) for x in model) + 8 + len(data) > cap:
                model.pop(0)
                dropped += 1
            box.append(data)
            model.append(data)
            nxt += 1
        elif r < 0.95:
            if model:
                if box.peek() != model[0]:
                    bad("step %d: peek differs from the model" % step)
                box.pop()
                model.pop(0)
        else:
            box = Outbox("/flash/box", MAX_BYTES)
        if len(box) != len(model) or box.dropped != dropped:
            bad("step %d: len %d dropped %d, model %d %d" % (step, len(box), box.dropped, len(model), dropped))
    box = Outbox("/flash/box", MAX_BYTES)
    if [r for r in box.records()] != model:
        bad("records after reopen differ from the model")
    used = 0
    for name in os.listdir("/flash/box"):
        if name.endswith(".seg"):
            used += os.stat("/flash/box/" + name)[6]
    if used > MAX_BYTES:
        bad("segments use %d bytes, bound %d" % (used, MAX_BYTES))
    unmount()
    print("OK appended %d dropped %d left %d" % (nxt, dropped, len(model)))


def workload(box, state):
    # state: [next number, first number still queued, appends acked, pops acked]
    while True:
        # The same choices on every run (whatever the random state), so a dry run's count
        # of block writes holds for the runs that are cut.
        if len(box) and (state[0] * 7919 + state[3] * 104729) % 100 < 35:
            box.pop()
            state[1] += 1
            state[3] += 1
        else:
            box.append(rec(state[0]))
            state[0] += 1
            state[2] += 1
            if box.dropped:
                bad("the cut workload must stay under the bound")
        if state[2] >= 60:
            return


def run_cuts(kind, seed, torn):
    # A dry run counts the block writes the workload makes; the cuts sweep across them.
    random.seed(seed)
    flash = fresh(kind)
    box = Outbox("/flash/box", MAX_BYTES)
    for k in range(20):
        box.append(rec(k))
    start = flash.writes
    workload(box, [20, 0, 0, 0])
    total = flash.writes - start
    unmount()
    ok = 0
    for cut in range(total):
        random.seed(seed * 1000 + cut)
        flash = fresh(kind)
        flash.torn = torn
        box = Outbox("/flash/box", MAX_BYTES)
        for k in range(20):
            box.append(rec(k))
        flash.cut_at = flash.writes + cut
        state = [20, 0, 0, 0]
        try:
            workload(box, state)
            bad("the cut at write %d never happened" % cut)
        except OSError:
            # After the cut every failure is its echo; before it, a failure is a bug.
            if flash.writes <= flash.cut_at:
                raise
        # Files the cut left open are finalised against this filesystem, not a later one.
        box = None
        gc.collect()
        unmount()
        flash.cut_at = -1
        try:
            mount(flash, kind)
        except OSError as e:
            bad("cut at write %d: the filesystem does not mount again (%s)" % (cut, e))
        box = Outbox("/flash/box", MAX_BYTES)
        got = numbers(box)
        acked_last = state[0] - 1
        # An append or pop cut short may or may not have happened; nothing else may differ.
        firsts = (state[1], state[1] + 1)
        lasts = (acked_last, acked_last + 1)
        if got and (got != list(range(got[0], got[-1] + 1)) or got[0] not in firsts or got[-1] not in lasts):
            bad("cut at write %d: store holds %s..%s (%d), acked %d..%d" % (
                cut, got[0], got[-1], len(got), state[1], acked_last))
        if not got and state[1] <= acked_last:
            bad("cut at write %d: store empty, acked %d..%d" % (cut, state[1], acked_last))
        # And it keeps working.
        nxt = got[-1] + 1 if got else state[0]
        box.append(rec(nxt))
        box = Outbox("/flash/box", MAX_BYTES)
        again = numbers(box)
        if again[-1] != nxt or again[:-1] != got:
            bad("cut at write %d: append after recovery gave %s" % (cut, again[-3:]))
        unmount()
        ok += 1
    print("OK cuts %d over %d block writes" % (ok, total))


kind = sys.argv[2]
if sys.argv[3] == "ops":
    run_ops(kind, int(sys.argv[4]))
else:
    run_cuts(kind, int(sys.argv[4]), sys.argv[5] == "torn")
