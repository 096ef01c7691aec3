# Readings held aside: one the gateway refuses every time (the link closes right after its
# PUBLISH while other readings go through) leaves the outbox for a second outbox beside it,
# `<outbox>.aside`, up to a quarter of outbox_bytes. Kept on flash, never deleted while there
# is room; moved back to the outbox's tail at boot and every set_aside_retry seconds. Loaded
# only for those moments.
import os


def _box(main, make):
    # The aside store of outbox `main`; None when there is none and make is False.
    path = getattr(main, "path", None)
    if path is None:  # a RAM queue: its aside lives beside it, in RAM too
        q = getattr(main, "aside", None)
        if q is None and make:
            q = main.aside = type(main)(max(512, main.max_bytes // 4))
        return q
    path += ".aside"
    if not make:
        try:
            os.stat(path)
        except OSError:
            return None  # nothing ever set aside: no folder made for it
    from azure_edge.outbox import Outbox
    return Outbox(path, max(512, main.max_bytes // 4))


def hold(main, record):
    """Keep `record` aside (the caller then pops it from main); return how many are held."""
    a = _box(main, True)
    a.append(record)
    return len(a)


def restore(main):
    """Move every reading held aside back to main's tail, oldest first; return how many."""
    a = _box(main, False)
    n = 0
    while a is not None and len(a):
        r = a.peek()  # None: the rest of the store was damaged and skipped
        if r is None:
            break
        main.append(r)
        a.pop(1)  # after the append: a cut between leaves a duplicate, never a loss
        n += 1
    return n
