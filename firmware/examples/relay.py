# Shows: a relay switched by a direct method, its state reported in the device twin.
# Needs: a deployed bundle; a relay (or LED) on RELAY_PIN. Off a board the pin is left out
# and only the state is kept. Call it from the hub side:
#     az iot hub invoke-device-method -n HUB -d DEV --method-name relay --method-payload '{"on": true}'
# The twin's reported "relay" then says true or false.
import sys

sys.path.append("/lib")  # a board's /lib; harmless elsewhere

from azure_edge import start  # noqa: E402

start.boot()  # first: an installed update runs instead (docs/updates.md)

from azure_edge.device import Device  # noqa: E402

RELAY_PIN = 5

try:
    from machine import Pin  # MicroPython boards
    pin = Pin(RELAY_PIN, Pin.OUT)
except (ImportError, AttributeError, ValueError):
    pin = None  # CircuitPython (use digitalio there) or the host: no pin to drive

device = Device()
state = {"relay": False}


def switch(on):
    state["relay"] = on
    if pin is not None:
        pin.value(1 if on else 0)
    device.report(state)


def on_desired(desired, whole):
    if whole:  # after every (re)connect: say the state the relay is in
        device.report(state)


@device.method("relay")
def relay(payload):
    on = payload.get("on") if isinstance(payload, dict) else payload
    if not isinstance(on, bool):
        return 400, {"error": 'give {"on": true} or {"on": false}'}
    switch(on)
    return {"relay": on}  # status 200


switch(False)  # a known state after every boot
device.on_desired = on_desired
device.run()
