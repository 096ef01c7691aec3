"""`edgekit demo` end to end: real gateway emulator, real simulated board (real MicroPython),
real mpremote; then its failure paths (port taken, Ctrl-C, a demo killed hard) leave nothing
running."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from device_helpers import readings_of
from edgekit.demo import DESIRED_INTERVAL, METHOD_INTERVAL, abbreviate_connection_string, run_demo
from edgekit.gateway import store

DEMO = [sys.executable, "-m", "edgekit", "demo"]


def processes_of(workdir):
    """Pids whose command line or environment names workdir (gateway, sim, its micropython)."""
    needle = str(workdir).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                continue
            if needle in (entry / "cmdline").read_bytes() or needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return found


def kill_leftovers(workdir):
    # Only processes this test started carry its tmp folder: end them if an assertion failed.
    for pid in processes_of(workdir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def wait_output(path, text, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not printed within {timeout} s:\n{path.read_text(errors='replace')[-3000:]}")


def test_connection_string_is_abbreviated():
    cs = "HostName=h.azure-devices.net;DeviceId=d;SharedAccessKey=c2VjcmV0c2VjcmV0;GatewayHostName=gw"
    short = abbreviate_connection_string(cs)
    assert "c2VjcmV0c2VjcmV0" not in short and "SharedAccessKey=c2Vj...;" in short
    assert short.startswith("HostName=h.azure-devices.net;DeviceId=d;") and short.endswith(";GatewayHostName=gw")


def test_demo_end_to_end(tmp_path):
    work = tmp_path / "demo"
    lines = []
    try:
        result = run_demo(work, timeout=120, out=lines.append)
    finally:
        kill_leftovers(work)
    text = "\n".join(lines)
    assert result.ok, text
    assert [s.name for s in result.steps if not s.ok] == []
    assert result.failure_line() is None and "demo passed" in lines[-1]

    # Telemetry: at least five, seq increasing, as the gateway stored it (read back from its store).
    stored = readings_of(work / "gateway", "demo-device")
    assert len(stored) >= 5
    seqs = [r["seq"] for r in stored]
    assert seqs == sorted(set(seqs)) and seqs[0] == 1
    assert [r["seq"] for r in result.telemetry] == seqs[:len(result.telemetry)]

    # Direct methods: the device's own answers.
    (ping, ping_payload, ping_status, pong), (setint, setint_payload, setint_status, answer) = result.methods
    assert (ping, ping_status) == ("ping", 200) and abs(pong["pong"] - time.time()) < 120
    assert (setint, setint_payload, setint_status) == ("set_interval", {"seconds": METHOD_INTERVAL}, 200)
    assert answer == {"interval": METHOD_INTERVAL}

    # Twin: the reported interval answers the desired one, also in the gateway's stored twins.
    assert result.desired == {"interval": DESIRED_INTERVAL}
    assert result.reported["interval"] == DESIRED_INTERVAL and result.reported["runtime"] == "micropython"
    twin = store.read_twin(work / "gateway", "demo-device")
    assert twin["desired"]["interval"] == twin["reported"]["interval"] == DESIRED_INTERVAL

    # The board really ran the deployed firmware against the gateway.
    console = (work / "sim" / "console.log").read_text(errors="replace")
    assert f"connected to localhost:{result.gateway_port} as demo-device" in console
    assert "method ping -> 200" in console and "method set_interval -> 200" in console
    assert (work / "sim" / "flash" / "lib" / "azure_edge" / "client.mpy").is_file()

    # Nothing left running, nothing listening, the key never printed in full.
    assert result.leftovers == []
    assert processes_of(work) == []
    for port in (result.gateway_port, result.control_port, result.sim_port):
        assert not port_open(port), port
    assert not (work / "gateway" / "gateway.json").exists() and not (work / "sim" / "state.json").exists()
    key = json.loads((work / "gateway" / "registry.json").read_text())["devices"]["demo-device"]["key"]
    assert key not in text and key[:4] + "..." in text
    assert (work / "bundles" / "demo-device" / "config.json").stat().st_mode & 0o777 == 0o600


def test_port_taken_is_one_line_and_stops_everything(tmp_path):
    work = tmp_path / "demo"
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen(1)
    port = squatter.getsockname()[1]
    try:
        done = subprocess.run(DEMO + ["--workdir", str(work), "--listen", str(port), "--timeout", "60"],
                              capture_output=True, text=True, cwd=ROOT, timeout=90)
    finally:
        kill_leftovers(work)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stdout + done.stderr
    assert len(err) == 1, done.stderr
    assert err[0].startswith(f"error: demo step 'gateway' failed: cannot listen on 127.0.0.1:{port}"), err[0]
    assert f"(logs: gateway {work / 'gateway.log'})" in err[0]  # the sim never started: no console log
    assert "Traceback" not in done.stdout + done.stderr
    summary = done.stdout.split("summary:")[1]
    assert "\u2717 gateway" in summary and "- sim" in summary and "\u2713 stop" in summary
    assert processes_of(work) == []
    assert port_open(port)  # the demo failed cleanly; it did not touch what held the port
    squatter.close()


def test_device_refused_fails_telemetry_with_the_reason(tmp_path, monkeypatch):
    # Deliberately broken: the device is registered without the gateway as its parent, so
    # the gateway refuses it (CONNACK 5) while gateway and board both run.
    from edgekit import demo
    from edgekit.gateway import registry
    add_device = registry.add_device
    monkeypatch.setattr(registry, "add_device", lambda *a, **kw: add_device(*a, **dict(kw, parent=False)))
    monkeypatch.setitem(demo.STEP_TIMEOUTS, "telemetry", 6)
    work = tmp_path / "demo"
    lines = []
    try:
        result = run_demo(work, timeout=60, out=lines.append)
    finally:
        kill_leftovers(work)
    line = result.failure_line()
    assert not result.ok and result.failed_step == "telemetry" and "\n" not in line
    assert line.startswith("demo step 'telemetry' failed: 5 telemetry messages from demo-device not seen"
                           " within the step's limit of 6 s (got 0); the board's console last said:"
                           " [edgekit] gateway refused the device: not authorized (CONNACK 5)"), line
    assert f"sim console {work / 'sim' / 'console.log'}" in line and f"gateway {work / 'gateway.log'}" in line
    assert [s.ok for s in result.steps][-4:] == [False, None, None, True]  # telemetry, method, twin, stop
    assert result.leftovers == [] and processes_of(work) == []
    for port in (result.gateway_port, result.control_port, result.sim_port):
        assert not port_open(port), port


@pytest.mark.parametrize("how", ["ctrl-c", "killed"])
def test_interrupted_demo_leaves_nothing_running(tmp_path, how):
    # Ctrl-C: the demo stops gateway and board itself. SIGKILL: it cannot, so the next demo
    # in the same folder finds what was left and stops it before starting afresh.
    work = tmp_path / "demo"
    out = tmp_path / "demo.out"
    try:
        with open(out, "wb") as f:
            proc = subprocess.Popen(DEMO + ["--workdir", str(work)], stdout=f, stderr=subprocess.PIPE, cwd=ROOT)
        wait_output(out, "[ 8/11] telemetry", 60)  # gateway and board running, firmware deployed
        assert len(processes_of(work)) >= 3  # gateway, sim service, its micropython
        if how == "ctrl-c":
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=30)
            err = stderr.decode().strip().splitlines()
            assert proc.returncode == 130
            assert len(err) == 1 and err[0].startswith("error: demo step ") and "interrupted (Ctrl-C)" in err[0], err
            assert "\u2713 stop" in out.read_text()
            assert processes_of(work) == []
            return
        proc.kill()
        proc.wait(10)
        proc.stderr.close()
        left = processes_of(work)
        assert left, "SIGKILL left nothing behind to clean up"
        lines = []
        result = run_demo(work, timeout=120, out=lines.append)
        text = "\n".join(lines)
        assert "stopped the simulated board a previous demo left running" in text
        assert "stopped the gateway" in text and "a previous demo left running" in text
        assert result.ok, text
        assert not any(pid in processes_of(work) for pid in left)
        assert processes_of(work) == []
    finally:
        kill_leftovers(work)


def test_make_demo_runs_the_cli_after_setup(tmp_path):
    # What `make demo` would run (make -n runs nothing): setup first, then edgekit demo with ARGS.
    # Under `make test` this make is nested: without MAKELEVEL it does not print "Entering directory".
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    done = subprocess.run(["make", "-n", "demo", f"ARGS=--workdir {tmp_path}"], capture_output=True, text=True,
                          cwd=ROOT, timeout=30, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == f".venv/bin/edgekit demo --workdir {tmp_path}"
    help_text = subprocess.run(["make", "help"], capture_output=True, text=True, cwd=ROOT, timeout=30,
                               env=env).stdout
    assert any(line.startswith("demo ") for line in help_text.splitlines())
