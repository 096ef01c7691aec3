# MicroPython entry point. On the host, the unix MicroPython needs MiniMQTT on its path too:
#   edgekit mpy build/lib
#   EDGEKIT_BUNDLE=bundles/dev1 MICROPYPATH=.frozen:build/lib micropython firmware/main.py
# Put your own sensor reading in read_sensors(): return a dict and it rides along with
# each telemetry message (uptime, free heap, RSSI and CPU temperature are sent already).
# For direct methods, C2D, desired properties or messages of your own, use the device API:
# docs/firmware-api.md, and the examples in firmware/examples/ (edgekit deploy --main FILE).
import sys

sys.path.append("/lib")  # a board's /lib; harmless on the host

from azure_edge import start  # noqa: E402

start.boot()  # first: an installed update runs instead (docs/updates.md)
from azure_edge import app  # noqa: E402


def read_sensors():
    return None  # e.g. {"humidity": sensor.humidity}


app.run(read_sensors)
