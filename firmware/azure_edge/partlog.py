# The outbox as a log on a raw flash partition (esp32.Partition), for MicroPython on ESP32
# when the partition table has a data partition labelled "outbox" (docs/outbox.md).
#
# A file store on LittleFS erases about one 4 KiB block per synced append; this log erases a
# block only when it reuses it, so a 120-byte reading costs about 1/31 of an erase.
#   block:  [magic u32][bseq u32][floor u32][dropped u32][crc32 of the 16 bytes u32]
#   record: [len u16][state u8][0xFF][crc32 of len and payload u32][payload][0xFF pad to 4]
# - Blocks are taken in ring order, each new one erased and given the next sequence number
#   (bseq), so the order of blocks is found again after a power cut by reading their headers.
#   Its old magic is cleared before the erase: an erase cut short leaves no valid old header.
# - append programs one record where the log ends. esp_partition_write has returned when
#   writeblocks does: the record is on flash.
# - pop clears the record's state byte (0xFF to 0x00) in place: NOR clears bits without an
#   erase, so acknowledging readings costs no erase at all.
# - At most all blocks but one hold records. When a new block would take the last free one,
#   its header raises `floor` past the oldest block and adds that block's queued records to
#   `dropped`: one program drops them, and the old block is erased only when reused. A cut
#   before that header is whole leaves the old state (its CRC fails: the block is free).
# - A torn record fails its CRC and ends its block's log; appends go to a new block.
import struct
from binascii import crc32

from azure_edge import run_and_unload

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

MAGIC = const(0x4C4B4445)  # "EDKL"
HEAD = const(20)  # block header
_HDR = const(8)  # record header
_MASK = const(0xFFFFFFFF)


def _size(n):
    # Flash a record of n bytes takes: header, payload, padding to 4.
    return (_HDR + n + 3) & ~3


class PartLog:
    """The outbox's FIFO of byte records on a raw partition; survives power cuts."""

    def __init__(self, part, path):
        """Open the log on `part` (esp32.Partition or any block device with its protocol),
        recovering it after a crash. `path`: the file outbox's folder, beside which readings
        held aside are kept (azure_edge/aside.py)."""
        self.part = part
        self.path = path
        self._bs = part.ioctl(5, 0)
        self._nb = part.ioctl(4, 0)
        if self._nb < 2:
            raise ValueError("outbox partition has %d block(s); it needs at least 2" % self._nb)
        self.max_bytes = (self._nb - 1) * (self._bs - HEAD)
        self._hdr = bytearray(_HDR)
        self._state = b"\x00"
        self._zero = bytes(4)
        run_and_unload("partlog_recover", "load", self)

    def __len__(self):
        return self._n

    def append(self, data):
        """Queue one record; return once it is on flash. A full log drops its oldest block's
        records (counted in `dropped`)."""
        if isinstance(data, str):
            raise TypeError("outbox records are bytes; encode text first")
        n = len(data)
        need = _size(n)
        if need > self._bs - HEAD:
            raise ValueError("record of %d bytes does not fit an outbox partition block (at most %d)"
                             % (n, self._bs - HEAD - _HDR))
        if self._shut or not self._blocks or self._ends[-1] + need > self._bs:
            self._new_block()
        b = self._blocks[-1]
        at = self._ends[-1]
        h = self._hdr
        struct.pack_into("<HBB", h, 0, n, 0xFF, 0xFF)
        struct.pack_into("<I", h, 4, crc32(data, crc32(h[:2])) & _MASK)
        self._shut = True  # until proven whole: a failed program leaves a torn record
        self.part.writeblocks(b, h, at)
        if n:
            self.part.writeblocks(b, data, at + _HDR)
        self._shut = False
        self._ends[-1] = at + need
        if not self._n:
            self._head = at
        self._n += 1
        self.bytes += need

    def peek(self):
        """Return the oldest record, or None when the log is empty."""
        while self._n:
            data = self._read(self._blocks[0], self._head)
            if data is not None:
                return data
            run_and_unload("partlog_recover", "load", self)  # damaged: read the log afresh
        return None

    def pop(self, count=1):
        """Remove the `count` oldest records; each is marked popped on flash on return."""
        if not 0 < count <= self._n:
            raise IndexError("pop %d from an outbox of %d" % (count, self._n))
        while count:
            self.part.writeblocks(self._blocks[0], self._state, self._head + 2)
            size = self._len_at(self._blocks[0], self._head)
            self._head += size
            self.bytes -= size
            self._n -= 1
            self._settle()
            count -= 1

    def records(self):
        """Yield the queued records oldest first without removing them. Appending while
        iterating is safe (new records are not yielded), and so is popping those yielded."""
        left = self._n
        if not left:
            return
        q = self._bseqs[0]  # blocks by sequence number: a block reused under us is not ours
        at = self._head
        while left:
            try:
                i = self._bseqs.index(q)
            except ValueError:
                return  # dropped under us: the log was full
            if at >= self._ends[i]:
                if i + 1 >= len(self._blocks):
                    return
                q = self._bseqs[i + 1]
                at = HEAD
                continue
            data = self._read(self._blocks[i], at)
            if data is None:
                return  # damaged: peek() skips it
            yield data
            at += _size(len(data))
            left -= 1

    # -- internals ---------------------------------------------------------

    def _read(self, b, at):
        # The record at offset `at` of block b, or None when its CRC fails.
        h = self._hdr
        self.part.readblocks(b, h, at)
        n = struct.unpack_from("<H", h)[0]
        if at + _size(n) > self._bs:
            return None
        data = bytearray(n)
        if n:
            self.part.readblocks(b, data, at + _HDR)
        if crc32(data, crc32(h[:2])) & _MASK != struct.unpack_from("<I", h, 4)[0]:
            return None
        return data

    def _len_at(self, b, at):
        # Flash taken by the record at `at` of block b.
        self.part.readblocks(b, self._hdr, at)
        return _size(struct.unpack_from("<H", self._hdr)[0])

    def _settle(self):
        # Keep the head in the first block: blocks it has left hold only popped (or dropped)
        # records, so they are free, erased when reused. An empty log keeps only its tail.
        while len(self._blocks) > 1 and (not self._n or self._head >= self._ends[0]):
            self._blocks.pop(0)
            self._ends.pop(0)
            self._bseqs.pop(0)
            self._head = HEAD

    def _new_block(self):
        # Take the block after the tail in the ring. When it is the last free one, the new
        # header raises floor past the oldest block and counts its queued records in dropped:
        # one program drops them, and a cut before it is whole drops nothing.
        dropped = self.dropped
        floor = self._floor
        k = gone = 0
        if self._blocks and len(self._blocks) >= self._nb - 1:
            floor = self._bseqs[0] + 1
            at = self._head if self._n else self._ends[0]
            while at < self._ends[0]:
                size = self._len_at(self._blocks[0], at)
                at += size
                gone += size
                k += 1
            dropped += k
        b = (self._blocks[-1] + 1) % self._nb if self._blocks else 0
        # Clear the old magic first (a program: no erase). An erase the power cuts short may
        # leave any bits; without a magic the block reads as free, never as old records.
        self.part.writeblocks(b, self._zero, 0)
        self.part.ioctl(6, b)
        raw = struct.pack("<IIII", MAGIC, self._bseq + 1, floor, dropped)
        self.part.writeblocks(b, raw + struct.pack("<I", crc32(raw) & _MASK), 0)
        self._bseq += 1
        if floor != self._floor:
            self._floor = floor
            self.dropped = dropped
            self._n -= k
            self.bytes -= gone
            self._ends[0] = 0  # nothing left in it: _settle lets it go
            self._head = 0
        self._blocks.append(b)
        self._ends.append(HEAD)
        self._bseqs.append(self._bseq)
        self._settle()
        self._shut = False
