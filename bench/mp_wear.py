# Device side of bench/wear.py, run by the real micropython: flash wear of one design of
# store-and-forward on the sim's counting NOR chip (host_tools/edgekit/sim/board/_simnor.py), with
# MicroPython's own LittleFS (vfs.VfsLfs2) where the design uses a filesystem.
#
#   micropython mp_wear.py WORKDIR DESIGN READINGS
#
# The workload, the same for every design: outages of OUTAGE readings of 120 bytes in the
# client's format (property bag, newline, JSON body), each queued offline, then drained as
# the client does, popping 16 at a time. Erase counts do not depend on timing: the same
# arguments give the same figures.
# Prints one JSON line: the chip's counters for the run, and the seconds it took.
import json
import os
import sys
import time
import vfs

from _simnor import Nor

OUTAGE = 240  # four minutes of one reading a second
BLOCKS = 512  # 2 MiB, the filesystem of a 4 MB ESP32
PART_BLOCKS = 16  # design a: a 64 KiB partition, the outbox's default budget
MAX_BYTES = 65536


def reading(k):
    # 120 bytes as client.py queues them: bag + b"\n" + body.
    bag = b"$.mid=%010d&$.ct=application%%2Fjson&$.ce=utf-8" % k
    body = b'{"t":%d.%d,"h":41.3,"seq":%d}' % (20 + k % 7, k % 10, k)
    return bag + b"\n" + body + b" " * (120 - len(bag) - 1 - len(body))


def lfs(workdir, **opts):
    # A fresh chip formatted as inisetup.py does (plus opts for design c), mounted at /w.
    nor = Nor(workdir, "wear.img", blocks=BLOCKS, autosave=False)
    nor.wipe()  # whatever a previous design left
    vfs.VfsLfs2.mkfs(nor, **opts)
    vfs.mount(vfs.VfsLfs2(nor, **opts), "/w")
    return nor


class PlainFile:
    # The baseline: a synced 120-byte append to a plain file, the least a filesystem store
    # costs. Draining removes the file.
    def __init__(self, path):
        self.path = path
        self.n = 0

    def __len__(self):
        return self.n

    def append(self, data):
        f = open(self.path, "ab")
        f.write(data)
        f.flush()
        f.close()
        self.n += 1

    def pop(self, k):
        self.n -= k
        if not self.n:
            os.remove(self.path)


class FilePerReading:
    # Design d: one small file per reading. LittleFS keeps a file no larger than its cache
    # (readsize/progsize x 4, here 128 bytes) inline in its folder's metadata log, so an append
    # is a metadata commit, and a block is erased only when the log compacts.
    def __init__(self, path):
        self.path = path
        os.mkdir(path)
        self.head = self.tail = 0

    def __len__(self):
        return self.tail - self.head

    def append(self, data):
        f = open("%s/%d" % (self.path, self.tail), "wb")
        f.write(data)
        f.close()
        self.tail += 1

    def pop(self, k):
        for _ in range(k):
            os.remove("%s/%d" % (self.path, self.head))
            self.head += 1


def store(design, workdir):
    # (the chip, the store, readings per record) for a design.
    if design == "partition":
        # The firmware's partition log (azure_edge/partlog.py) on a 64 KiB raw partition
        # (`edgekit flash` gives 256 KiB: lifetimes scale with the blocks, bench/wear.py's
        # PART_SIZES); the chip has esp32.Partition's block protocol.
        from azure_edge.partlog import PartLog
        nor = Nor(workdir, "part.img", blocks=PART_BLOCKS, autosave=False)
        nor.wipe()
        return nor, PartLog(nor, workdir + "/outbox"), 1
    if design.startswith("partlog"):
        from proto_partlog import PartLog
        nor = Nor(workdir, "part.img", blocks=PART_BLOCKS, autosave=False)
        nor.wipe()
        return nor, PartLog(nor), _batch(design)
    if design == "outbox_fat":
        # CircuitPython's CIRCUITPY is FAT. Modelled as FAT on 4096-byte sectors where every
        # sector write is an erase (no wear levelling under the filesystem).
        nor = Nor(workdir, "wear.img", blocks=BLOCKS, autosave=False)
        nor.wipe()
        vfs.VfsFat.mkfs(nor)
        vfs.mount(vfs.VfsFat(nor), "/w")
        from azure_edge.outbox import Outbox
        return nor, Outbox("/w/outbox", MAX_BYTES), 1
    opts = {}
    if "prog256" in design:
        opts = {"readsize": 256, "progsize": 256}
    if "look256" in design:
        opts["lookahead"] = 256
    nor = lfs(workdir, **opts)
    if design == "plain":
        return nor, PlainFile("/w/plain.bin"), 1
    if design.startswith("files"):
        return nor, FilePerReading("/w/files"), 1
    from azure_edge.outbox import Outbox
    return nor, Outbox("/w/outbox", MAX_BYTES), _batch(design)


def _batch(design):
    # "..._batchK": K readings queued in the same moment go in one record.
    i = design.find("batch")
    return int(design[i + 5:]) if i >= 0 else 1


def run(workdir, design, readings):
    nor, box, per = store(design, workdir)
    e0, p0 = nor.erases, nor.programmed
    t0 = time.ticks_ms()
    k = 0
    drain = 0  # erases while draining: acknowledging what was sent
    while k < readings:
        for _ in range(OUTAGE // per):
            box.append(b"".join(reading(k + i) for i in range(per)) if per > 1 else reading(k))
            k += per
        e = nor.erases
        while len(box):
            box.pop(min(16, len(box)) if per == 1 else 1)  # a batch record is one PUBLISH
        drain += nor.erases - e
    c = nor.counters()
    out = {"design": design, "readings": k, "readings_per_record": per,
           "erases": c["erases"] - e0, "programmed_bytes": c["programmed_bytes"] - p0,
           "hottest_block_erases": c["hottest_erases"], "blocks": c["blocks"],
           "blocks_erased": sum(1 for n in c["erases_per_block"] if n),
           "program_violations": c["program_violations"], "drain_erases": drain,
           "seconds": time.ticks_diff(time.ticks_ms(), t0) / 1000}
    print(json.dumps(out))


run(sys.argv[1], sys.argv[2], int(sys.argv[3]))
