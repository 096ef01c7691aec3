"""Stand-in for CircuitPython's watchdog module (the timer itself is microcontroller.watchdog)."""


class WatchDogMode:
    RAISE = object()
    RESET = object()


class WatchDogTimeout(Exception):
    pass
