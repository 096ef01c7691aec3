"""boards/: every board file loads, holds the facts flashing and deploying rely on, and bad files are refused."""
import json

import pytest
from click.testing import CliRunner

from edgekit import BOARDS_DIR
from edgekit.boards import BoardError, list_boards, load_board, read_board_file
from edgekit.cli import main

REQUIRED = {
    "esp32-devkitc": ("esp32", "micropython", 0x1000, "xtensawin"),
    "esp32-s3-devkitc-1": ("esp32s3", "micropython", 0x0, "xtensawin"),
    "esp32-c3-devkitm-1": ("esp32c3", "micropython", 0x0, "rv32imc"),
    "esp32-c6-devkitc-1": ("esp32c6", "micropython", 0x0, "rv32imc"),
    "adafruit-feather-esp32s3": ("esp32s3", "circuitpython", 0x0, None),
    "lolin-s2-mini": ("esp32s2", "circuitpython", 0x0, None),
    "sim": ("sim", "micropython", 0x0, None),
}


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_required_boards_hold_the_documented_facts(name):
    board = load_board(name)
    assert (board.chip, board.runtime, board.flash_offset, board.mpy_arch) == REQUIRED[name]
    assert board.name == name and board.description
    if board.simulated:
        assert board.port_pattern.startswith("socket://127.0.0.1:")
        assert board.firmware.url is None
        # Nothing flashes the sim, but its two speeds differ as a DevKitC's do: a command that
        # opened the REPL at flash_baud would then fail the RFC 2217 tests (test_sim_uart).
        assert board.flash_baud != board.console_baud
    else:
        # Release files live where the project publishes them, over HTTPS, named by release id.
        assert board.firmware.url.startswith("https://")
        assert board.firmware.url.endswith("/" + board.firmware.file)
        assert board.firmware.release in board.firmware.file
        assert board.flash_baud >= 115200
    # MicroPython's and CircuitPython's REPL: 115200 on a USB-UART bridge (native USB ignores it).
    assert board.console_baud == 115200
    for usb_id in board.usb_ids:
        assert usb_id == usb_id.lower() and len(usb_id.split(":")) == 2
    assert bool(board.usb_ids) != board.simulated


def test_list_boards_covers_every_file():
    names = [b.name for b in list_boards()]
    assert names == sorted(p.stem for p in BOARDS_DIR.glob("*.json"))
    assert set(REQUIRED) <= set(names)


def test_unknown_board_names_the_known_ones():
    with pytest.raises(BoardError) as e:
        load_board("esp32-nope")
    assert "esp32-nope" in str(e.value) and "esp32-devkitc" in str(e.value) and "lolin-s2-mini" in str(e.value)
    assert isinstance(e.value, ValueError)


def test_a_new_board_is_just_a_file(tmp_path):
    data = json.loads((BOARDS_DIR / "esp32-devkitc.json").read_text())
    data.update(name="my-esp32-wrover", led_pin=5, description="my own board")
    (tmp_path / "my-esp32-wrover.json").write_text(json.dumps(data))
    board = load_board("my-esp32-wrover", boards_dir=tmp_path)
    assert board.led_pin == 5 and board.chip == "esp32" and board.flash_offset == 0x1000


@pytest.mark.parametrize("change, words", [
    ({"chip": "esp33"}, "chip 'esp33'"),
    ({"runtime": "zephyr"}, "runtime"),
    ({"flash_offset": "4096k"}, "flash_offset"),
    ({"console_baud": "fast"}, "'console_baud'"),
    ({"flash_baud": True}, "'flash_baud'"),
    ({"console_baud": 1200}, "console_baud 1200 is too low"),
    ({"baud": 460800}, "'baud' is now two: 'console_baud'"),
    ({"usb_ids": ["10C4-EA60"]}, "usb_ids entry"),
    ({"mpy_arch": "armv7m"}, "mpy_arch"),
    ({"name": "other"}, "must match the file name"),
    ({"firmware": {"release": "x", "file": "x.bin", "url": None, "sha256": None}}, "file and url"),
    ({"firmware": {"release": "x", "file": "x.bin", "url": "https://e/x.bin", "sha256": "abc"}}, "sha256"),
    ({"firmware": {"release": "x", "file": None, "url": None, "sha256": None, "ota": "yes"}}, "'ota'"),
])
def test_malformed_board_files_are_refused_naming_the_field(tmp_path, change, words):
    data = json.loads((BOARDS_DIR / "esp32-devkitc.json").read_text())
    data.update(change)
    path = tmp_path / "esp32-devkitc.json"
    path.write_text(json.dumps(data))
    with pytest.raises(BoardError) as e:
        read_board_file(path)
    assert words in str(e.value) and str(path) in str(e.value)


@pytest.mark.parametrize("field", ["port_pattern", "console_baud"])
def test_missing_field_and_bad_json(tmp_path, field):
    data = json.loads((BOARDS_DIR / "sim.json").read_text())
    del data[field]
    (tmp_path / "sim.json").write_text(json.dumps(data))
    with pytest.raises(BoardError, match=f"missing field '{field}'"):
        read_board_file(tmp_path / "sim.json")
    (tmp_path / "sim.json").write_text("{oops")
    with pytest.raises(BoardError, match="not valid JSON"):
        read_board_file(tmp_path / "sim.json")


def test_boards_command_lists_every_board():
    result = CliRunner().invoke(main, ["boards"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["board", "chip", "runtime"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {b.name for b in list_boards()}
    assert rows["esp32-devkitc"][1:4] == ["esp32", "micropython", "0x1000"]
    assert "console baud" in lines[0] and "flash baud" in lines[0]
    assert rows["esp32-devkitc"][4:6] == ["115200", "460800"]  # the REPL's speed, then esptool's
    assert rows["lolin-s2-mini"][6] == ".py"  # CircuitPython gets sources, not .mpy
    as_json = CliRunner().invoke(main, ["boards", "--json"])
    assert {b["name"] for b in json.loads(as_json.output)} == set(rows)


class _Opened(Exception):
    pass


@pytest.mark.parametrize("name", sorted(REQUIRED))
@pytest.mark.parametrize("command", ["deploy", "monitor"])
@pytest.mark.parametrize("override", [None, 57600])
def test_commands_open_the_console_at_the_board_files_speed(monkeypatch, tmp_path, name, command, override):
    # Every way to the REPL goes through pyserial's serial_for_url: record the speed asked for.
    import serial

    asked = []

    def record(url, *args, **kwargs):
        asked.append(kwargs.get("baudrate"))
        raise _Opened(url)

    monkeypatch.setattr(serial, "serial_for_url", record)
    args = [command, name, "-p", "/dev/ttyEDGEKIT9"] + (["-b", str(override)] if override else [])
    if command == "deploy":
        args += ["--device", "dev1", "--bundles", str(tmp_path), "--direct", "--watch", "0"]
        monkeypatch.setattr("edgekit.deploy.core.check_bundle", lambda *a, **k: None)
        monkeypatch.setattr("edgekit.deploy.core.plan_sources", lambda *a, **k: [])
        monkeypatch.setattr("edgekit.deploy.core.build", lambda *a, **k: ([], None))
    result = CliRunner().invoke(main, args)
    assert isinstance(result.exception, _Opened), result.output
    assert asked == [override or load_board(name).console_baud]
