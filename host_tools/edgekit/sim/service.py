"""Run the simulated board in the background, found again through a state file.

`make deploy BOARD=sim` and `edgekit sim start` use this: the state folder (default
.edgekit/sim/, git-ignored) holds state.json (pid, port, flash, log), the flash folder
and console.log.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from edgekit import STATE_DIR
from edgekit.sim.supervisor import CONSOLE_BAUD, DEFAULT_HEAP, SimError

DEFAULT_STATE_DIR = STATE_DIR / "sim"
STATE_FILE = "state.json"


def state_path(state_dir=None):
    """Path of the state file in state_dir (default .edgekit/sim/)."""
    return Path(state_dir or DEFAULT_STATE_DIR) / STATE_FILE


def write_state(state_dir, board):
    """Record a serving board (called by the serving process itself once its port is bound)."""
    path = state_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"pid": os.getpid(), "port": board.port, "url": board.url, "rfc2217": board.rfc2217_url,
             "baud": board.baud, "flash": str(board.flash), "log": str(board.log_path),
             "outbox_partition": board.outbox_blocks * 4096 or None}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(path)
    return state


def clear_state(state_dir, pid=None):
    """Remove the state file (only if it names pid, when pid is given)."""
    path = state_path(state_dir)
    try:
        if pid is None or json.loads(path.read_text()).get("pid") == pid:
            path.unlink()
    except (OSError, ValueError):
        pass


def status(state_dir=None):
    """The running board's state dict, or None when no simulated board answers."""
    try:
        state = json.loads(state_path(state_dir).read_text())
        os.kill(state["pid"], 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # Not a probe connection: the board takes the newest client and would drop a monitor
    # or deploy session in use. The state file is written only once the port listens, so a
    # live `sim serve` process with that pid is the answer.
    try:
        with open(f"/proc/{state['pid']}/cmdline", "rb") as f:
            if b"sim\0serve" not in f.read():
                return None  # the pid was reused by something else
    except FileNotFoundError:
        pass  # no /proc (macOS): the live pid has to do
    return state


def start(state_dir=None, port=0, heap=DEFAULT_HEAP, timeout=20, baud=CONSOLE_BAUD, rfc2217_port=0,
          outbox_blocks=None, ota=False):
    """Make sure a simulated board runs in the background; return its state dict.

    outbox_blocks: as SimBoard's (None: sim.json's outbox partition; 0: none).
    An already running board (per the state file) is reused as it is (whatever its speed).
    """
    # Absolute: the background board must find its flash whatever its working folder.
    state_dir = Path(state_dir or DEFAULT_STATE_DIR).resolve()
    running = status(state_dir)
    if running:
        return running
    clear_state(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    out = open(state_dir / "sim.out", "ab")
    argv = [sys.executable, "-m", "edgekit", "sim", "serve", "--state-dir", str(state_dir),
            "--listen", str(port), "--heap", heap, "--baud", str(baud),
            "--rfc2217-listen", str(rfc2217_port)]
    if ota:
        argv.append("--ota")
    if outbox_blocks == 0:
        argv.append("--no-outbox-partition")
    elif outbox_blocks is not None:
        argv += ["--outbox-partition", str(outbox_blocks)]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                            start_new_session=True)
    out.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (state_dir / "sim.out").read_text(errors="replace").strip().splitlines()[-1:]
            raise SimError(f"the simulated board did not start: {' '.join(tail) or 'no output'}"
                           f" (see {state_dir / 'sim.out'})")
        running = status(state_dir)
        if running and running["pid"] == proc.pid:
            return running
        time.sleep(0.1)
    proc.terminate()
    raise SimError(f"the simulated board did not answer within {timeout} s (see {state_dir / 'sim.out'})")


def stop(state_dir=None, timeout=10):
    """Stop the background board named by the state file; False if none was running."""
    path = state_path(state_dir)
    try:
        pid = json.loads(path.read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        clear_state(state_dir)
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            # Reap it when this process started it, so a zombie does not count as alive.
            if os.waitpid(pid, os.WNOHANG)[0]:
                break
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    clear_state(state_dir)
    return True
