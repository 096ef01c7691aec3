"""A local edgeHub to develop downstream devices against: `edgekit gateway`.

Modules, one job each:
  registry  device and module identities under DATA (registry.json)
  auth      edgeHub's CONNECT checks and topic authorization, as pure functions
  store     telemetry, twins and queued C2D messages under DATA (survive restarts)
  core      the running gateway: connections, twin/method/C2D semantics of IoT Hub
  broker    the amqtt broker subclass and plugins that put `core` on the wire
  control   the loopback control interface the hub-side commands talk to
  hub       hub-side actions (read telemetry, C2D, methods, twins) for the CLI and tests
  serve     start-up: server certificate, TLS context, broker, control, gateway.json
  cli       the click group `edgekit gateway`
"""
import os
import sys

# The host speaks the same topic and SAS code as the device: use the firmware's protocol core.
# Appended, not prepended: firmware/code.py must not shadow the standard library's `code`.
_FIRMWARE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                         "firmware")
if _FIRMWARE not in sys.path:
    sys.path.append(_FIRMWARE)

DEFAULT_HUB = "edgekit-hub.azure-devices.net"
GATEWAY_JSON = "gateway.json"
