"""The stand-in board's RTC and CircuitPython's time module that reads it (test-only)."""
import calendar
import time as _host_time
import tomllib
import types

_BOOT = 946684800  # 2000-01-01T00:00:00Z: where an ESP32-S2/S3 RTC starts after reset
_offset = _BOOT - _host_time.time()


def now():
    """RTC seconds since 1970 (it ticks with the host's clock, from wherever it was set)."""
    return _host_time.time() + _offset


def set_now(seconds):
    global _offset
    _offset = seconds - _host_time.time()


def localtime(secs=None):
    # CircuitPython has no time zones: localtime is UTC.
    return _host_time.gmtime(int(now()) if secs is None else secs)


def mktime(t):
    return calendar.timegm(tuple(t)[:6] + (0, 0, 0))


def circuitpython_time():
    """A module with exactly CircuitPython's time API (no gmtime, integer time())."""
    mod = types.ModuleType("time")
    mod.time = lambda: int(now())
    mod.localtime = localtime
    mod.mktime = mktime
    mod.monotonic = _host_time.monotonic
    mod.monotonic_ns = _host_time.monotonic_ns
    mod.sleep = _host_time.sleep
    mod.struct_time = _host_time.struct_time
    return mod


def read_settings(path):
    """settings.toml as CircuitPython's os.getenv sees it (strings and ints); {} if absent."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
