"""The simulated board over RFC 2217, as strict as a UART board: speed and DTR/RTS."""
import subprocess
import sys
import time

import pytest
import serial

from conftest import wait_log
from edgekit.deploy.link import ReplLink
from edgekit.deploy.plan import DeployError
from edgekit.monitor import open_console
from edgekit.sim import SimBoard
from edgekit.sim.uart import resample

TEXT = bytes(range(256)) + b"MicroPython v1.29 on 2025-01-01; ESP32 module with ESP32\r\n>>> "


# --- the garbler ------------------------------------------------------------------------

@pytest.mark.parametrize("tx, rx", [(115200, 115200), (460800, 460800), (115200, 117500), (117500, 115200)])
def test_same_speed_or_within_tolerance_gives_the_bytes_back(tx, rx):
    assert resample(TEXT, tx, rx) == TEXT  # 2% apart: a UART's sampling in mid-bit still hits


@pytest.mark.parametrize("tx, rx", [(460800, 115200), (115200, 460800), (9600, 115200)])
def test_other_speed_gives_other_bytes_of_another_length(tx, rx):
    out = resample(TEXT, tx, rx)
    assert out and out != TEXT
    assert len(out) != len(TEXT)
    assert b"MicroPython" not in out


def test_fast_sender_squeezes_about_four_bytes_into_one():
    # Each receiver frame spans four of the sender's; a few bytes glitch away as short starts.
    assert len(TEXT) // 5 <= len(resample(TEXT, 460800, 115200)) <= len(TEXT) // 3


def test_framing_error_keeps_the_byte():
    # 0x00 sent at 115200, read at 230400: the stop bit is sampled inside the sender's data
    # bits (low), a framing error; the byte is kept as sampled.
    assert resample(b"\x00", 115200, 230400) == b"\x00"
    assert resample(b"", 115200, 460800) == b""


# --- the board over RFC 2217 ------------------------------------------------------------

MAIN = """import machine, time
print("MAIN-RUN cause=%d" % machine.reset_cause())
n = 0
while True:
    n += 1
    print("tick", n)
    time.sleep(0.1)
"""


@pytest.fixture
def board(tmp_path):
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "main.py").write_text(MAIN)
    sim = SimBoard(flash, heap="128K").start()
    wait_log(sim, "MAIN-RUN")
    yield sim
    sim.stop()


def rfc2217(board, baud=115200):
    return serial.serial_for_url(board.rfc2217_url, baudrate=baud, timeout=0.05)


def read_for(port, seconds, until=None):
    seen = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (until and until in seen):
        seen += port.read(4096)
    return seen


def wait_state(board, state, timeout=3):
    deadline = time.monotonic() + timeout
    while board.state != state and time.monotonic() < deadline:
        time.sleep(0.02)
    assert board.state == state


def mpremote(url, *args):
    return subprocess.run([sys.executable, "-m", "mpremote", "connect", url, *args],
                          capture_output=True, text=True, timeout=60)


def test_mpremote_at_the_console_speed(board):
    done = mpremote(board.rfc2217_url, "exec", "print(6 * 7)")
    assert done.returncode == 0, done.stderr[-800:]
    assert done.stdout.split() == ["42"]


def test_repl_link_at_the_console_speed(board):
    link = ReplLink(board.rfc2217_url, baud=115200)
    try:
        assert link.board_info()["name"] == "micropython"
    finally:
        link.close()


# --- deploy and monitor, as a user runs them, through RFC 2217 ------------------------------

def edgekit(*args):
    # errors="replace": a console at the wrong speed prints bytes that are not UTF-8.
    return subprocess.run([sys.executable, "-m", "edgekit", *args], capture_output=True, text=True,
                          errors="replace", stdin=subprocess.DEVNULL, timeout=120)


@pytest.mark.parametrize("speed", [None, 460800])
def test_deploy_at_the_board_files_speed_and_at_another(board, tmp_path, speed):
    from test_cli_conventions import make_firmware
    from test_deploy import make_bundle

    fw = make_firmware(tmp_path, "print('[edgekit] connected to gw.local:8883 as dev-7')\n")
    args = ["deploy", "sim", "-p", board.rfc2217_url, "--device", "dev-7", "--firmware", str(fw),
            "--bundles", str(make_bundle(tmp_path)), "--watch", "5"]
    done = edgekit(*args, *(["-b", str(speed)] if speed else []))
    if speed is None:  # sim.json's console_baud: 115200, the board's
        assert done.returncode == 0, done.stdout + done.stderr
        assert "board console: [edgekit] connected to gw.local:8883 as dev-7" in done.stdout
        return
    assert done.returncode == 1, done.stdout + done.stderr
    error = done.stderr.strip().splitlines()
    assert len(error) == 1, done.stderr
    assert f"no MicroPython raw REPL at {board.rfc2217_url} at 460800 baud: the board answers, but in garbage" \
        in error[0]
    assert "says its console runs at 115200 baud: drop -b 460800" in error[0]
    assert not (board.flash / "lib").exists()  # nothing was copied


@pytest.mark.parametrize("speed", [None, 460800])
def test_monitor_an_esp32_devkitc_at_its_speed_and_at_another(board, speed):
    done = edgekit("monitor", "esp32-devkitc", "-p", board.rfc2217_url, "--seconds", "1.5",
                   *(["-b", str(speed)] if speed else []))
    assert done.returncode == 0, done.stderr
    assert f"--- console of {board.rfc2217_url} at {speed or 115200} baud" in done.stderr
    if speed is None:
        assert "tick" in done.stdout and "not text" not in done.stderr
    else:
        assert "tick" not in done.stdout
        assert "are not text: 460800 baud is not its console's speed? (boards/esp32-devkitc.json says 115200" \
            in done.stderr


@pytest.mark.parametrize("baud, readable", [(115200, True), (460800, False)])
def test_console_at_another_speed_reads_garbage(board, baud, readable):
    port = open_console(board.rfc2217_url, baud)
    try:
        seen = read_for(port, 1.0)
    finally:
        port.close()
    assert len(seen) > 20  # the board prints "tick N" lines all along
    assert (b"tick" in seen) is readable


def test_opening_and_closing_do_not_reset_and_a_session_survives(board):
    starts = board.log_path.read_text().count("MAIN-RUN")
    port = rfc2217(board)  # pyserial's open() asserts DTR, then RTS: IO0 low a moment, EN never
    port.write(b"\r\x03\x03")
    port.write(b"kept = 41\r\n")
    assert b">>> " in read_for(port, 2, until=b"kept = 41\r\n>>> ")
    port.close()  # both lines released: nothing happens
    port = rfc2217(board)
    port.write(b"print(kept + 1)\r\n")
    seen = read_for(port, 2, until=b"42\r\n")
    port.close()
    assert b"42\r\n" in seen
    done = mpremote(board.rfc2217_url, "exec", "print('via mpremote')")  # closes with RTS off, then DTR off
    assert "via mpremote" in done.stdout, done.stderr[-800:]
    assert board.state == "running"
    log = board.log_path.read_text()
    assert "rst:0x1" not in log  # the ROM never printed: EN never went low
    assert log.count("MAIN-RUN") == starts


def test_held_in_reset_prints_nothing_then_boots_from_power_on(board):
    port = rfc2217(board)
    try:
        assert b"tick" in read_for(port, 1, until=b"tick")
        port.dtr = False
        port.rts = True  # EN low
        wait_state(board, "held in reset")
        port.reset_input_buffer()
        assert read_for(port, 0.5) == b""
        port.write(b"print('lost')\r\n")  # no UART receiver runs in reset
        port.rts = False  # EN high with IO0 high: the ROM boots the firmware
        seen = read_for(port, 5, until=b"tick 1\r\n")
    finally:
        port.close()
    assert b"rst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n" in seen
    assert b"MAIN-RUN cause=1\r\n" in seen  # main.py ran again; the esp32 port calls EN a power-on
    assert b"lost" not in seen
    assert board.state == "running"


def test_esptool_reset_enters_download_mode_and_a_hard_reset_leaves_it(board):
    from esptool.reset import ClassicReset, HardReset

    port = rfc2217(board)
    try:
        # esptool's own sequence as it drives a port without atomic DTR+RTS (its rfc2217 path);
        # the longer of its two delays, so a loaded machine still lands in the window.
        ClassicReset(port, reset_delay=0.55)()
        seen = read_for(port, 2, until=b"waiting for download\r\n")
        assert b"boot:0x3 (DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2))\r\nwaiting for download\r\n" in seen
        assert board.state == "waiting for download"
        port.write(b"\r\x03\r\x01")  # nothing answers a raw REPL: the ROM is no MicroPython
        assert b"raw REPL" not in read_for(port, 0.5)
        HardReset(port)()
        seen = read_for(port, 5, until=b"MAIN-RUN")
    finally:
        port.close()
    assert b"boot:0x13 (SPI_FAST_FLASH_BOOT)" in seen
    assert b"MAIN-RUN cause=1" in seen
    assert board.state == "running"


def test_esptool_cannot_sync_but_leaves_the_board_in_download_mode(board):
    done = subprocess.run([sys.executable, "-m", "esptool", "--port", board.rfc2217_url, "--connect-attempts", "2",
                           "chip-id"], capture_output=True, text=True, timeout=60)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Download mode successfully detected, but getting no sync reply" in out
    assert board.state == "waiting for download"


def test_socket_client_has_no_speed_and_no_lines(board):
    port = serial.serial_for_url(board.url, baudrate=460800, timeout=0.05)
    try:
        port.rts = True  # socket:// has no lines: nothing reaches the board
        port.dtr = False
        assert b"tick" in read_for(port, 1, until=b"tick")
    finally:
        port.close()
    assert board.state == "running"


def test_a_board_told_another_console_speed_runs_at_it(tmp_path):
    # `edgekit sim start --baud`: the console runs at the speed it was told, not at 115200.
    from conftest import ROOT
    from edgekit.sim import service

    started = subprocess.run([sys.executable, "-m", "edgekit", "sim", "start", "--state-dir", str(tmp_path),
                              "--baud", "57600", "--heap", "128K"], capture_output=True, text=True, cwd=ROOT,
                             timeout=60)
    try:
        assert started.returncode == 0, started.stderr
        assert "at 57600 baud" in started.stdout + started.stderr
        url = service.status(tmp_path)["rfc2217"]
        seen = {}
        for baud in (57600, 115200):
            port = serial.serial_for_url(url, baudrate=baud, timeout=0.05)
            try:
                port.write(b"\r\x03print('at', 6 * 7)\r\n")
                seen[baud] = read_for(port, 2, until=b"at 42")
            finally:
                port.close()
    finally:
        service.stop(tmp_path)
    assert b"at 42" in seen[57600]
    assert b"at 42" not in seen[115200]  # its input garbled, so it never ran the print
