"""Stand-in for CircuitPython's microcontroller module: CPU temperature, reset, watchdog."""
import os
import sys
import threading
import time

import watchdog as _wd

TEMPERATURE = 41.5  # what the stand-in chip's sensor reads, in degrees Celsius


class _Processor:
    temperature = TEMPERATURE


cpu = _Processor()


def reset():
    """A board restarts; the stand-in process ends with exit status 3 so the test sees it."""
    print("[stand-in microcontroller] reset")
    sys.stdout.flush()
    os._exit(3)


class _WatchDogTimer:
    """Resets the stand-in board when not fed within `timeout` seconds once mode is RESET."""

    def __init__(self):
        self.timeout = None
        self._mode = None
        self._fed = time.monotonic()

    @property
    def mode(self):
        return self._mode

    @mode.setter
    def mode(self, value):
        if not self.timeout:
            raise ValueError("set timeout before mode")
        self._mode = value
        self.feed()
        if value is _wd.WatchDogMode.RESET:
            threading.Thread(target=self._watch, daemon=True).start()

    def feed(self):
        self._fed = time.monotonic()

    def _watch(self):
        while True:
            time.sleep(0.5)
            if time.monotonic() - self._fed > self.timeout:
                print("[stand-in watchdog] not fed for %s s" % self.timeout)
                reset()


watchdog = _WatchDogTimer()
