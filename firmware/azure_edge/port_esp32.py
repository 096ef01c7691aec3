# Platform adapter for MicroPython on ESP32, S2, S3, C3 and C6 boards.
import gc
import time

import machine
import network

from azure_edge import net

NAME = "esp32"
RUNTIME = "micropython"
_wlan = None
_led = None


def connect_wifi(ssid, password, timeout_s=20):
    """Join the network as a station; True once connected (retries are the caller's)."""
    global _wlan
    _wlan = network.WLAN(network.STA_IF)
    _wlan.active(True)
    if _wlan.isconnected():
        return True
    _wlan.connect(ssid, password)
    start = time.ticks_ms()
    while not _wlan.isconnected():
        if time.ticks_diff(time.ticks_ms(), start) > timeout_s * 1000:
            _wlan.disconnect()
            return False
        time.sleep_ms(200)
    return True


def rssi():
    try:
        return _wlan.status("rssi") if _wlan else None
    except (OSError, ValueError):
        return None


def sync_time(ntp_host):
    """Set the RTC (UTC) from NTP; True on success."""
    import ntptime

    ntptime.host = ntp_host
    try:
        ntptime.settime()
        return True
    except (OSError, OverflowError):
        return False


def cpu_temperature():
    try:
        import esp32
        if hasattr(esp32, "mcu_temperature"):  # S2, S3, C3, C6: Celsius
            return esp32.mcu_temperature()
        return round((esp32.raw_temperature() - 32) / 1.8, 1)  # ESP32: Fahrenheit
    except (ImportError, AttributeError, OSError):
        return None


def free_heap():
    return gc.mem_free()


def idf_heap():
    """The IDF heap's data regions, {"free": bytes, "largest_block": bytes}: where mbedTLS's
    record buffers, Wi-Fi and lwIP allocate, outside the Python heap (which grows into it)."""
    import esp32
    free = block = 0
    for region in esp32.idf_heap_info(esp32.HEAP_DATA):  # (total, free, largest block, min free)
        free += region[1]
        block = max(block, region[2])
    return {"free": free, "largest_block": block}


def socket_pool():
    return net  # MiniMQTT only passes it back to net's connection manager


def tls_context(ca, cert=None, key=None):
    return net.mp_context(ca, cert, key)


def watchdog(timeout_ms):
    """The hardware watchdog: resets the chip if the loop stops feeding it."""
    return machine.WDT(timeout=timeout_ms)


def reset():
    machine.reset()


def status(stage, pin=None):
    """Status LED on while connected, off otherwise; the first call with a pin sets it up."""
    global _led
    if pin is not None and _led is None:
        _led = machine.Pin(pin, machine.Pin.OUT)
    if _led is not None:
        _led.value(1 if stage == "connected" else 0)
