"""`serve --detach` and `gateway stop`: the gateway as a background process of its data folder.

The detached gateway is the same `edgekit gateway serve` in its own session, its output in
DATA/serve.log. It is ready when DATA/gateway.json names its pid (serve has printed its start-up
lines by then: the web view's address and any warning are read back from the log, so the token
stays out of gateway.json); it is stopped with
SIGTERM, which serve answers by closing cleanly and removing gateway.json.
"""
import json
import os
import signal
import subprocess
import sys
import time

from edgekit.gateway import GATEWAY_JSON
from edgekit.gateway.serve import WEB_VIEW_LINE, ServeError

LOG = "serve.log"


def _info(data_dir):
    try:
        with open(os.path.join(data_dir, GATEWAY_JSON)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _last_line(path):
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _start_up_lines(path, offset):
    """The lines this run of serve wrote to the log so far (the log keeps every earlier run too)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace").splitlines()
    except OSError:
        return []


def start(serve_args, data_dir, timeout=60.0):
    """Start `edgekit gateway serve SERVE_ARGS --data DATA` in the background; wait until it is ready.

    Returns DATA/gateway.json's contents plus "log", "web_url" (the web view's address with its
    token, when serve has one; None otherwise) and "warnings" (serve's start-up warning lines).
    ServeError (with serve's own last line, e.g. a taken port) when it exits first or is not
    ready within timeout.
    """
    data_dir = os.path.abspath(os.fspath(data_dir))
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    log_path = os.path.join(data_dir, LOG)
    argv = [sys.executable, "-m", "edgekit", "gateway", "serve", *serve_args, "--data", data_dir]
    with open(log_path, "ab") as log:
        os.chmod(log_path, 0o600)
        offset = log.tell()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = _info(data_dir)
        if info and info.get("pid") == proc.pid:
            # serve prints its start-up lines before it writes gateway.json: they are in the log now.
            lines = _start_up_lines(log_path, offset)
            info["log"] = log_path
            info["web_url"] = next((ln[len(WEB_VIEW_LINE):].strip() for ln in lines
                                    if ln.startswith(WEB_VIEW_LINE)), None)
            info["warnings"] = [ln.strip() for ln in lines if ln.startswith("warning: ")]
            return info
        if proc.poll() is not None:
            last = _last_line(log_path)
            if last.startswith("error: "):
                last = last[len("error: "):]
            raise ServeError(last or f"the gateway exited with {proc.returncode}; see {log_path}")
        time.sleep(0.05)
    proc.terminate()
    raise ServeError(f"the gateway was not ready within {timeout:g} s; see {log_path}")


def stop(data_dir, timeout=10.0):
    """SIGTERM the gateway serving data_dir and wait until it is gone; its pid, or None if none ran."""
    data_dir = os.fspath(data_dir)
    info = _info(data_dir)
    if not info or not isinstance(info.get("pid"), int):
        return None
    pid = info["pid"]
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        os.unlink(os.path.join(data_dir, GATEWAY_JSON))  # left by a gateway that was killed
        return None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:  # our own child: reap it, a zombie is not alive
                return pid
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        time.sleep(0.05)
    raise ServeError(f"the gateway (pid {pid}) did not stop within {timeout:g} s; "
                     f"'kill {pid}' ends it")
