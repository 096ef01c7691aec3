"""Issue 26, part 3: the emulator shares no code with the firmware.

If the gateway parsed topics, property bags or SAS tokens with the firmware's own azure_edge
modules, a bug there would be made by the device and accepted by the gateway, and every
end-to-end test would pass. These tests fail as soon as any gateway module imports azure_edge,
at the top or inside a function; the end-to-end one fails when the firmware's percent-encoding
is wrong (plant `+` for a space, or leave '/' raw, in azure_edge/topics.py encode_properties).
"""
import ast
import json
import subprocess
import sys

import pytest

from device_helpers import DEVICE_HEAP, Device, build_board, readings_of, wait_for, write_bundle
from edgekit.gateway import hub
from gateway_helpers import ROOT, RawDevice, gateway  # noqa: F401  (gateway is a fixture)
from azure_edge import topics as fw_topics  # noqa: E402  (the device side: the firmware's own code)

GATEWAY = ROOT / "host_tools" / "edgekit" / "gateway"

# Blocks azure_edge, imports every module of the gateway package, and reports what got loaded.
_IMPORT_ALL = r"""
import importlib, json, pkgutil, sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "azure_edge" or name.startswith("azure_edge."):
            raise ImportError("the gateway imported " + name)

sys.meta_path.insert(0, Block())
import edgekit.gateway as pkg
names = sorted("edgekit.gateway." + m.name for m in pkgutil.iter_modules(pkg.__path__))
for name in names:
    importlib.import_module(name)
print(json.dumps({"modules": names, "firmware": sorted(m for m in sys.modules if m.split(".")[0] == "azure_edge"),
                  "path": [p for p in sys.path if p.rstrip("/").endswith("firmware")]}))
"""


def _imported_names(path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_no_gateway_module_imports_the_firmware():
    # Every import statement, including those inside functions, which a run may never reach.
    found = {str(p.relative_to(ROOT)): name for p in GATEWAY.rglob("*.py")
             for name in _imported_names(p) if name.split(".")[0] == "azure_edge"}
    assert found == {}, f"the gateway imports the firmware: {found}"


def test_the_whole_gateway_package_loads_without_the_firmware():
    # Indirect imports too (an edgekit module the gateway uses that pulls azure_edge in), and the
    # firmware folder must not be put on sys.path behind the tests' back.
    out = subprocess.run([sys.executable, "-c", _IMPORT_ALL], capture_output=True, text=True, timeout=60,
                         cwd="/")
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = json.loads(out.stdout)
    assert "edgekit.gateway.core" in loaded["modules"] and "edgekit.gateway.protocol" in loaded["modules"]
    assert loaded["firmware"] == [] and loaded["path"] == []


# Names and values a broken encoder gets wrong: a space ('+' is not a space to edgeHub), '/'
# (ends a bag's segment), '&' and '=' (the bag's own separators), '%', '+', and non-ASCII.
AWKWARD = {
    "note": "a b/c&d=e%f+g",
    "place": "Zürich → 東京",
    "k y": "two words",
    "path": "/devices/x/",
    "$.ct": "application/json",
    "$.ce": "utf-8",
}


def test_telemetry_properties_built_by_the_firmware_arrive_as_the_exact_strings(gateway):
    # The device side builds the topic with the firmware's encoder; the gateway reads it with its
    # own parser (edgeHub's templates, urllib.parse); the hub side must see the very strings sent.
    cs = gateway.add_device("awkward")
    dev, ack = RawDevice.connect_as(gateway, cs)
    assert ack == (0, 0)
    topic = fw_topics.telemetry("awkward", None, AWKWARD)
    dev.publish(topic, b'{"t": 1}')
    dev.expect(4)  # PUBACK: handled (a topic edgeHub drops is acknowledged too, so read the store)
    dev.sock.close()
    records = [r for r in hub.read_telemetry(gateway.data) if r["device"] == "awkward"]
    assert len(records) == 1, f"not stored: the gateway dropped {topic!r} (see serve.log)"
    assert records[0]["properties"] == AWKWARD
    assert records[0]["body"] == '{"t": 1}'


# The real firmware, its Device API sending the same awkward bag: the encoder that runs on the
# board (MicroPython's .mpy build of azure_edge) must be caught too, not only its CPython import.
APP = """
import sys
sys.path.append("/lib")
from azure_edge.device import Device

dev = Device()
dev.every(0.5, lambda: dev.send({"t": 1}, properties=PROPS))
dev.run()
"""


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    return build_board(tmp_path_factory.mktemp("board"))


@pytest.mark.parametrize("runtime", ["cpython", "micropython"])
def test_the_running_firmware_sends_awkward_properties_that_arrive_as_the_exact_strings(
        runtime, gateway, tmp_path, board):  # noqa: F811
    app = tmp_path / "app.py"
    app.write_text(APP.replace("PROPS", repr(AWKWARD)), encoding="utf-8")
    dev_id = "awkward-" + runtime
    cs = gateway.add_device(dev_id, gateway_host="localhost")
    folder = write_bundle(tmp_path, gateway.pki, gateway.port, device=dev_id, connection_string=cs)
    dev = Device(runtime, folder, board, heap=DEVICE_HEAP, main=app)
    try:
        wait_for(lambda: readings_of(gateway, dev_id), 20,
                 f"a reading stored by the gateway (see serve.log; console: {dev.log_path})")
        props, body = readings_of(gateway, dev_id, props=True)[0]
        assert body == {"t": 1}
        assert {k: v for k, v in props.items() if k != "$.mid"} == AWKWARD
        assert dev.alive() and "Traceback" not in dev.console()
    finally:
        dev.stop()
