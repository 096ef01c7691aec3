"""`edgekit devs`: ports with their USB ids and the board files they fit (pyserial's own port records)."""
import json

from click.testing import CliRunner
from serial.tools.list_ports_common import ListPortInfo

from edgekit import devs
from edgekit.cli import main


def _port(device, vid=None, pid=None, product=None, serial_number=None):
    info = ListPortInfo(device, skip_link_detection=True)
    info.vid, info.pid, info.product, info.serial_number = vid, pid, product, serial_number
    return info


PORTS = [
    _port("/dev/ttyUSB0", 0x10C4, 0xEA60, "CP2102N USB to UART Bridge Controller", "0001"),
    _port("/dev/ttyACM0", 0x303A, 0x80C3, "S2 Mini"),
    _port("/dev/ttyACM1", 0x239A, 0x811B, "Feather ESP32S3"),
    _port("/dev/ttyS0"),
]


def test_each_port_names_the_boards_it_fits(monkeypatch):
    monkeypatch.setattr(devs, "_system_ports", lambda: PORTS)
    result = CliRunner().invoke(main, ["devs", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["device"]: row for row in json.loads(result.output)}
    # A CP210x bridge could front any of the UART-bridge boards; the chip's own USB says more.
    assert rows["/dev/ttyUSB0"]["usb_id"] == "10c4:ea60"
    assert {"esp32-devkitc", "esp32-c3-devkitm-1", "esp32-s3-devkitc-1"} <= set(rows["/dev/ttyUSB0"]["boards"])
    assert rows["/dev/ttyACM0"]["boards"] == ["lolin-s2-mini"]
    assert rows["/dev/ttyACM1"]["boards"] == ["adafruit-feather-esp32s3"]  # 239a:* (any Adafruit product)
    assert rows["/dev/ttyS0"]["usb_id"] is None and rows["/dev/ttyS0"]["boards"] == []
    text = CliRunner().invoke(main, ["devs"]).output
    assert "/dev/ttyUSB0  10c4:ea60  CP2102N USB to UART Bridge Controller" in text
    assert "/dev/ttyS0  -" in text and "no board file" in text


def test_no_ports_says_what_to_check(monkeypatch):
    monkeypatch.setattr(devs, "_system_ports", lambda: [])
    result = CliRunner().invoke(main, ["devs"])
    assert result.exit_code == 0
    assert "no serial ports found" in result.output and "data cable" in result.output
