# CircuitPython entry point. Wi-Fi credentials live in settings.toml (CIRCUITPY_WIFI_SSID,
# CIRCUITPY_WIFI_PASSWORD); the rest of the bundle is in /edgekit on the drive.
# Put your own sensor reading in read_sensors(): return a dict and it rides along with
# each telemetry message (uptime, free heap, RSSI and CPU temperature are sent already).
# For direct methods, C2D, desired properties or messages of your own, use the device API:
# docs/firmware-api.md, and the examples in firmware/examples/ (edgekit deploy --main FILE).
from azure_edge import start


def read_sensors():
    return None  # e.g. {"humidity": sensor.humidity}


try:
    # First: an installed update runs instead (docs/updates.md). Inside the try, so that an
    # update crashing on trial resets the board too, and its next boot counts against it.
    start.boot()
    from azure_edge import app

    app.run(read_sensors)
except Exception as e:  # noqa: BLE001
    # Never stop at "Code done running": say why on the console, wait, start over.
    import time
    import traceback

    import microcontroller

    traceback.print_exception(e)
    print("[edgekit] crashed; resetting in 10 s")
    time.sleep(10)
    microcontroller.reset()
