# Picks the platform adapter for the runtime we are on. Each adapter has the same functions:
# connect_wifi, rssi, sync_time, cpu_temperature, free_heap, idf_heap, socket_pool,
# tls_context, watchdog, reset, status.
import sys


def load():
    """Return the adapter module for this runtime."""
    if sys.implementation.name == "circuitpython":
        from azure_edge import port_circuitpython as port
    elif sys.platform in ("esp32",):
        from azure_edge import port_esp32 as port
    else:
        from azure_edge import port_host as port
    return port
