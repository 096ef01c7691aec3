# edgekit firmware: an Azure IoT Hub client for downstream devices of an IoT Edge gateway.
# The same files run on MicroPython, CircuitPython and CPython.
VERSION = "0.1.0"
