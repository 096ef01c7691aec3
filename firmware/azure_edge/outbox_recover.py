# Opening the outbox and repairing it after a crash or flash damage. Needed at boot and on
# damage only, so outbox.py loads this module for those moments and unloads it after:
# on a board its code would otherwise sit in RAM for good (about 4 KB).
import os
import struct
from binascii import crc32

from azure_edge.outbox import OutboxError, _durable, _durable_fs, _remove, _replace, _size

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

_HDR = const(8)  # record header: length, CRC (as in outbox.py)
_HEAD = const(20)  # head file: seq, offset, dropped, generation, CRC
_CHUNK = const(256)  # bytes read at a time when checking or copying; bounds RAM use
_MASK = const(0xFFFFFFFF)
_BUF = memoryview(bytearray(_CHUNK))  # freed with the module


def open_store(box):
    """Create the store's folder if needed, then recover the store's state from flash."""
    _makedirs(box.path)
    load(box)


def load(box):
    """Rebuild the store's state from its files, finishing or undoing what a crash cut short."""
    folder = box.path
    seqs = []
    tmps = []
    # The budget counts what is on flash: the head file (counted before it exists) and any
    # other file in the folder. Only the outbox writes there, so counting them here is enough.
    other = _HEAD
    for name in os.listdir(folder):
        path = folder + "/" + name
        if _is_dir(path):
            continue
        if len(name) == 12 and name[:8].isdigit() and name[8:] == ".seg":
            seqs.append(int(name[:8]))
        elif len(name) == 12 and name[:8].isdigit() and name[8:] == ".tmp":
            tmps.append(int(name[:8]))
        elif name != "head" and name != "head.tmp":
            other += _size(path)  # head.tmp is ours and goes at the next pop
    # The last eighth is headroom for the consumed front of the oldest segment, which stays on
    # flash until the whole segment is popped and deleted.
    box._cap = box.max_bytes - box._seg_max - other
    for seq in tmps:
        tmp = "%s/%08d.tmp" % (folder, seq)
        if seq in seqs:
            _remove(tmp)  # the copy was not finished: the original still stands
        else:
            os.rename(tmp, box._seg(seq))  # the original was removed: the copy is whole
            seqs.append(seq)
    seqs.sort()

    head = _read_head_file(box, "head")
    alt = _read_head_file(box, "head.tmp")
    promote = alt is not None and (head is None or alt[3] > head[3])
    if promote:
        head = alt
    if head is None:
        head = (seqs[0] if seqs else 0, 0, 0, 0)
    box._hseq, box._hoff, box.dropped, box._gen = head
    if promote:
        # Make head.tmp the head before anything overwrites head.tmp.
        _replace(folder + "/head.tmp", folder + "/head")
        _durable_fs(folder)

    for seq in seqs:
        if seq < box._hseq:
            _remove(box._seg(seq))  # consumed; a crash came before its removal
    seqs = [s for s in seqs if s >= box._hseq]
    if seqs and seqs[0] > box._hseq:
        box._hseq = seqs[0]
        box._hoff = 0
    box._tseq = seqs[-1] if seqs else box._hseq

    box._n = 0
    box.bytes = 0
    for seq in seqs:
        start = box._hoff if seq == box._hseq else 0
        size = _size(box._seg(seq))
        newest = seq == box._tseq
        if start > size:
            start = size  # the popped front was cut off with a torn tail
            box._hoff = size
        end, count = _scan(box, seq, start, size, newest)
        while newest and end < size:
            # A bad record with good ones after it is damage, not a torn tail: keep what follows.
            # The damaged span counts as one record; reading it skips it (Outbox._skip_corrupt).
            good = resync(box, seq, end + 1, size)
            if good >= size:
                break
            end, more = _scan(box, seq, good, size, True)
            count += 1 + more
        if newest and end < size:
            truncate(box, seq, end)  # a torn tail from a power cut mid-append
        box._n += count
        box.bytes += end - start
        if newest:
            box._tsize = end
    if not seqs:
        box._tsize = 0
    box._hsize = -1
    box.start = box._hseq  # the oldest segment on flash: the next head write deletes from here

def resync(box, seq, pos, size):
    """Offset of the first record at or after pos in segment seq whose header and CRC check
    out, or size when none does."""
    f = open(box._seg(seq), "rb")
    try:
        while pos + _HDR <= size:
            f.seek(pos)
            if f.readinto(box._hdr) != _HDR:
                break
            n, crc = struct.unpack("<II", box._hdr)
            if pos + _HDR + n <= size and _crc_ok(box, f, n, crc):
                return pos
            pos += 1
    finally:
        f.close()
    return size


def _is_dir(path):
    try:
        return os.stat(path)[0] & 0x4000
    except OSError:
        return False


def _read_head_file(box, name):
    try:
        f = open(box.path + "/" + name, "rb")
    except OSError:
        return None
    try:
        raw = f.read(_HEAD + 1)
    finally:
        f.close()
    if len(raw) != _HEAD:
        return None
    fields = struct.unpack("<IIIII", raw)
    if crc32(raw[:16]) & _MASK != fields[4]:
        return None
    return fields[:4]

def _scan(box, seq, pos, size, check):
    # Walk records from pos; return (offset after the last good record, records).
    # With check set, CRCs are verified (the newest segment, the only one that can be
    # torn); otherwise only headers are read.
    count = 0
    f = open(box._seg(seq), "rb")
    try:
        f.seek(pos)
        while pos + _HDR <= size:
            if f.readinto(box._hdr) != _HDR:
                break
            n, crc = struct.unpack("<II", box._hdr)
            if pos + _HDR + n > size:
                break
            if check:
                if not _crc_ok(box, f, n, crc):
                    break
            else:
                f.seek(pos + _HDR + n)
            pos += _HDR + n
            count += 1
    finally:
        f.close()
    return pos, count

def _crc_ok(box, f, n, crc):
    c = crc32(box._hmv[:4])
    buf = _BUF
    while n:
        k = n if n < _CHUNK else _CHUNK
        if f.readinto(buf[:k]) != k:
            return False
        c = crc32(buf[:k], c)
        n -= k
    return c & _MASK == crc

def truncate(box, seq, end):
    """Cut segment `seq` back to its first `end` bytes (a torn tail)."""
    # No truncate() on MicroPython: copy the good prefix, then swap it in. Costs one
    # segment rewrite per crash, never during normal operation.
    src = box._seg(seq)
    tmp = "%s/%08d.tmp" % (box.path, seq)
    buf = _BUF
    fi = open(src, "rb")
    try:
        fo = open(tmp, "wb")
        try:
            left = end
            while left:
                k = left if left < _CHUNK else _CHUNK
                got = fi.readinto(buf[:k])
                if not got:
                    break
                fo.write(buf[:got])
                left -= got
            _durable(fo)
        finally:
            fo.close()
    except OSError:
        _remove(tmp)  # a copy a full filesystem cut short: give its room back now
        raise
    finally:
        fi.close()
    _replace(tmp, src)
    _durable_fs(box.path)


def _makedirs(path):
    parts = path.split("/")
    for i in range(1, len(parts) + 1):
        part = "/".join(parts[:i])
        if part:
            try:
                os.mkdir(part)
            except OSError:
                pass  # exists already, or fails the check below with a clear message
    try:
        is_dir = os.stat(path)[0] & 0x4000
    except OSError:
        is_dir = 0
    if not is_dir:
        raise OutboxError("outbox folder %s cannot be created; check the path and free space" % path)
