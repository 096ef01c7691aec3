"""Shared parts of the benchmarks: paths, the test rigs they reuse, MicroPython runs, statistics."""
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from edgekit import FIRMWARE_DIR, ROOT

BENCH_DIR = Path(__file__).resolve().parent
TESTS_DIR = ROOT / "tests"
# The rigs the tests use (TLS mosquitto, paho hub, bundles, the .mpy board tree) are reused
# as they are, so the benchmarks measure exactly what the tests check.
for _path in (TESTS_DIR, FIRMWARE_DIR):  # firmware/: the host side signs SAS like the device
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

BIN = Path(sys.executable).parent
KIB = 1024
# bench/ modules that run on the device side (MicroPython), shipped as .mpy beside the firmware.
DEVICE_SCRIPTS = ("baseline_bare", "baseline_minimqtt", "mp_heap_device", "mp_connect", "mp_drain")


class BenchError(RuntimeError):
    """A benchmark could not produce its figure (the message says which and why)."""


def micropython():
    """The MicroPython unix executable: $EDGEKIT_MICROPYTHON when set (another build of
    MicroPython, e.g. a 32-bit one), else the one installed in the venv."""
    env = os.environ.get("EDGEKIT_MICROPYTHON")
    path = Path(env) if env else BIN / "micropython"
    if not path.exists():
        fix = "check EDGEKIT_MICROPYTHON" if env else "run 'make setup'"
        raise BenchError(f"no micropython executable at {path}: {fix}")
    return str(path)


def board_lib(workdir):
    """A board's /lib as deploy builds it (firmware + MiniMQTT as .mpy) plus the bench scripts as .mpy.

    Returns the board folder; its lib/ goes on MICROPYPATH.
    """
    from device_helpers import build_board
    from edgekit import mpy

    board = build_board(Path(workdir))
    # The benchmark's own device-side scripts run as .mpy too, like the firmware they sit beside.
    for name in DEVICE_SCRIPTS:
        mpy.compile_file(BENCH_DIR / f"{name}.py", board / "lib" / f"{name}.mpy",
                         source_name=f"{name}.py")
    return board


def baseline_board(board, workdir):
    """A copy of `board` for the MiniMQTT baseline: its MiniMQTT keeps publish(), which the
    firmware's build leaves out (the client writes its own PUBLISH packets), since a program
    on MiniMQTT alone publishes with it. Returns the copy's folder."""
    import shutil

    import adafruit_minimqtt.adafruit_minimqtt as minimqtt
    from edgekit.deploy.compile import compile_source

    copy = Path(workdir)
    shutil.copytree(board, copy, dirs_exist_ok=True)
    compile_source(minimqtt.__file__, copy / "lib" / "adafruit_minimqtt" / "adafruit_minimqtt.mpy",
                   source_name="/lib/adafruit_minimqtt/adafruit_minimqtt.py", keep=("publish",))
    return copy


def mp_env(board, romfs=None, **cfg):
    """Environment for a MicroPython run from `board`: its lib on MICROPYPATH (or, with a ROMFS
    image, only the interpreter's own modules), cfg as BENCH JSON."""
    path = ".frozen" if romfs else f".frozen:{Path(board) / 'lib'}"
    env = dict(os.environ, MICROPYPATH=path, BENCH=json.dumps(cfg))
    if "bundle" in cfg:
        env["EDGEKIT_BUNDLE"] = str(cfg["bundle"])
    return env


def launch(module, romfs=None):
    """`-c` code that notes the interpreter's own heap in B, then imports the device-side module
    (from the ROMFS image at `romfs`, when given)."""
    from device_helpers import romfs_mount

    mount = romfs_mount(romfs) if romfs else ""
    return mount + "import gc;gc.collect();B=gc.mem_alloc();import " + module


def mp_start(board, module, heap, cfg, log_path, romfs=None):
    """Start `module` under MicroPython with a heap limit (e.g. "96K"); stdout+stderr to log_path."""
    log = open(log_path, "wb")
    argv = [micropython(), "-X", f"heapsize={heap}", "-c", launch(module, romfs)]
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                            env=mp_env(board, romfs, **cfg))
    proc.bench_log = log
    proc.bench_log_path = Path(log_path)
    return proc


def mp_stop(proc):
    """Stop a run started by mp_start (if still running) and close its log."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    proc.bench_log.close()


def json_lines(text):
    """Every line of text that is a JSON object, parsed (console lines are skipped)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def last_record(text, key):
    """The last JSON line of text that has `key`, or None."""
    found = [r for r in json_lines(text) if key in r]
    return found[-1] if found else None


def median(values):
    return statistics.median(values) if values else None


def ratio(a, b):
    """a / b rounded for a table, None when either side is missing."""
    if a is None or not b:
        return None
    return round(a / b, 3)


def wait_until(predicate, timeout, what, poll=0.02):
    """Poll predicate until it is truthy; BenchError naming `what` on timeout."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise BenchError(f"timed out after {timeout} s waiting for {what}")

