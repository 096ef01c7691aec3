"""The CLI as esptool and mpremote users expect it, and deploy's checks, against the simulated board.

Real parts: the simulated board (real MicroPython behind socket://), real mpremote, real
pyserial, the real click command in a subprocess where a terminal or a signal matters.
"""
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from conftest import ROOT
from edgekit import ports
from edgekit.boards import load_board
from edgekit.cli import main
from edgekit.deploy import DeployError, deploy
from edgekit.sim import SimBoard
from test_deploy import CONNSTR, make_bundle

EDGEKIT = [sys.executable, "-m", "edgekit"]


def make_firmware(root, main_py):
    """A one-module firmware whose main.py prints what the test needs the console to say."""
    fw = root / "firmware"
    (fw / "azure_edge").mkdir(parents=True)
    (fw / "azure_edge" / "__init__.py").write_text("")
    (fw / "main.py").write_text(main_py)
    return fw


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    board = SimBoard(tmp_path_factory.mktemp("sim") / "flash", heap="192K").start()
    yield board
    board.stop()


def run(args, env=None, color=False):
    runner = CliRunner()
    result = runner.invoke(main, args, env=env, color=color)
    return result.exit_code, result.output


# --- -p/--port: env vars, auto, mpremote's shortcuts; flash finds the port like deploy ---

def test_port_shortcuts_are_mpremotes():
    assert [ports.expand(p) for p in ("u0", "a1", "c3", "/dev/ttyUSB2", "socket://h:1", "u")] == [
        "/dev/ttyUSB0", "/dev/ttyACM1", "COM3", "/dev/ttyUSB2", "socket://h:1", "u"]


def test_auto_finds_the_one_plugged_in_port(tmp_path):
    board = dataclasses.replace(load_board("esp32-devkitc"), port_pattern=str(tmp_path / "ttyUSB*"))
    with pytest.raises(ports.PortError, match=r"give -p PORT for esp32-devkitc .*none is plugged in"):
        ports.find_port(board, None)
    (tmp_path / "ttyUSB3").touch()
    assert ports.find_port(board, "auto") == str(tmp_path / "ttyUSB3")
    (tmp_path / "ttyUSB4").touch()
    with pytest.raises(ports.PortError, match="found .*ttyUSB3, .*ttyUSB4"):
        ports.find_port(board, None)
    assert ports.find_port(board, "a0") == "/dev/ttyACM0"


@pytest.mark.parametrize("command", ["deploy", "flash", "monitor"])
def test_every_board_command_reads_the_port_from_p_and_the_environment(tmp_path, command):
    fw = make_firmware(tmp_path, "print('x')\n")
    bundles = make_bundle(tmp_path)
    image = tmp_path / "fw.bin"
    from test_flash import build_image
    image.write_bytes(build_image("esp32"))
    extra = {"deploy": ["--device", "dev-7", "--firmware", str(fw), "--bundles", str(bundles)],
             "flash": ["--firmware", str(image)], "monitor": []}[command]
    board = "esp32-devkitc"
    for args, env, shown in ((["-p", "u7"], {}, "/dev/ttyUSB7"),
                             ([], {"EDGEKIT_PORT": "a7"}, "/dev/ttyACM7"),
                             ([], {"ESPTOOL_PORT": "/dev/ttyNOPE9"}, "/dev/ttyNOPE9"),
                             ([], {"EDGEKIT_PORT": "/dev/ttyNOPE8", "ESPTOOL_PORT": "/dev/ttyNOPE9"},
                              "/dev/ttyNOPE8")):
        clean = {k: None for k in ports.ENV_VARS}
        code, out = run([command, board, *args, *extra], env={**clean, **env})
        assert code == 1, out
        assert shown in out and "Traceback" not in out
        assert out.strip().splitlines()[-1].startswith("error: ")


def test_flash_finds_the_port_the_way_deploy_does(tmp_path, monkeypatch):
    from edgekit import boards
    from test_flash import build_image

    image = tmp_path / "fw.bin"
    image.write_bytes(build_image("esp32"))
    fake = dataclasses.replace(load_board("esp32-devkitc"), port_pattern=str(tmp_path / "ttyUSB*"))
    from edgekit.deploy import cli as deploy_cli
    for module in (boards, deploy_cli):
        monkeypatch.setattr(module, "load_board", lambda name, boards_dir=None: fake)
    (tmp_path / "ttyUSB5").write_bytes(b"")  # the one "plugged-in" port (a file, not a UART)
    env = {k: None for k in ports.ENV_VARS}
    for args in (["flash", "esp32-devkitc", "--firmware", str(image)],
                 ["deploy", "esp32-devkitc", "--device", "dev-7", "--bundles", str(make_bundle(tmp_path))]):
        code, out = run(args, env=env)
        assert f"port: {tmp_path / 'ttyUSB5'} (the only {tmp_path / 'ttyUSB*'})" in out, out
        assert code == 1 and "Traceback" not in out  # a file is no serial port: one line


# --- TCP ports have their own names; the old spelling still works, with a notice ---

def test_bundle_gateway_port_and_the_old_spelling(tmp_path):
    ca = tmp_path / "ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-subj", "/CN=test root", "-keyout", str(tmp_path / "ca.key"), "-out", str(ca),
                    "-days", "2", "-addext", "basicConstraints=critical,CA:TRUE"],
                   check=True, capture_output=True)
    base = ["bundle", "dev-7", "-c", CONNSTR, "--ca", str(ca), "--no-wifi", "--force", "--out", str(tmp_path)]
    code, out = run(base + ["--gateway-port", "18883"])
    assert code == 0, out
    assert "notice" not in out
    assert json.loads((tmp_path / "dev-7" / "config.json").read_text())["port"] == 18883
    code, out = run(base + ["--port", "18884"])
    assert code == 0, out
    assert "notice: --port is now --gateway-port" in out
    assert json.loads((tmp_path / "dev-7" / "config.json").read_text())["port"] == 18884


def test_sim_listens_on_listen_and_still_on_port(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    for option, notice in (("--listen", False), ("--port", True)):
        state = tmp_path / option.strip("-")
        done = subprocess.run(EDGEKIT + ["sim", "start", option, str(free), "--state-dir", str(state)],
                              capture_output=True, text=True, cwd=ROOT, timeout=60)
        try:
            assert done.returncode == 0, done.stderr
            assert f"socket://127.0.0.1:{free}" in done.stdout
            assert ("notice: --port is now --listen" in done.stderr) is notice
        finally:
            subprocess.run(EDGEKIT + ["sim", "stop", "--state-dir", str(state)], cwd=ROOT, timeout=30)


# --- monitor: the console, Ctrl-] leaves, Ctrl-C exits 130 with one line ---

def _monitor(sim):
    return subprocess.Popen(EDGEKIT + ["monitor", "sim", "-p", sim.url], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)


def _read_until(stream, text, timeout=15):
    os.set_blocking(stream.fileno(), False)
    seen, end = b"", time.monotonic() + timeout
    while text.encode() not in seen and time.monotonic() < end:
        seen += stream.read() or b""
        time.sleep(0.05)
    return seen.decode(errors="replace")


def test_monitor_shows_the_console_and_leaves_on_ctrl_bracket(sim):
    proc = _monitor(sim)
    try:
        proc.stdin.write(b"\r\nprint(6*7 + 10**6)\r\n")
        proc.stdin.flush()
        assert "1000042" in _read_until(proc.stdout, "1000042")
        proc.stdin.write(b"\x1d")
        proc.stdin.flush()
        assert proc.wait(timeout=10) == 0
        err = proc.stderr.read().decode()
        assert "Ctrl-] leaves" in err and "the board keeps running" in err
    finally:
        proc.kill()
        proc.wait()


def test_ctrl_c_exits_130_with_one_line_of_board_state(sim):
    proc = _monitor(sim)
    try:
        _read_until(proc.stderr, "Ctrl-] leaves")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 130
        os.set_blocking(proc.stderr.fileno(), True)
        err = proc.stderr.read().decode()
        assert "Aborted!" not in err and "Traceback" not in err
        assert err.strip().splitlines()[-1] == f"interrupted: left the console of {sim.url}; the board keeps running"
    finally:
        proc.kill()
        proc.wait()


def test_ctrl_c_in_a_deploy_says_what_the_board_holds(tmp_path, sim, monkeypatch):
    from edgekit.deploy import link as links
    from edgekit.errors import Interrupted

    fw, bundles = make_firmware(tmp_path, "print('x')\n"), make_bundle(tmp_path)
    writes = []

    def interrupted_write(self, path, local):
        writes.append(path)
        if len(writes) == 2:
            raise KeyboardInterrupt  # Ctrl-C arrives while the second file is on its way
        return real_write(self, path, local)

    real_write = links.ReplLink.write
    monkeypatch.setattr(links.ReplLink, "write", interrupted_write)
    with pytest.raises(Interrupted, match=r"1 of 7 file\(s\) copied.*deploy again to finish"):
        deploy(load_board("sim"), "dev-7", port=sim.url, firmware_dir=fw, bundles_dir=bundles,
               build_dir=tmp_path / "build")
    # The command: exit 130 and that one line, no click 'Aborted!'.
    writes.clear()
    code, out = run(["deploy", "sim", "-p", sim.url, "--device", "dev-7", "--firmware", str(fw),
                     "--bundles", str(bundles), "--verify"])
    assert code == 130
    assert out.strip().splitlines()[-1].startswith("interrupted: 1 of ")
    assert "Aborted!" not in out and "Traceback" not in out


# --- colour, did-you-mean, one-line errors ---

def test_colour_on_a_terminal_none_when_piped_or_no_color():
    args = ["deploy", "esp32-devkit", "--device", "d"]
    _, coloured = run(args, color=True)
    assert "\x1b[" in coloured
    _, plain = run(args, env={"NO_COLOR": "1"}, color=True)
    assert "\x1b[" not in plain and plain.startswith("error: ")
    _, piped = run(args)
    assert "\x1b[" not in piped


def test_a_mistyped_board_gets_a_suggestion():
    for command in (["deploy", "esp32-devkit", "--device", "d"], ["flash", "esp32-devkit", "--download"],
                    ["monitor", "esp32-s3-devkit"]):
        code, out = run(command)
        assert code == 1
        assert "did you mean 'esp32-devkitc'" in out or "did you mean 'esp32-s3-devkitc-1'" in out, out
    code, out = run(["deploy", "zzz", "--device", "d"])
    assert "did you mean" not in out and "unknown board 'zzz'" in out


def test_a_wrong_mpy_arch_is_one_line_not_a_traceback(tmp_path):
    done = subprocess.run(EDGEKIT + ["mpy", str(tmp_path / "out"), "--arch", "xtensa-win"],
                          capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "'xtensa-win' is not one of 'xtensawin', 'rv32imc'" in done.stderr
    done = subprocess.run(EDGEKIT + ["mpy", "/proc/no-such-dir/out"], capture_output=True, text=True,
                          cwd=ROOT, timeout=30)
    assert (done.returncode, done.stderr) == (1, "error: /proc/no-such-dir: No such file or directory\n")


# --- deploy checks what it ships ---

def _flash_files(sim):
    return {p.relative_to(sim.flash).as_posix() for p in sim.flash.rglob("*") if p.is_file()}


def test_a_circuitpython_bundle_is_refused_by_a_micropython_board(tmp_path, sim):
    fw = make_firmware(tmp_path, "print('x')\n")
    bundles = make_bundle(tmp_path, "circuitpython")  # PEM CA, as bundle --runtime circuitpython writes
    before = _flash_files(sim)
    code, out = run(["deploy", "sim", "-p", sim.url, "--device", "dev-7", "--firmware", str(fw),
                     "--bundles", str(bundles)])
    assert code == 1
    assert "the bundle's ca (ca.pem) is PEM, but sim runs micropython, which needs DER" in out
    assert "edgekit bundle dev-7 --board sim" in out
    assert _flash_files(sim) == before  # refused before anything was copied


def test_a_bundle_without_gateway_hostname_needs_direct(tmp_path, sim):
    fw = make_firmware(tmp_path, "print('direct-ok')\n")
    bundles = make_bundle(tmp_path, connection_string=CONNSTR.replace(";GatewayHostName=gw.local", ""))
    args = ["deploy", "sim", "-p", sim.url, "--device", "dev-7", "--firmware", str(fw),
            "--bundles", str(bundles), "--watch", "0"]
    code, out = run(args)
    assert code == 1 and "has no GatewayHostName" in out and "--direct" in out
    code, out = run(args + ["--direct"])
    assert code == 0, out


# deploy --watch exits with the board's verdict (deploy/core.py): 0 connected, 3 refused or
# stopped, 4 cannot reach the gateway (quoting the diagnosis, not the retry line), 5 still trying.
@pytest.mark.parametrize("main_py, code, expected", [
    ("print('[edgekit] cannot start: the CA is PEM but MicroPython needs DER')\n", 3,
     "deployed, but the board says: [edgekit] cannot start: the CA is PEM but MicroPython needs DER"),
    ("print('[edgekit] gateway refused the device: not authorized (CONNACK 5). Set the gateway')\n", 3,
     "the board says: [edgekit] gateway refused the device: not authorized (CONNACK 5)"),
    ("print('[edgekit] TLS: the gateway certificate does not chain to the CA in the bundle')\n", 3,
     "the board says: [edgekit] TLS: the gateway certificate does not chain"),
    ("import nosuchmodule\n", 3, "the board says: ImportError: no module named 'nosuchmodule'"),
    ("print('[edgekit] connected to gw.local:8883 as dev-7')\n", 0,
     "board console: [edgekit] connected to gw.local:8883 as dev-7"),
    ("print('[edgekit] gateway gw.local:8883, hub h')\n", 3,
     "main.py ended without connecting; the board is at its REPL (its last line: [edgekit] gateway gw.local"),
    ("import time\nprint('[edgekit] no answer from gw.local:8883 (timed out)')\n"
     "for s in (1, 2, 4):\n print('[edgekit] retrying in %d.0 s' % s)\n time.sleep(0.2)\nwhile 1: time.sleep(1)\n", 4,
     "the board cannot reach the gateway (2 s): [edgekit] no answer from gw.local:8883 (timed out)"),
    ("import time\nprint('[edgekit] gateway gw.local:8883, hub h')\nwhile 1: time.sleep(1)\n", 5,
     "still trying after 2 s; its last line: [edgekit] gateway gw.local:8883, hub h"),
])
def test_deploy_watches_the_console_after_the_reset(tmp_path, sim, main_py, code, expected):
    fw, bundles = make_firmware(tmp_path, main_py), make_bundle(tmp_path)
    got, out = run(["deploy", "sim", "-p", sim.url, "--device", "dev-7", "--firmware", str(fw),
                    "--bundles", str(bundles), "--watch", "2"])
    assert got == code, out
    assert expected in out
    assert "Traceback" not in out.replace("Traceback (most", "")
    assert "retrying in" not in out  # the verdict quotes the diagnosis, never a retry line


def test_deploy_shows_a_progress_bar(tmp_path, sim):
    fw, bundles = make_firmware(tmp_path, "print('x')\n"), make_bundle(tmp_path)
    (fw / "azure_edge" / "bar.py").write_text("X = 1\n")
    code, out = run(["deploy", "sim", "-p", sim.url, "--device", "dev-7", "--firmware", str(fw),
                     "--bundles", str(bundles), "--watch", "0", "--verify"])
    assert code == 0, out
    assert "copying" in out and "[1/" not in out  # the bar replaces the per-file lines


# --- the real firmware, deployed by the command to the simulated board, against the gateway emulator ---

from gateway_helpers import gateway  # noqa: E402,F401  (a module-scoped fixture)


@pytest.mark.parametrize("parent, code, expected", [
    (True, 0, "board console: [edgekit] connected to localhost:"),
    (False, 3, "deployed, but the board says: [edgekit] gateway refused the device: not authorized (CONNACK 5)"),
])
def test_deploy_of_the_real_firmware_reports_what_the_board_says(gateway, tmp_path, parent, code,  # noqa: F811
                                                                 expected):
    from device_helpers import write_bundle

    device = f"watch-{parent}".lower()
    cs = gateway.add_device(device, gateway_host="localhost", parent=parent)
    folder = write_bundle(tmp_path, gateway.pki, gateway.port, device=device, connection_string=cs)
    # A fresh board each: a deploy over firmware that is connected (and being interrupted) is
    # the other tests' subject; this one is about the verdict.
    with SimBoard(tmp_path / "flash", heap="192K") as board:
        got, out = run(["deploy", "sim", "-p", board.url, "--device", device, "--bundles", str(folder.parent),
                        "--watch", "30"])
    assert got == code, out
    assert expected in out


def test_deploy_with_the_gateway_stopped_exits_4_with_the_firmware_diagnosis(gateway, tmp_path):  # noqa: F811
    from device_helpers import write_bundle

    cs = gateway.add_device("watch-stopped", gateway_host="localhost", parent=True)
    # A port nothing listens on: the gateway is "stopped" for this device.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    folder = write_bundle(tmp_path, gateway.pki, closed, device="watch-stopped", connection_string=cs)
    with SimBoard(tmp_path / "flash", heap="192K") as board:
        got, out = run(["deploy", "sim", "-p", board.url, "--device", "watch-stopped",
                        "--bundles", str(folder.parent), "--watch", "8"])
    assert got == 4, out
    assert f"the board cannot reach the gateway (8 s): [edgekit] localhost:{closed} refused the connection" in out
    assert "retrying in" not in out
