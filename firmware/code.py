# CircuitPython entry point. Wi-Fi credentials live in settings.toml (CIRCUITPY_WIFI_SSID,
# CIRCUITPY_WIFI_PASSWORD); the rest of the bundle is in /edgekit on the drive.
from azure_edge import app


def read_sensors():
    return None  # e.g. {"humidity": sensor.humidity}


app.run(read_sensors)
