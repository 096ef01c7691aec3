# Platform adapter for the host: CPython, or MicroPython's unix port (also the simulated board).
# The host's network and clock are already up, so Wi-Fi and time sync have nothing to do.
import gc
import sys

from azure_edge import net

NAME = "host"
RUNTIME = sys.implementation.name


def connect_wifi(ssid, password, timeout_s=20):
    """Nothing to join on the host; returns True."""
    return True


def rssi():
    """No radio here; nor a CPU temperature or an IDF heap: None for each."""
    return None


def sync_time(ntp_host):
    """The host keeps its own time."""
    return True


cpu_temperature = idf_heap = rssi  # one function object for the three, not three in the heap


def free_heap():
    return gc.mem_free() if hasattr(gc, "mem_free") else None


def socket_pool():
    return net  # MiniMQTT only passes it back to net's connection manager


def tls_context(ca, cert=None, key=None):
    """A TLS context that verifies the gateway against `ca` (DER bytes); optional client
    certificates (a list of DER, leaf first) and key (DER)."""
    if RUNTIME == "micropython":
        return net.mp_context(ca, cert, key)
    from azure_edge import port_cpython
    return port_cpython.tls_context(ca, cert, key)


class _NoWatchdog:
    def feed(self):
        pass


def watchdog(timeout_ms):
    """The host has no hardware watchdog: a process supervisor restarts us instead."""
    return _NoWatchdog()


def reset():
    """Restart: machine.reset() on the simulated board, exit elsewhere."""
    try:
        import machine
        machine.reset()
    except (ImportError, AttributeError):  # the plain unix port's machine has no reset
        sys.exit(3)


def status(stage, pin=None):
    """No LED on the host: progress shows on the console only."""
