# The outbox on the filesystems boards mount: MicroPython's own VfsLfs2 and VfsFat, on a
# RAM block device, run by tests/test_outbox_vfs.py under the real micropython.
#
#   micropython outbox_vfs_worker.py MPY_DIR lfs|fat ops SEED
#   micropython outbox_vfs_worker.py MPY_DIR lfs|fat cut SEED torn|whole
#   micropython outbox_vfs_worker.py MPY_DIR lfs cycles SEED
#   micropython outbox_vfs_worker.py MPY_DIR lfs full SEED
#
# ops: a long random run of append/pop/reopen checked against a list after every step.
# cut: power cuts. The block device stops programming after N block writes (with "torn",
#      the write in progress lands only partly), the filesystem is mounted afresh from what
#      reached the "flash", and the store must hold every record whose append returned and
#      keep every pop that returned. N takes every value across the workload.
# cycles: outages (readings queued) each followed by a drain in batches of 16, as the client
#      does, on 4096-byte blocks like an ESP32's; the folder never holds more than the budget.
# full: a small LittleFS (24 blocks of 4096 bytes, as inisetup.py makes it) mostly filled by
#      other files: appends drop the oldest readings, never the newest, and never fail.
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

    def __init__(self, block=BLOCK, blocks=BLOCKS):
        self.block = block
        self.blocks = blocks
        self.data = bytearray(b"\xff" * (block * blocks))
        self.writes = 0
        self.erases = 0
        self.cut_at = -1  # block writes allowed before the power goes; -1: never
        self.torn = True

    def readblocks(self, block, buf, offset=0):
        at = block * self.block + offset
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
        at = block * self.block + offset
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
            return self.blocks
        if op == 5:
            return self.block
        if op == 6:  # erase
            if self.cut_at >= 0 and self.writes >= self.cut_at:
                self.writes = max(self.writes, self.cut_at + 1)
                return -5
            self.erases += 1
            self.data[arg * self.block:(arg + 1) * self.block] = b"\xff" * self.block
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


def fresh(kind, block=BLOCK, blocks=BLOCKS):
    flash = Flash(block, blocks)
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


def folder_bytes(folder):
    used = 0
    for name in os.listdir(folder):
        used += os.stat(folder + "/" + name)[6]
    return used


def run_cycles(seed):
    # Issue 23: a pop(16) over a segment end left that segment on flash; after some 26 outages
    # of 500 readings a 2 MiB LittleFS was full. Here: 4096-byte blocks, a 16 KiB budget.
    random.seed(seed)
    flash = fresh("lfs", 4096, 64)
    box = Outbox("/flash/box", MAX_BYTES)
    nxt = 0
    first = 0
    worst = 0
    for cycle in range(20):
        for k in range(80 + random.randint(0, 80)):  # an outage: readings queue up
            box.append(rec(nxt))
            nxt += 1
        first = nxt - len(box)
        while len(box):  # the link is back: drained 16 at a time
            if int(box.peek()[:6]) != first:
                bad("cycle %d: head is %s, expected %d" % (cycle, box.peek()[:6], first))
            k = min(16, len(box))
            box.pop(k)
            first += k
            used = folder_bytes("/flash/box")
            worst = max(worst, used)
            if used > MAX_BYTES:
                bad("cycle %d: the folder holds %d bytes, budget %d (%s)" % (
                    cycle, used, MAX_BYTES, sorted(os.listdir("/flash/box"))))
    box = Outbox("/flash/box", MAX_BYTES)
    if len(box) or first != nxt:
        bad("after reopen: len %d dropped %d" % (len(box), box.dropped))
    unmount()
    print("OK readings %d dropped %d worst %d erases %d writes %d" % (
        nxt, box.dropped, worst, flash.erases, flash.writes))


def fill(path, size):
    # Another file on the same filesystem, as large as it fits up to size; bytes written.
    # Synced as it grows: LittleFS forgets all of a file's writes since its last sync when one
    # fails.
    done = 0
    f = open(path, "wb")
    try:
        while done < size:
            f.write(bytes(min(512, size - done)))
            f.flush()
            done += min(512, size - done)
    except OSError:
        pass  # the filesystem is full
    try:
        f.close()
    except OSError:
        pass
    return done


def check_run(box, nxt, popped, where):
    # The store holds a run of consecutive readings ending with the newest, each intact, and
    # every reading appended is queued, popped or counted as dropped.
    got = numbers(box)
    if not got or got[-1] != nxt - 1 or got != list(range(got[0], nxt)):
        bad("%s: store holds %s..%s (%d), newest %d" % (where, got[:1], got[-1:], len(got), nxt - 1))
    if len(box) + popped + box.dropped != nxt:
        bad("%s: len %d + popped %d + dropped %d != %d appended" % (
            where, len(box), popped, box.dropped, nxt))
    return got


def run_full(seed):
    random.seed(seed)
    flash = fresh("lfs", 4096, 24)
    other = fill("/flash/other.bin", 56 * 1024)  # the app's files take most of the flash
    box = Outbox("/flash/box", 65536)  # a budget larger than the room left
    nxt = 0
    popped = 0
    for step in range(400):
        box.append(rec(nxt))  # never raises: the oldest go
        nxt += 1
        check_run(box, nxt, popped, "step %d" % step)
        if step == 200:
            fill("/flash/more.bin", 4096)  # another file grabs a block meanwhile
        if random.random() < 0.1:
            k = min(len(box) - 1, random.randint(1, 16))
            if k > 0:
                box.pop(k)
                popped += k
    got = check_run(box, nxt, popped, "end")
    dropped = box.dropped
    box = Outbox("/flash/box", 65536)
    if numbers(box) != got or box.dropped != dropped:
        bad("reopened store differs: %d records, dropped %d" % (len(box), box.dropped))
    # Other files take every block. A drained store frees its spent segment for the next
    # reading; a store that holds nothing says so, in one line, and works once there is room.
    box.pop(len(box))
    empty = Outbox("/flash/box2", 65536)
    fill("/flash/last.bin", 1 << 20)
    box.append(rec(nxt))
    nxt += 1
    fill("/flash/last2.bin", 1 << 20)  # what the spent segment left free
    try:
        empty.append(bytes(2000))  # too big to sit inline in LittleFS's metadata
        bad("an append on a filesystem with no room left returned")
    except OSError as e:
        if "filesystem is full" not in str(e) or "\n" in str(e):
            raise
    os.remove("/flash/last.bin")
    os.remove("/flash/last2.bin")
    empty.append(bytes(2000))
    if [len(r) for r in Outbox("/flash/box2", 65536).records()] != [2000]:
        bad("the empty store does not work once the filesystem has room")
    if numbers(Outbox("/flash/box", 65536)) != [nxt - 1]:
        bad("the drained store does not hold its one new reading")
    unmount()
    print("OK appended %d dropped %d other %d" % (nxt, dropped, other))


kind = sys.argv[2]
if sys.argv[3] == "ops":
    run_ops(kind, int(sys.argv[4]))
elif sys.argv[3] == "cycles":
    run_cycles(int(sys.argv[4]))
elif sys.argv[3] == "full":
    run_full(int(sys.argv[4]))
else:
    run_cuts(kind, int(sys.argv[4]), sys.argv[5] == "torn")
