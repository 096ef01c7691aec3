# Bench-only prototype (issue 23 part 4, design a): the outbox as a log on a raw flash
# partition, the way ESP-IDF's NVS keeps its entries. Not used by the firmware; bench/wear.py
# measures its flash wear beside the outbox's on the same counting NOR chip.
#
# The partition is anything with esp32.Partition's block interface: readblocks(b, buf, off),
# writeblocks(b, buf, off) (programs in place, no erase), ioctl(4/5) for the geometry and
# ioctl(6, b) to erase. Blocks are used round-robin, so every block wears the same.
#
#   block:  [magic u32][seq u32][crc32 of the 8 bytes u32] then records, packed
#   record: [len u16][state u8][0xFF][crc32 of len and payload u32][payload][pad to 4]
#
# - append programs one record where the log ends: no erase until a block is full, then the
#   next free block is erased and given the next seq. It returns once the program returned,
#   as esp_partition_write does, so the record is durable.
# - pop clears the record's state byte (0xFF to 0x00) in place: NOR can clear bits without
#   an erase. A block whose records are all popped is free; it is erased when reused.
# - open reads the block headers, orders blocks by seq, and walks the records. A record
#   whose CRC fails (a power cut mid-program) ends its block: appends go to a new block.
#   A torn state byte (some bits cleared) reads as popped: the pop happened or not, as with
#   the outbox's head. A torn block header fails its CRC and the block counts as free.
# - full: when no block is free the oldest block is erased, its queued records dropped.
import struct
from binascii import crc32

MAGIC = 0x4C4B4445  # "EDKL"
HDR = 12
REC = 8


def _pad(n):
    return (n + 3) & ~3


class PartLog:
    def __init__(self, part):
        self.p = part
        self.bs = part.ioctl(5, 0)
        self.nb = part.ioctl(4, 0)
        self._h = bytearray(REC)
        self.dropped = 0
        self._open()

    def _open(self):
        seqs = {}
        h = bytearray(HDR)
        for b in range(self.nb):
            self.p.readblocks(b, h, 0)
            magic, seq, crc = struct.unpack("<III", h)
            if magic == MAGIC and crc == crc32(h[:8]):
                seqs[b] = seq
        self.seq = max(seqs.values()) if seqs else 0
        self.used = sorted(seqs, key=lambda b: seqs[b])  # oldest first
        self.count = 0
        self.head = None  # (block, offset) of the oldest queued record
        self.tail = None  # (block, offset) where the next record goes; None: a new block
        for b in self.used:
            off = self._walk(b, b == self.used[-1])
        if self.used:
            self.tail = (self.used[-1], off)
        # Blocks before the head's hold only popped records: free for reuse.
        while self.used and (self.head is None or self.used[0] != self.head[0]):
            if len(self.used) == 1 and self.head is None:
                break  # the newest block stays the tail, even when all popped
            self.used.pop(0)

    def _walk(self, b, newest):
        # Counts block b's queued records and notes the head; returns where its log ends,
        # or the block size when a torn record closed it.
        off = HDR
        h = self._h
        while off + REC <= self.bs:
            self.p.readblocks(b, h, off)
            n, state, _, crc = struct.unpack("<HBBI", h)
            if n == 0xFFFF:
                return off
            if newest or off + REC + n > self.bs:
                data = bytearray(n)
                if off + REC + n > self.bs:
                    return self.bs
                self.p.readblocks(b, data, off + REC)
                if crc32(data, crc32(h[:2])) != crc:
                    return self.bs  # torn by a cut: nothing more goes in this block
            if state == 0xFF:
                self.count += 1
                if self.head is None:
                    self.head = (b, off)
            off += _pad(REC + n)
        return off

    def __len__(self):
        return self.count

    def append(self, data):
        need = _pad(REC + len(data))
        if need > self.bs - HDR:
            raise ValueError("record too large")
        if self.tail is None or self.tail[1] + need > self.bs:
            self._new_block()
        b, off = self.tail
        rec = bytearray(need)
        for i in range(REC + len(data), need):
            rec[i] = 0xFF  # padding stays erased
        struct.pack_into("<HBBI", rec, 0, len(data), 0xFF, 0xFF,
                         crc32(data, crc32(struct.pack("<H", len(data)))))
        rec[REC:REC + len(data)] = data
        self.p.writeblocks(b, rec, off)
        self.tail = (b, off + need)
        self.count += 1
        if self.head is None:
            self.head = (b, off)

    def _new_block(self):
        if len(self.used) == self.nb:
            self._drop_oldest()
        b = (self.used[-1] + 1) % self.nb if self.used else 0
        while b in self.used:
            b = (b + 1) % self.nb
        self.p.ioctl(6, b)
        self.seq += 1
        h = struct.pack("<II", MAGIC, self.seq)
        self.p.writeblocks(b, h + struct.pack("<I", crc32(h)), 0)
        self.used.append(b)
        self.tail = (b, HDR)

    def _drop_oldest(self):
        # The oldest block is the head's (blocks the head left are freed at once).
        b = self.used[0]
        while self.head is not None and self.head[0] == b:
            self.count -= 1
            self.dropped += 1
            self._advance()

    def peek(self):
        if self.head is None:
            return None
        b, off = self.head
        self.p.readblocks(b, self._h, off)
        data = bytearray(struct.unpack("<H", self._h[:2])[0])
        self.p.readblocks(b, data, off + REC)
        return bytes(data)

    def pop(self, n=1):
        if n > self.count:
            raise IndexError("pop from a shorter log")
        for _ in range(n):
            b, off = self.head
            self.p.writeblocks(b, b"\x00", off + 2)  # state: popped
            self.count -= 1
            self._advance()

    def _advance(self):
        # Moves the head to the next queued record; frees a block the head leaves.
        b, off = self.head
        self.p.readblocks(b, self._h, off)
        off += _pad(REC + struct.unpack("<H", self._h[:2])[0])
        end = self.tail[1] if self.tail and self.tail[0] == b else self.bs
        if off + REC <= end:
            self.p.readblocks(b, self._h, off)
            if struct.unpack("<H", self._h[:2])[0] != 0xFFFF:
                self.head = (b, off)
                return
        if self.count == 0:
            self.head = None
            del self.used[:-1]  # all popped: only the tail's block stays in use
            return
        i = self.used.index(b)
        if b != self.used[-1]:
            self.used.pop(i)  # nothing queued is left in it: free, erased when reused
        self.head = (self.used[i], HDR)
