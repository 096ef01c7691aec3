# Shows: a cloud-to-device command handler, acknowledged with a message back.
# Needs: a deployed bundle. Send a command from the hub side:
#     az iot device c2d-message send -n HUB -d DEV --data '{"command": "blink", "times": 3}'
# (or put the command in a property: --props command=blink). The device answers with a
# message {"ack": "blink", "done": true} carrying the C2D message's id as $.cid when it has one.
import json
import sys

sys.path.append("/lib")  # a board's /lib; harmless elsewhere

from azure_edge import start  # noqa: E402

start.boot()  # first: an installed update runs instead (docs/updates.md)

from azure_edge.device import Device  # noqa: E402

device = Device()


def blink(times):
    print("[app] blink x%d" % times)  # on a board: toggle the LED here


COMMANDS = {"blink": blink}


def on_message(body, properties):
    try:
        cmd = json.loads(body) if body else {}
    except ValueError:
        cmd = {}
    if not isinstance(cmd, dict):
        cmd = {}
    name = cmd.get("command") or properties.get("command")
    ack = {"ack": name, "done": name in COMMANDS}
    if ack["done"]:
        COMMANDS[name](int(cmd.get("times", 1)))
    mid = properties.get("$.mid")
    device.send(ack, properties={"$.cid": mid} if mid else None)


device.on_message = on_message
device.run()
