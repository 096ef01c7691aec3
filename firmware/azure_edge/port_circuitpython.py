# Platform adapter for CircuitPython on ESP32-S2 and S3 boards.
# CircuitPython's sockets already have the shape MiniMQTT wants, so the native pool is used.
import gc
import ssl

import rtc
import socketpool
import wifi

NAME = "circuitpython"
RUNTIME = "circuitpython"
_pool = None


def connect_wifi(ssid, password, timeout_s=20):
    """Join the network (settings.toml may already have done it); True once connected."""
    if wifi.radio.connected:
        return True
    try:
        wifi.radio.connect(ssid, password, timeout=timeout_s)
    except (ConnectionError, OSError):
        return False
    return wifi.radio.connected


def rssi():
    ap = wifi.radio.ap_info
    return ap.rssi if ap else None


def sync_time(ntp_host):
    """Set the RTC (UTC) from NTP via adafruit_ntp; True on success."""
    try:
        import adafruit_ntp
        ntp = adafruit_ntp.NTP(socket_pool(), server=ntp_host, tz_offset=0)
        rtc.RTC().datetime = ntp.datetime
        return True
    except (ImportError, OSError, RuntimeError):
        return False


def cpu_temperature():
    try:
        import microcontroller
        return microcontroller.cpu.temperature
    except (ImportError, AttributeError):
        return None


def free_heap():
    return gc.mem_free()


def socket_pool():
    global _pool
    if _pool is None:
        _pool = socketpool.SocketPool(wifi.radio)
    return _pool


def tls_context(ca, cert=None, key=None):
    """Verify against one PEM root (a str: CircuitPython takes no DER); cert/key are PEM file paths."""
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(cadata=ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


class _NoWatchdog:
    def feed(self):
        pass


def watchdog(timeout_ms):
    try:
        import microcontroller
        import watchdog as wd
        dog = microcontroller.watchdog
        dog.timeout = timeout_ms / 1000
        dog.mode = wd.WatchDogMode.RESET
        return dog
    except (ImportError, AttributeError, NotImplementedError):
        return _NoWatchdog()


def reset():
    import microcontroller
    microcontroller.reset()


def status(stage, pin=None):
    """CircuitPython boards show status on their own RGB LED; nothing to do here."""
