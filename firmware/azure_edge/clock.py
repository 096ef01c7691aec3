# Unix time on every runtime. The esp32 port counts from 2000-01-01, the others from 1970.
import time

_EPOCH_2000 = 946684800
# Any clock that reads earlier than this (2024-01-01) was never set: tokens would be refused.
_SANE = 1704067200

# CircuitPython has no gmtime; its localtime is UTC (it keeps no time zone).
_offset = _EPOCH_2000 if (time.gmtime if hasattr(time, "gmtime") else time.localtime)(0)[0] == 2000 else 0


def unix_time():
    """Return the current time as Unix seconds (int)."""
    return int(time.time()) + _offset


def is_set():
    """True when the clock has plausibly been synced (after 2024-01-01)."""
    return unix_time() >= _SANE
