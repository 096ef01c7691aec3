# Shows: a sensor read on a timer, several readings batched into one message.
# Needs: a deployed bundle (edgekit bundle ...); on a board, replace read_sensor() with your
# sensor. Ship it: edgekit deploy BOARD --device DEV --main firmware/examples/sensor_batch.py
#
# IoT Hub bills device-to-cloud messages in 4 KB units: five small readings in one message
# cost one unit instead of five. Each message's body is
#     {"readings": [{"seq": 1, "age": 2.0, "celsius": 21.5}, ...]}   (oldest first)
# with the property batch=<count>; "age" is seconds before the send. A consumer (a route to
# storage, an Azure Function, Stream Analytics' CROSS APPLY GetArrayElements(readings)) unpacks
# body["readings"] into one row each. One reading every `interval` seconds (bundle or twin).
import sys
import time

sys.path.append("/lib")  # a board's /lib; harmless elsewhere

from azure_edge import start  # noqa: E402

start.boot()  # first: an installed update runs instead (docs/updates.md)

from azure_edge.device import Device  # noqa: E402

BATCH = 5
device = Device()
readings = []
seq = 0


def read_sensor():
    # Stands in for a real sensor (e.g. a BME280 over I2C): a slow wave around 21 degrees.
    return 21.0 + (seq % 10) / 10


def sample():
    global seq
    seq += 1
    readings.append((seq, time.time(), read_sensor()))
    if len(readings) >= BATCH:
        now = time.time()
        batch = [{"seq": s, "age": round(now - t, 1), "celsius": v} for s, t, v in readings]
        readings.clear()
        device.send({"readings": batch}, properties={"batch": str(len(batch))})


device.every(None, sample)  # None: the telemetry interval, which the twin can change
device.run()
