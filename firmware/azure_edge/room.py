# The outbox making room when the filesystem is full (ENOSPC). Needed only then, so outbox.py
# loads this module for that moment and unloads it after. Not in outbox_recover, which every
# boot loads; and named like its function, a name outbox.py interns already, because at boot
# a new interned name took the last free kilobyte of a 48 KiB heap (bench --only heap, ROMFS).
from azure_edge.outbox import OutboxError, _recover, _remove, _size


def room(box):
    """The filesystem is full (ENOSPC): delete the oldest segment, dropping its records
    (counted in `dropped`), so that an append can go on. Raise OutboxError when the store has
    nothing left to delete."""
    seq = box._hseq
    if seq < box._tseq:
        end, count = _recover("_scan", box, seq, box._hoff, _size(box._seg(seq)), False)
        box.bytes -= end - box._hoff
    elif box._tsize:
        # The newest segment holds the whole queue: it all goes (the torn tail with it), and
        # the record being appended starts a new segment.
        count = box._n
        box.bytes = 0
        box._tseq += 1
        box._tsize = 0
        box._dirty = False
    else:
        if box._dirty:
            _remove(box._seg(seq))  # a new segment the failed write left torn
            box._dirty = False
        raise OutboxError("outbox %s: the filesystem is full even with the outbox empty; free space"
                          " on it" % box.path)
    box._n -= count
    box.dropped += count
    box._hseq = seq + 1
    box._hoff = 0
    box._hsize = -1
    # Delete before the head write, which needs room too. A cut in between leaves a head that
    # names a missing segment: load() then starts at the next one.
    _remove(box._seg(seq))
    box._commit()
