"""Stand-in for CircuitPython's rtc module: the board's real-time clock."""
import _standin_clock


class RTC:
    @property
    def datetime(self):
        return _standin_clock.localtime()

    @datetime.setter
    def datetime(self, value):
        _standin_clock.set_now(_standin_clock.mktime(value))
        print("[stand-in rtc] set to %04d-%02d-%02dT%02d:%02d:%02dZ" % tuple(value)[:6])
