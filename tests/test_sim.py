"""The simulated board: real micropython behind a pty, driven by real mpremote over TCP."""
import json
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT, tool, wait_log
from edgekit.sim import SimBoard
from edgekit.sim import service

MAIN = """import machine
print("MAIN-RUN cause=%d" % machine.reset_cause())
import time
n = 0
while True:
    n += 1
    time.sleep(0.05)
"""


def mpremote(url, *args, timeout=30):
    """Run the real mpremote CLI against url; return stdout (fail with its stderr)."""
    done = subprocess.run([tool("mpremote"), "connect", url, *args], capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"mpremote {' '.join(args)} failed: {done.stderr[-800:]}"
    return done.stdout


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    flash = root / "flash"
    flash.mkdir()
    (flash / "boot.py").write_text('print("BOOT-RUN")\n')
    (flash / "main.py").write_text(MAIN)
    (flash / "lib").mkdir()
    (flash / "lib" / "helper.py").write_text("VALUE = 'from /lib'\n")
    sim = SimBoard(flash, heap="128K").start()
    yield sim
    sim.stop()


def test_cold_boot_runs_boot_then_main(board):
    log = wait_log(board, "MAIN-RUN")
    assert log.index("BOOT-RUN") < log.index("MAIN-RUN cause=1")  # power-on reset


def test_exec_returns_output_with_flash_as_root(board):
    # main.py loops forever: this only works if mpremote's Ctrl-C interrupts it.
    out = mpremote(board.url, "exec", "import os, sys, helper; print(6 * 7, os.getcwd(), helper.VALUE,"
                   " '/lib' in sys.path); open('/made.txt', 'w').write('on flash')")
    assert out.split() == ["42", "/", "from", "/lib", "True"]
    assert (board.flash / "made.txt").read_text() == "on flash"


def test_fs_cp_ls_run(board, tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    src = tree / "data.bin"
    src.write_bytes(bytes(range(256)) * 3)
    script = tmp_path / "script.py"
    script.write_text("import os\nprint('RUN', os.stat('/tree/data.bin')[6])\n")
    out = mpremote(board.url, "fs", "cp", "-r", str(tree), ":", "+", "fs", "ls", "/tree", "+", "run", str(script))
    assert (board.flash / "tree" / "data.bin").read_bytes() == src.read_bytes()
    assert "768 data.bin" in " ".join(out.split())
    assert "RUN 768" in out
    # mpremote skips a file whose SHA-256 on the board already matches.
    assert "Up to date: ./tree/data.bin" in mpremote(board.url, "fs", "cp", "-r", str(tree), ":")


def test_rename_of_absolute_paths_stays_on_flash(board):
    mpremote(board.url, "exec", "open('/r1.txt','w').write('x'); import os; os.mkdir('/d');"
             " os.rename('/r1.txt', '/d/r2.txt')")
    assert (board.flash / "d" / "r2.txt").read_text() == "x"


def test_soft_reset_from_raw_repl_runs_boot_only(board):
    before = board.log_path.read_text().count("MAIN-RUN")
    boots = board.log_path.read_text().count("BOOT-RUN")
    out = mpremote(board.url, "soft-reset", "+", "exec", "print('after reset')")
    assert "after reset" in out
    log = wait_log(board, "BOOT-RUN", boots + 1)
    assert "MPY: soft reboot" in log
    assert log.count("MAIN-RUN") == before  # a board skips main.py when reset from the raw REPL


def test_ctrl_d_in_friendly_repl_soft_reboots_and_reruns_main(board):
    before = board.log_path.read_text().count("MAIN-RUN")
    with socket.create_connection(("127.0.0.1", board.port), timeout=10) as s:
        s.sendall(b"\r\x03\x03")
        time.sleep(0.3)
        s.sendall(b"\r\x02")
        time.sleep(0.3)
        s.sendall(b"\x04")
        seen = b""
        deadline = time.monotonic() + 10
        while b"MAIN-RUN cause=1\r\n" not in seen and time.monotonic() < deadline:
            seen += s.recv(4096)
    assert b"MPY: soft reboot\r\n" in seen
    assert b"MAIN-RUN cause=1\r\n" in seen  # console output is cooked to CRLF like a board's
    wait_log(board, "MAIN-RUN", before + 1)


def _raw_repl(s):
    """Interrupt main.py and enter the raw REPL on socket s, as mpremote does."""
    s.sendall(b"\r\x03\x03")
    time.sleep(0.3)
    s.sendall(b"\r\x01")
    _recv_until(s, b"raw REPL; CTRL-B to exit\r\n>")


def _recv_until(s, mark, timeout=10):
    s.settimeout(0.5)
    seen = b""
    deadline = time.monotonic() + timeout
    while mark not in seen and time.monotonic() < deadline:
        try:
            seen += s.recv(4096)
        except TimeoutError:
            pass
    assert mark in seen, f"{mark!r} not seen in {seen[-300:]!r}"
    return seen


def test_ctrl_b_ctrl_d_sent_while_the_board_is_busy_still_soft_reboot(board):
    # deploy's soft reset: mpremote answers a command's last output at once with Ctrl-B (friendly
    # REPL) and Ctrl-D (soft reset). A UART queues them whatever the board is doing; the
    # sim's pty must not eat the Ctrl-D as end-of-file while code still runs (issue 22).
    before = board.log_path.read_text().count("MAIN-RUN")
    with socket.create_connection(("127.0.0.1", board.port), timeout=10) as s:
        _raw_repl(s)
        s.sendall(b"import time\ntime.sleep(0.6)\x04")
        _recv_until(s, b"OK")
        s.sendall(b"\r\x02\x04")  # arrives while time.sleep() runs
        seen = _recv_until(s, b"MAIN-RUN cause=1\r\n")
    assert b"MPY: soft reboot\r\n" in seen
    wait_log(board, "MAIN-RUN", before + 1)


def test_bytes_sent_while_code_runs_reach_it_unchanged(board):
    # No line discipline between client and board, as over a UART: no CR-to-LF, no line
    # editing, no end-of-file, no flow control.
    sent = b"a\rb\x04c\x15d\x7fe\x13f\x11g\n"
    with socket.create_connection(("127.0.0.1", board.port), timeout=10) as s:
        _raw_repl(s)
        s.sendall(b"import sys,time\ntime.sleep(0.3)\nprint(repr(sys.stdin.buffer.read(%d)))\x04" % len(sent))
        _recv_until(s, b"OK")
        s.sendall(sent)
        seen = _recv_until(s, b"\x04>")
        s.sendall(b"\r\x02")
    assert repr(sent).encode() in seen


def test_machine_reset_restarts_like_a_board(board):
    before = board.log_path.read_text().count("MAIN-RUN")
    boots = board.boots
    mpremote(board.url, "exec", "--no-follow", "import machine; machine.reset()")
    wait_log(board, "MAIN-RUN cause=5", 1)  # esp32 reports SOFT_RESET after machine.reset()
    assert board.log_path.read_text().count("MAIN-RUN") == before + 1
    assert board.boots > boots


def test_network_wlan_stand_in(board):
    out = mpremote(board.url, "exec", """import network
w = network.WLAN(network.STA_IF)
try:
    w.connect('ssid', 'key')
except OSError as e:
    print('inactive:', e)
w.active(True)
print(w.isconnected())
w.connect('ssid', 'key')
print(w.isconnected(), w.status() == network.STAT_GOT_IP, w.status('rssi'), w.ifconfig()[0])
import machine
machine.WDT(timeout=1000).feed()
""")
    lines = out.strip().splitlines()
    assert lines == ["inactive: Wifi Not Started", "False", "True True -50 127.0.0.1"]


def test_heap_is_bounded(board):
    out = mpremote(board.url, "exec", "import gc; gc.collect(); print(gc.mem_free() + gc.mem_alloc())")
    assert 100_000 < int(out) <= 128 * 1024


def test_newest_connection_takes_over(board):
    with socket.create_connection(("127.0.0.1", board.port), timeout=5):
        # A forgotten monitor must not lock mpremote out.
        assert "ok" in mpremote(board.url, "exec", "print('ok')")


def test_background_service_start_status_stop(tmp_path):
    state = service.start(tmp_path, heap="128K")
    try:
        assert service.status(tmp_path)["port"] == state["port"]
        assert service.start(tmp_path)["pid"] == state["pid"]  # reused, not a second board
        assert "ok" in mpremote(state["url"], "exec", "print('ok')")
        out = subprocess.run([sys.executable, "-m", "edgekit", "sim", "status", "--state-dir", str(tmp_path)],
                             capture_output=True, text=True, cwd=ROOT, timeout=30).stdout
        assert state["url"] in out
        assert json.loads((tmp_path / "state.json").read_text())["flash"] == str(tmp_path / "flash")
        # As a DevKitC flashed by `edgekit flash`: the outbox partition of boards/sim.json, its
        # blocks in the state folder beside /data's.
        out = mpremote(state["url"], "exec", "import esp32\n"
                       "print(esp32.Partition.find(esp32.Partition.TYPE_DATA, label='outbox')[0].info())")
        assert "(1, 128, 3932160, 262144, 'outbox', False)" in out
        assert state["outbox_partition"] == 262144 and (tmp_path / "flash-outbox.img").stat().st_size == 262144
    finally:
        assert service.stop(tmp_path)
    assert service.status(tmp_path) is None
    assert not (tmp_path / "state.json").exists()


def test_outbox_partition_survives_a_restart(tmp_path):
    # A board flashed with the raw outbox partition (board/esp32.py): find() gives it, its
    # blocks live in FLASH-outbox.img and keep what was programmed across a restart; without
    # it, find() gives an empty list, as on a board.
    flash = tmp_path / "flash"
    flash.mkdir()
    sim = SimBoard(flash, heap="128K", outbox_blocks=16).start()
    try:
        out = mpremote(sim.url, "exec", "import esp32; P = esp32.Partition\n"
                       "p = P.find(P.TYPE_DATA, label='outbox')[0]\n"
                       "p.ioctl(6, 3); p.writeblocks(3, b'kept', 8); print(p.info(), p.ioctl(4, 0))")
        assert "(1, 128, 4128768, 65536, 'outbox', False) 16" in out
    finally:
        sim.stop()
    assert sim.outbox_image.stat().st_size == 16 * 4096
    sim = SimBoard(flash, heap="128K", outbox_blocks=16).start()
    try:
        out = mpremote(sim.url, "exec", "import esp32; b = bytearray(4)\n"
                       "esp32.Partition('outbox').readblocks(3, b, 8); print(bytes(b))")
        assert "b'kept'" in out
    finally:
        sim.stop()
    # --no-outbox-partition: the table `edgekit flash --no-outbox-partition` leaves (MicroPython's
    # own, its vfs made at boot), so the firmware keeps its outbox in files on /data.
    sim = SimBoard(flash, heap="128K", outbox_blocks=0).start()
    try:
        out = mpremote(sim.url, "exec", "import esp32; P = esp32.Partition\n"
                       "print(P.find(P.TYPE_DATA, label='outbox'), [p.info()[4] for p in P.find(P.TYPE_DATA)])")
        assert "[] ['nvs', 'phy_init', 'vfs']" in out
    finally:
        sim.stop()


def test_sim_start_passes_the_outbox_choice_to_the_serving_board(tmp_path, monkeypatch):
    # `edgekit sim start` runs `sim serve` in the background: the choice must reach it.
    seen = []

    class Gone:  # a serve process that exits at once: start() says so and stops
        def __init__(self, argv, **kwargs):
            seen.append(argv[argv.index("serve") + 1:])

        def poll(self):
            return 1

    monkeypatch.setattr(service.subprocess, "Popen", Gone)
    for blocks in (None, 0, 16):
        with pytest.raises(service.SimError, match="did not start"):
            service.start(tmp_path, outbox_blocks=blocks)
    flags = [[a for a in argv if "outbox" in a] for argv in seen]
    assert flags == [[], ["--no-outbox-partition"], ["--outbox-partition"]]
    assert seen[2][seen[2].index("--outbox-partition") + 1] == "16"
