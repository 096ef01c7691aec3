"""A local edgeHub to develop downstream devices against: `edgekit gateway`.

Modules, one job each:
  registry  device and module identities under DATA (registry.json)
  topics    edgeHub's topic templates and property bags (urllib.parse, not the firmware's code)
  auth      edgeHub's CONNECT checks and topic authorization, as pure functions
  store     telemetry, twins and queued C2D messages under DATA (survive restarts)
  core      the running gateway: connections, twin/method/C2D semantics of IoT Hub
  protocol  the MQTT protocol head (one task per device link, amqtt codec) that puts `core` on the wire
  sessions  persistent MQTT sessions (CleanSession=0) in DATA/sessions.json
  control   the loopback control interface the hub-side commands talk to
  hub       hub-side actions (read telemetry, C2D, methods, twins) for the CLI and tests
  adu       Device Update for IoT Hub's service: import, signed deployments, cancel, status (DATA/adu)
  cache     Microsoft Connected Cache: the update files over HTTP, Range and cacheHostOrigin
  serve     start-up: server certificate, TLS context, protocol head, control, gateway.json
  cli       the click group `edgekit gateway`
"""
# The gateway imports nothing from the firmware (azure_edge): topics, property bags, SAS and ids
# are checked with its own code, written from edgeHub's source, so a firmware bug cannot be made
# on one side and accepted on the other (tests/test_gateway_independent.py).

DEFAULT_HUB = "edgekit-hub.azure-devices.net"
GATEWAY_JSON = "gateway.json"
