"""Issue 25: what a peer sends never reaches the gateway's console or serve.log raw.

A client id and a telemetry body are the device's choice. Raw, an ESC drives the terminal that
shows the console and a CR/LF writes a line that looks like the gateway's own.
"""
import json

from click.testing import CliRunner

from edgekit.cli import main
from edgekit.printable import printable
from gateway_helpers import RawDevice, connect, gateway  # noqa: F401
from azure_edge import topics  # noqa: E402

FORGED = "\x1b[2J\x07\rok\n12:00:00 connected admin (SAS token) from 10.0.0.1"


def test_printable_escapes_controls_as_json_does_and_keeps_the_rest():
    assert printable("a\x1b[31mb\r\n\tc\x07") == "a\\u001b[31mb\\r\\n\\tc\\u0007"
    assert printable("\x7f\x9b\u2028") == "\\u007f\\u009b\\u2028"  # what json.dumps leaves raw
    assert printable("é ü ✓ {\"k\": 1}") == "é ü ✓ {\"k\": 1}"
    doc = json.dumps({"body": "x\x9by"}, ensure_ascii=False)
    assert json.loads(printable(doc)) == {"body": "x\x9by"}  # still the same JSON


def test_client_id_and_telemetry_body_are_escaped_on_the_console(gateway):
    dev = RawDevice(gateway)
    dev.send(connect(FORGED, "hub/x/?api-version=2021-04-12", "x"))
    assert dev.connack()[1] != 0
    dev.sock.close()
    cs = gateway.add_device("chatty")
    dev, ack = RawDevice.connect_as(gateway, cs)
    assert ack == (0, 0)
    dev.publish(topics.telemetry("chatty"), FORGED.encode())
    dev.expect(4)
    dev.sock.close()
    out = gateway.output()
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out
    assert "\n12:00:00 connected admin" not in out  # no forged line of its own
    assert "\\u001b[2J\\u0007\\rok\\n12:00:00 connected admin" in out
    assert "telemetry chatty: \\u001b[2J" in out


def test_telemetry_command_escapes_c1_controls_too(gateway):
    cs = gateway.add_device("c1-dev")
    dev, _ = RawDevice.connect_as(gateway, cs)
    dev.publish(topics.telemetry("c1-dev"), "csi\u009b2J".encode())
    dev.expect(4)
    dev.sock.close()
    result = CliRunner().invoke(main, ["gateway", "telemetry", "--device", "c1-dev", "--data", str(gateway.data)])
    assert result.exit_code == 0, result.output
    assert "\u009b" not in result.output
    assert json.loads(result.output.splitlines()[-1])["body"] == "csi\u009b2J"
