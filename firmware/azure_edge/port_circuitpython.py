# Platform adapter for CircuitPython on ESP32-S2 and S3 boards.
# CircuitPython's socketpool sockets already have the shape MiniMQTT wants (settimeout,
# recv_into, TLS wrapped before connect), so the native pool and the real
# adafruit_connection_manager are used; azure_edge.net stays out of the way.
import gc
import os
import ssl
import struct
import time

import rtc
import socketpool
import wifi

NAME = "circuitpython"
RUNTIME = "circuitpython"
_NTP_DELTA = 2208988800  # seconds from 1900 (NTP) to 1970 (CircuitPython's epoch)
_pool = None


def connect_wifi(ssid, password, timeout_s=20):
    """Join the network; True once connected. The supervisor may already have joined from
    settings.toml, whose CIRCUITPY_WIFI_SSID/PASSWORD are also used when the bundle names none."""
    if wifi.radio.connected:
        return True
    if not ssid:
        ssid = os.getenv("CIRCUITPY_WIFI_SSID")
        password = os.getenv("CIRCUITPY_WIFI_PASSWORD")
    if not ssid:
        return False
    try:
        wifi.radio.connect(ssid, password, timeout=timeout_s)
    except (ConnectionError, OSError):
        return False
    return wifi.radio.connected


def rssi():
    ap = wifi.radio.ap_info
    return ap.rssi if ap else None


def sync_time(ntp_host):
    """Set the RTC (UTC) from one SNTP query; True on success.

    A 20-line SNTP client rather than adafruit_ntp: one less library to deploy and load."""
    pool = socket_pool()
    packet = bytearray(48)
    packet[0] = 0x23  # NTP version 4, client mode
    try:
        addr = pool.getaddrinfo(ntp_host, 123)[0][4]
        sock = pool.socket(pool.AF_INET, pool.SOCK_DGRAM)
        try:
            sock.settimeout(5)
            sock.sendto(packet, addr)
            n = sock.recv_into(packet)
        finally:
            sock.close()
    except OSError:
        return False
    # A server answers in mode 4; stratum 0 is a "kiss of death" (go away), not a time.
    if n < 48 or packet[0] & 7 != 4 or packet[1] == 0:
        return False
    seconds = struct.unpack_from("!I", packet, 40)[0] - _NTP_DELTA
    rtc.RTC().datetime = time.localtime(seconds)
    return True


def cpu_temperature():
    try:
        import microcontroller
        return microcontroller.cpu.temperature
    except (ImportError, AttributeError):
        return None


def free_heap():
    return gc.mem_free()


def idf_heap():
    """None: only the esp32 adapter reports the IDF heap (CircuitPython's `espidf` module has
    heap_caps_get_free_size and heap_caps_get_largest_free_block, not used yet)."""
    return None


def socket_pool():
    global _pool
    if _pool is None:
        _pool = socketpool.SocketPool(wifi.radio)
    return _pool


def tls_context(ca, cert=None, key=None):
    """Verify against `ca`, PEM text (CircuitPython takes no DER, and it replaces the default
    bundle): one root, or several one after the other (edgekit/trust:1), as mbedTLS parses
    every block of it; cert/key are PEM file paths."""
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
    except (ImportError, AttributeError, NotImplementedError, ValueError):
        return _NoWatchdog()


def reset():
    # A hard reset, not supervisor.reload(): it flushes CIRCUITPY's write cache first
    # (common_hal_mcu_reset), runs boot.py again and frees everything; code.py runs either way.
    import microcontroller
    microcontroller.reset()


def read_only():
    """True when code may not write CIRCUITPY: the default, unless boot.py called
    storage.remount("/", readonly=False) (then the USB host may not). The update agent
    refuses deployments then (docs/updates.md), as the outbox falls back to RAM."""
    try:
        import storage
        return storage.getmount("/").readonly
    except (ImportError, AttributeError, OSError):
        return False


def status(stage, pin=None):
    """CircuitPython boards show status on their own RGB LED; nothing to do here."""
