# Shows: a threshold set from desired properties, and an alarm message sent when a reading
# crosses it (once per crossing, not once per reading).
# Needs: a deployed bundle. Set the threshold from the hub side:
#     az iot hub device-twin update -n HUB -d DEV --desired '{"threshold": 25.5}'
# The twin's reported "threshold" confirms it; an alarm is a message with property
# alarm=high and body {"alarm": "high", "celsius": ..., "threshold": ...}.
import sys

sys.path.append("/lib")  # a board's /lib; harmless elsewhere

from azure_edge import start  # noqa: E402

start.boot()  # first: an installed update runs instead (docs/updates.md)

from azure_edge.device import Device  # noqa: E402

device = Device()
limit = {"threshold": None, "above": False, "n": 0}


def read_sensor():
    # Stands in for a real sensor: a sawtooth from 20.0 to 29.0 degrees.
    limit["n"] += 1
    return 20.0 + limit["n"] % 10


def on_desired(desired, whole):
    # whole: the full desired document after each (re)connect; else a patch.
    t = desired.get("threshold")
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        limit["threshold"] = t
        device.report({"threshold": t})


def check():
    value = read_sensor()
    t = limit["threshold"]
    above = t is not None and value > t
    if above and not limit["above"]:
        device.send({"alarm": "high", "celsius": value, "threshold": t},
                    properties={"alarm": "high"})
    limit["above"] = above


device.on_desired = on_desired
device.every(None, check)
device.run()
