# Crash-safe store-and-forward on flash: a FIFO of byte records that survives power cuts.
#
# Layout in the store's folder (docs/outbox.md has the details):
#   NNNNNNNN.seg  segment files, appended to only; records are [len u32][crc32 u32][payload]
#                 little-endian, the CRC covering the length bytes and the payload.
#   head          where the oldest record is: segment, offset, dropped count, generation, CRC.
#                 Replaced whole by writing head.tmp then renaming it over head.
# In RAM, `start` is the segment the head on flash names: a head write deletes from it up to
# the new head segment. (A built-in name: it costs no interned string.)
# Appends only ever add to the newest segment, so a power cut can tear only its tail;
# popping rewrites the 20-byte head file, never a segment.
import os
import struct
from binascii import crc32

from azure_edge import run_and_unload

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

_HDR = const(8)  # record header: length, CRC
_SEGMENTS = const(8)  # the bound is split into this many segments
_MIN_BYTES = const(512)
_MASK = const(0xFFFFFFFF)
_ENOSPC = const(28)

# CPython and most hosts: fsync one file. MicroPython boards: os.sync() flushes the
# mounted filesystems. The MicroPython unix port has neither: its writes go straight
# to the kernel, which keeps them when the process dies.
_fsync = getattr(os, "fsync", None)
_sync = getattr(os, "sync", None)


def _recover(fn, *args):
    # Opening and repairs live in outbox_recover, loaded only while they run.
    return run_and_unload("outbox_recover", fn, *args)


class OutboxError(OSError):
    """The store's folder cannot be used (not a folder, or not writable)."""


def _durable(f):
    f.flush()
    if _fsync:
        _fsync(f.fileno())


def _durable_fs(folder):
    if _fsync:
        # A rename or a new file is durable on POSIX only once its folder is synced.
        try:
            fd = os.open(folder, os.O_RDONLY)
        except (OSError, AttributeError):
            return
        try:
            _fsync(fd)
        except OSError:
            pass  # some hosts cannot fsync a folder; the rename still happened
        os.close(fd)
    elif _sync:
        _sync()


def _size(name):
    try:
        return os.stat(name)[6]
    except OSError:
        return -1


def _remove(name):
    try:
        os.remove(name)
    except OSError:
        pass  # already gone: a crash may have happened after an earlier remove


def _replace(src, dst):
    # FAT (as CircuitPython mounts it) refuses to rename onto an existing file. The
    # fallback opens a window where only src exists; the reader of the store knows to
    # take src then (see outbox_recover.load), so no crash in between loses anything.
    try:
        os.rename(src, dst)
    except OSError:
        _remove(dst)
        os.rename(src, dst)


class Outbox:
    """A FIFO of byte records on flash that survives power cuts, bounded in bytes."""

    def __init__(self, path, max_bytes=65536):
        """Open the store in folder `path` (created if absent), recovering it after a crash.

        `max_bytes` bounds the flash the segment files use; when an append would
        exceed it, the oldest records are dropped and counted in `dropped`.
        """
        if max_bytes < _MIN_BYTES:
            raise ValueError("outbox max_bytes must be at least %d, got %d" % (_MIN_BYTES, max_bytes))
        self.path = path.rstrip("/") or "/"
        self.max_bytes = max_bytes
        self._seg_max = max_bytes // _SEGMENTS
        self._hdr = bytearray(_HDR)
        self._hmv = memoryview(self._hdr)
        self._dirty = False
        _recover("open_store", self)

    def __len__(self):
        return self._n

    # -- public operations -------------------------------------------------

    def append(self, data):
        """Queue one record; return only once it is durable on flash.

        Drops the oldest records (counted in `dropped`) when the bound is hit, or when the
        filesystem is full. Raises ValueError for a record larger than the store can ever
        hold, OutboxError when the filesystem cannot take it even with the store empty.
        """
        if isinstance(data, str):
            raise TypeError("outbox records are bytes; encode text first")
        n = len(data)
        need = _HDR + n
        if need > self._cap:
            raise ValueError("record of %d bytes does not fit an outbox of %d bytes (%d for records);"
                             " raise max_bytes" % (n, self.max_bytes, self._cap))
        full = False
        while True:
            try:
                if full:
                    run_and_unload("room", "room", self)  # azure_edge/room.py
                if self._dirty:
                    _recover("truncate", self, self._tseq, self._tsize)
                    self._dirty = False
                if self.bytes + need > self._cap:
                    while self.bytes + need > self._cap:
                        size = self._head_size()
                        if size:
                            self._forget(size)
                            self.dropped += 1
                    self._commit()
                if self._tsize and self._tsize + need > self._seg_max:
                    self._tseq += 1
                    self._tsize = 0
                    if not self._n:
                        # Empty store: move the head onto the new segment so the old one can go.
                        self._commit()
                struct.pack_into("<I", self._hdr, 0, n)
                struct.pack_into("<I", self._hdr, 4, crc32(data, crc32(self._hmv[:4])) & _MASK)
                fresh = not self._tsize
                f = open(self._seg(self._tseq), "ab")
                try:
                    self._dirty = True  # until proven whole: a failed write leaves a torn tail
                    f.write(self._hdr)
                    f.write(data)
                    _durable(f)
                finally:
                    f.close()
                if fresh or not _fsync:
                    _durable_fs(self.path)
                self._dirty = False
                self._tsize += need
                self._n += 1
                self.bytes += need
                return
            except OSError as e:
                # The filesystem is full (other files, or LittleFS's own needs): drop the oldest
                # segment to make room and try again, rather than lose this reading.
                if e.errno != _ENOSPC:
                    raise
                full = True

    def peek(self):
        """Return the oldest record (bytes), or None when the store is empty."""
        while self._n:
            data = self._read_head()
            if data is not None:
                return data
            self._skip_corrupt()
        return None

    def pop(self, count=1):
        """Remove the `count` oldest records with one head write; durable on return.

        Raise IndexError when the store holds fewer than `count`.
        """
        if not 0 < count <= self._n:
            raise IndexError("pop %d from an outbox of %d" % (count, self._n))
        f = None
        seq = -1
        try:
            while count:
                self._settle()
                if self._hseq != seq:  # each head segment is opened once, not once per record
                    if f:
                        f.close()
                    seq = self._hseq
                    f = open(self._seg(seq), "rb")
                size = self._header_at(f)
                if not size:
                    break
                self._forget(size)
                count -= 1
        finally:
            if f:
                f.close()
        if count:
            self._skip_corrupt()  # commits the head itself
            return
        self._commit()

    def records(self):
        """Yield the queued records oldest first, one at a time, without removing them.

        Appending while iterating is safe (new records are not yielded), and so is popping
        records already yielded; the client's drain does both.
        """
        seq = self._hseq
        pos = self._hoff
        left = self._n
        while left:
            end = self._tsize if seq == self._tseq else _size(self._seg(seq))
            f = open(self._seg(seq), "rb")
            try:
                f.seek(pos)
                while left and pos + _HDR <= end:
                    data = self._read_record(f, end - pos)
                    if data is None:
                        return
                    yield data
                    pos += _HDR + len(data)
                    left -= 1
            finally:
                f.close()
            if seq >= self._tseq:
                return
            seq += 1
            pos = 0

    # -- internals ---------------------------------------------------------

    def _seg(self, seq):
        return "%s/%08d.seg" % (self.path, seq)

    def _head_end(self):
        # Size of the head segment: the tail's is tracked, the others are fixed once written.
        if self._hseq == self._tseq:
            return self._tsize
        if self._hsize < 0:
            self._hsize = _size(self._seg(self._hseq))
        return self._hsize

    def _settle(self):
        # Step the head over fully consumed segments (in RAM; _commit persists it).
        while self._hseq < self._tseq and self._hoff >= self._head_end():
            self._hseq += 1
            self._hoff = 0
            self._hsize = -1

    def _head_size(self):
        # Bytes of the head record (header included), or 0 after giving up a damaged segment.
        self._settle()
        f = open(self._seg(self._hseq), "rb")
        try:
            size = self._header_at(f)
        finally:
            f.close()
        if not size:
            self._skip_corrupt()
        return size

    def _header_at(self, f):
        # Size of the record at the head offset in f (the head segment), or 0 when damaged.
        f.seek(self._hoff)
        if f.readinto(self._hdr) != _HDR:
            return 0
        n = struct.unpack_from("<I", self._hdr)[0]
        return 0 if self._hoff + _HDR + n > self._head_end() else _HDR + n

    def _forget(self, size):
        self._hoff += size
        self._n -= 1
        self.bytes -= size

    def _commit(self):
        self._settle()
        self._gen += 1
        raw = struct.pack("<IIII", self._hseq, self._hoff, self.dropped, self._gen)
        tmp = self.path + "/head.tmp"
        f = open(tmp, "wb")
        try:
            f.write(raw)
            f.write(struct.pack("<I", crc32(raw) & _MASK))
            _durable(f)
        finally:
            f.close()
        _replace(tmp, self.path + "/head")
        _durable_fs(self.path)
        # Delete from the segment the old head named, not from _hseq: pop and peek step _hseq
        # over spent segments in RAM before this write, and those must go too.
        while self.start < self._hseq:
            _remove(self._seg(self.start))
            self.start += 1

    def _read_head(self):
        self._settle()
        end = self._head_end()
        f = open(self._seg(self._hseq), "rb")
        try:
            f.seek(self._hoff)
            return self._read_record(f, end - self._hoff)
        finally:
            f.close()

    def _read_record(self, f, room):
        # One record from f's position, or None when it is damaged; reads only that record.
        if room < _HDR or f.readinto(self._hdr) != _HDR:
            return None
        n, crc = struct.unpack("<II", self._hdr)
        if _HDR + n > room:
            return None
        data = f.read(n)
        if len(data) != n or crc32(data, crc32(self._hmv[:4])) & _MASK != crc:
            return None
        return data

    def _skip_corrupt(self):
        # Flash went bad under the head record. Skip to the next record whose header and CRC
        # check out (the segment's end if none does) rather than stall the queue, then recount.
        self._hoff = _recover("resync", self, self._hseq, self._hoff + 1, self._head_end())
        if self._hseq == self._tseq and self._hoff >= self._tsize:
            self._n = 0
            self.bytes = 0
        self._commit()
        _recover("load", self)
