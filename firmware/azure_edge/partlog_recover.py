# Reading the partition log (azure_edge/partlog.py) back from flash: at boot, and when a record
# turns out damaged. Only reads, never writes, so a cut while it runs changes nothing. Loaded
# for those moments and unloaded after, as outbox_recover is.
import struct
from binascii import crc32

from azure_edge.partlog import HEAD, MAGIC, _size

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

_HDR = const(8)  # record header (as in partlog.py)
_MASK = const(0xFFFFFFFF)
_CHUNK = const(256)  # bytes read at a time when checking; bounds RAM use


def load(log):
    """Set log's state from the blocks on flash: their order by sequence number, where each
    block's good records end, the head (the oldest record not popped) and the tail."""
    part = log.part
    raw = bytearray(HEAD)
    found = []
    top = None  # the newest header: its floor and dropped count hold
    for b in range(log._nb):
        part.readblocks(b, raw, 0)
        magic, seq, floor, dropped, crc = struct.unpack("<IIIII", raw)
        if magic != MAGIC or crc32(raw[:16]) & _MASK != crc:
            continue  # erased, never used, or its header torn by a cut: free
        found.append((seq, b))
        if top is None or seq > top[0]:
            top = (seq, floor, dropped)
    found.sort()
    log._bseq, log._floor, log.dropped = top if top else (0, 0, 0)
    log._blocks = []
    log._ends = []
    log._bseqs = []
    log._n = 0
    log.bytes = 0
    log._head = HEAD
    log._shut = False
    buf = memoryview(bytearray(_CHUNK))
    for seq, b in found:
        if seq < log._floor:
            continue  # dropped by a newer header: free
        queued, end, shut = _walk(log, b, buf)
        if queued >= 0 and not log._n:
            # The first record not popped is the head; blocks before it are free.
            del log._blocks[:], log._ends[:], log._bseqs[:]
            log._head = queued
        log._blocks.append(b)
        log._ends.append(end)
        log._bseqs.append(seq)
        if log._n or queued >= 0:
            start = log._head if len(log._blocks) == 1 else HEAD
            n, size = _count(log, b, start, end)
            log._n += n
            log.bytes += size
        log._shut = shut
    if not log._n:
        del log._blocks[:-1], log._ends[:-1], log._bseqs[:-1]  # an empty log keeps its tail
        log._head = log._ends[-1] if log._ends else HEAD


def _walk(log, b, buf):
    # Check block b's records: return (offset of the first not popped, or -1; where the good
    # records end; whether appends must go elsewhere: after a torn or damaged record, or bits
    # programmed past the end).
    part = log.part
    bs = log._bs
    h = log._hdr
    at = HEAD
    first = -1
    while at + _HDR <= bs:
        part.readblocks(b, h, at)
        n, state = struct.unpack_from("<HB", h)
        if n == 0xFFFF:
            return first, at, not _erased(part, b, at, bs, buf)
        if at + _size(n) > bs or not _crc_ok(part, b, at, n, h, buf):
            return first, at, True
        if first < 0 and state == 0xFF:
            first = at
        at += _size(n)
    return first, at, True


def _count(log, b, at, end):
    # Records and bytes from `at` to `end` in block b (checked already).
    n = size = 0
    while at < end:
        log.part.readblocks(b, log._hdr, at)
        k = _size(struct.unpack_from("<H", log._hdr)[0])
        at += k
        size += k
        n += 1
    return n, size


def _crc_ok(part, b, at, n, h, buf):
    c = crc32(h[:2])
    crc = struct.unpack_from("<I", h, 4)[0]
    at += _HDR
    while n:
        k = n if n < _CHUNK else _CHUNK
        part.readblocks(b, buf[:k], at)
        c = crc32(buf[:k], c)
        at += k
        n -= k
    return c & _MASK == crc


def _erased(part, b, at, bs, buf):
    # True when every byte from `at` to the block's end still reads 0xFF: a cut mid-program
    # can leave bits cleared past a header that still reads erased.
    while at < bs:
        k = bs - at if bs - at < _CHUNK else _CHUNK
        part.readblocks(b, buf[:k], at)
        for x in buf[:k]:
            if x != 0xFF:
                return False
        at += k
    return True


def adopt(log, max_bytes, say):
    """Move the readings an earlier firmware queued in the file outbox at log.path to the log's
    tail, oldest first, then remove its files; return how many moved. For a board's first boot
    with the partition while files remain (a table written without erasing the filesystem, the
    sim board started with an earlier state); startup loads this only when the folder exists."""
    import os
    from azure_edge.outbox import Outbox

    box = Outbox(log.path, max_bytes)
    moved = 0
    while len(box):
        k = 0
        for r in box.records():
            try:
                log.append(r)
                moved += 1
            except ValueError:
                # Larger than a block (the file outbox took up to 7/8 of outbox_bytes): it can
                # never be queued here, and kept in the files it would stop every boot.
                say("a reading of %d bytes does not fit the partition: dropped" % len(r))
            k += 1
            if k == 16:
                break
        if k:
            # After the appends: a cut before this pop sends up to 16 readings twice (their
            # $.mid lets the cloud drop the copies), never loses one.
            box.pop(k)
        elif box.peek() is None:
            break  # the rest was damaged: peek() skipped it
    box = None
    # Segments before the head: a cut between leaves a head that names no segment, an empty
    # outbox, never segments without their head, which would read as all queued again.
    names = os.listdir(log.path)
    names.sort(key=lambda n: n[:4] == "head")
    try:
        for n in names:
            os.remove(log.path + "/" + n)
        os.rmdir(log.path)
    except OSError as e:
        say("old outbox %s not removed (%s); its readings are in the partition" % (log.path, e))
    say("%d reading(s) moved from the old outbox %s to the partition" % (moved, log.path))
    return moved
