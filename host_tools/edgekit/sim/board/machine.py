# Stand-in for MicroPython's `machine` module on the simulated board.
# It keeps the unix port's own machine functions and adds what firmware on an
# ESP32 calls: reset() restarts the interpreter the way a board reboots, WDT is
# accepted and fed but never fires (a host process has no hardware watchdog), and
# reset_cause() reports why the sim last started, with the esp32 port's values.
import os
import sys
import time

from umachine import *  # noqa: F401,F403  mem8/mem16/mem32, idle, time_pulse_us, Signal

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

_RESET = "\x1b]edgekit-sim:reset:%d\x07"


def _ask_supervisor(cause):
    # The supervisor watches the console for this escape, kills this interpreter
    # and boots a new one; like a real reset, control never comes back.
    sys.stdout.write(_RESET % cause)
    while True:
        time.sleep(1)


def reset():
    # On the esp32 port a software reset reports SOFT_RESET from reset_cause().
    _ask_supervisor(SOFT_RESET)


def soft_reset():
    raise SystemExit


def deepsleep(time_ms=0):
    if time_ms:
        time.sleep_ms(time_ms)
    _ask_supervisor(DEEPSLEEP_RESET)


def lightsleep(time_ms=0):
    if time_ms:
        time.sleep_ms(time_ms)


def reset_cause():
    return int(os.getenv("EDGEKIT_SIM_RESET_CAUSE") or PWRON_RESET)


def unique_id():
    return b"\x02\xed\x9e\x51\x00\x01"


def freq(hz=None):
    if hz is None:
        return 240000000


class WDT:
    def __init__(self, id=0, timeout=5000):
        self.timeout = timeout

    def feed(self):
        pass


class Pin:
    # No pins here: the level is only remembered, so LED code runs unchanged.
    IN = 1
    OUT = 3
    PULL_UP = 2
    PULL_DOWN = 1

    def __init__(self, id, mode=-1, pull=-1, value=None):
        self.id = id
        self._value = value or 0

    def value(self, v=None):
        if v is None:
            return self._value
        self._value = 1 if v else 0

    def on(self):
        self._value = 1

    def off(self):
        self._value = 0

    def __call__(self, v=None):
        return self.value(v)
