"""Stand-in for CircuitPython's storage module: the mount's `readonly` (to code), as set by
{"readonly": true} in EDGEKIT_STANDIN_NET (sitecustomize.py refuses the writes themselves)."""
from _standin_net import NET


class _Mount:
    @property
    def readonly(self):
        return bool(NET.get("readonly"))


def getmount(path):
    return _Mount()


def remount(path, readonly=False, *, disable_concurrent_write_protection=False):
    # Only boot.py may remount CIRCUITPY, before USB claims it; code.py gets this error.
    raise RuntimeError("Cannot remount path when visible via USB.")
