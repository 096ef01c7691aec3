"""The public device API (azure_edge.device.Device) under CPython and the real MicroPython, against
the gateway emulator: handler errors, slow handlers, built-ins off, log levels, the offline status
line, the Plug and Play model id, and a heap that stays flat through the API."""
import json
import re
import subprocess
import time

import pytest

from conftest import tool
from device_helpers import (DEVICE_HEAP, Device, broker, build_board, free_port, pki,  # noqa: F401
                            read_line, readings_of, wait_for, write_bundle)
from gateway_helpers import gateway  # noqa: F401  (a fixture)

from edgekit.gateway import hub

RUNTIMES = ["cpython", "micropython"]
MODEL = "dtmi:com:example:Thermostat;1"

APP = '''
import sys, time
sys.path.append("/lib")
from azure_edge.device import Device

dev = Device(builtins=BUILTINS)

@dev.method("boom")
def boom(payload):
    raise RuntimeError("kaput")

def slow(payload):
    time.sleep(3)  # longer than a step, shorter than the keepalive
    return {"slow": True}

dev.method("slow", slow)

def on_desired(desired, whole):
    if "explode" in desired:
        raise ValueError("bad desired")

def on_message(body, properties):
    raise KeyError("bad c2d")

dev.on_desired = on_desired
dev.on_message = on_message
flaky_runs = []

def flaky():
    flaky_runs.append(1)
    if len(flaky_runs) == 2:
        raise OSError("sensor not answering")

dev.every(0.5, flaky)
dev.every(0.5, lambda: dev.send({"n": 1}, properties={"kind": "tick"}, content_type="application/json"))
dev.run()
'''


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    return build_board(tmp_path_factory.mktemp("board"))


def start(gw, tmp_path, board, runtime, name, builtins=True, **config):
    app = tmp_path / "app.py"
    app.write_text(APP.replace("BUILTINS", str(builtins)))
    dev_id = f"{name}-{runtime}"
    cs = gw.add_device(dev_id, gateway_host="localhost")
    folder = write_bundle(tmp_path, gw.pki, gw.port, device=dev_id, connection_string=cs, **config)
    dev = Device(runtime, folder, board, heap=DEVICE_HEAP, main=app)
    dev.wait_log(r"connected to localhost:\d+ as " + dev_id, timeout=20)
    return dev, dev_id


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_handlers_errors_and_slow_answers(runtime, gateway, tmp_path, board):  # noqa: F811
    # With a model id in the username too: the gateway (like edgeHub) accepts it.
    dev, dev_id = start(gateway, tmp_path, board, runtime, "api", model_id=MODEL)
    try:
        status, answer = hub.invoke_method(gateway.data, dev_id, "boom", {}, timeout=10)
        assert status == 500 and answer == {"error": "RuntimeError: kaput"}
        lines = [ln for ln in dev.console().splitlines() if "boom" in ln or "kaput" in ln]
        assert lines == ["[edgekit] method boom -> 500 (RuntimeError: kaput)"], lines
        before = len(readings_of(gateway, dev_id))
        assert hub.invoke_method(gateway.data, dev_id, "slow", {}, timeout=15) == (200, {"slow": True})
        wait_for(lambda: len(readings_of(gateway, dev_id)) >= before + 3, 15, "telemetry after the slow answer")
        # A periodic task that raised once (its second run) cost one line; the loop and its readings went on.
        lines = [ln for ln in dev.console().splitlines() if "sensor" in ln]
        assert lines == ["[edgekit] flaky failed: OSError: sensor not answering"], lines
        text = dev.console()
        assert "link to gateway lost" not in text and text.count("connected to") == 1, text[-1500:]
        props, body = readings_of(gateway, dev_id, props=True)[-1]
        assert body == {"n": 1} and props["kind"] == "tick" and props["$.ct"] == "application/json"
        # info: a line per message sent and per method answered; built-ins still there.
        assert re.search(r"\[edgekit\] sent [0-9a-f]+-\d+\n", text)
        assert "method slow -> 200" in text
        assert hub.invoke_method(gateway.data, dev_id, "ping", {}, timeout=10)[0] == 200
        assert "firmware" in hub.get_twin(gateway.data, dev_id)["reported"]
        # Raising C2D and desired handlers: one line each, and the device goes on.
        hub.send_c2d(gateway.data, dev_id, "x")
        dev.wait_log(r"\[edgekit\] on_message failed: KeyError: '?bad c2d'?\n")  # MicroPython: no quotes
        hub.update_twin(gateway.data, dev_id, {"explode": 1, "interval": 0.4})
        dev.wait_log(r"\[edgekit\] on_desired failed: ValueError: bad desired\n")
        wait_for(lambda: hub.get_twin(gateway.data, dev_id)["reported"].get("interval") == 0.4, 10,
                 "the built-in report after the failing handler")
        text = dev.console()
        assert dev.alive() and "Traceback" not in text
    finally:
        dev.stop()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_builtins_off_and_quiet_console(runtime, gateway, tmp_path, board):  # noqa: F811
    dev, dev_id = start(gateway, tmp_path, board, runtime, "bare", builtins=False, log_level="quiet")
    try:
        wait_for(lambda: len(readings_of(gateway, dev_id)) >= 2, 15, "telemetry")
        assert hub.invoke_method(gateway.data, dev_id, "ping", {}, timeout=10)[0] == 404
        assert hub.invoke_method(gateway.data, dev_id, "boom", {}, timeout=10)[0] == 500
        hub.update_twin(gateway.data, dev_id, {"anything": 1})
        time.sleep(1)
        assert "firmware" not in hub.get_twin(gateway.data, dev_id)["reported"]
        text = dev.console()
        # quiet: no line per message; errors still say what went wrong.
        assert "sent " not in text and "method ping" not in text and "desired" not in text, text
        assert "method boom -> 500 (RuntimeError: kaput)" in text
    finally:
        dev.stop()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_offline_status_line_then_the_backlog(runtime, gateway, tmp_path, board):  # noqa: F811
    from gateway_helpers import GatewayProcess

    app = tmp_path / "app.py"
    app.write_text(APP.replace("BUILTINS", "True"))
    # A gateway of its own on a fixed port, started only once the device has been offline a while.
    later = GatewayProcess(tmp_path / "later", pki=gateway.pki, port=free_port())
    dev_id = "off-" + runtime
    folder = write_bundle(tmp_path, gateway.pki, later.listen_port, device=dev_id,
                          connection_string=later.add_device(dev_id, gateway_host="localhost"),
                          status_every=1, log_level="debug", backoff_cap=1)
    dev = Device(runtime, folder, board, heap=DEVICE_HEAP, main=app)
    try:
        m = dev.wait_log(r"offline for (\d+) s; (\d+) readings queued; next retry in (\d+) s; last error: "
                         r"(.*refused.*)\n", timeout=20)
        assert int(m.group(2)) >= 1  # the ticks sent while offline wait in the outbox
        assert re.search(r"queued [0-9a-f]+-\d+ \(\d+ waiting\)", dev.console())
        # debug: each message's properties and body too
        assert "[edgekit]   {'kind': 'tick'} {'n': 1}" in dev.console()
        later.start()
        # The backlog goes out on reconnect: one console line for it, not one per reading.
        dev.wait_log(r"sent \d+ queued \(0 left\)", timeout=20)
        assert len(readings_of(later, dev_id)) >= int(m.group(2))
    finally:
        dev.stop()
        later.stop()


def test_model_id_in_the_username(tmp_path, pki, board, broker):  # noqa: F811
    # mosquitto -v logs each CONNECT's username: the model id goes there url-encoded, as the
    # Plug and Play device guide puts it (api-version first, then model-id).
    folder = write_bundle(tmp_path, pki[0], broker.port, device="pnp", model_id=MODEL)
    dev = Device("micropython", folder, board, heap=DEVICE_HEAP)
    try:
        dev.wait_log(r"connected to localhost:\d+ as pnp")
        log = (broker.dir / "mosquitto.log").read_text(errors="replace")
        assert "u'edgekit-hub.azure-devices.net/pnp/?api-version=2021-04-12" \
               "&model-id=dtmi%3Acom%3Aexample%3AThermostat%3B1'" in log
    finally:
        dev.stop()


HEAP_APP = '''
import gc, json, sys
sys.path.append("/lib")
from azure_edge.device import Device

dev = Device()
state = {"on": False}

@dev.method("relay")
def relay(payload):
    state["on"] = bool(payload.get("on"))
    dev.report(state)
    return state

client = dev.client
while not client.connected:
    dev.step(0.2)
heap = {}
for n in range(1, 501):
    dev.send({"seq": n, "t": 21.5})
    if n % 50 == 0:
        dev.step(0.2)
    if n in (10, 500):
        gc.collect()
        heap[n] = gc.mem_alloc()
print(json.dumps({"heap_after_10": heap[10], "heap_after_500": heap[500], "sent": client.sent}))
while client.interval != 3 or not state["on"]:  # the hub patches the twin and calls relay
    dev.step(0.2)
for _ in range(5):
    dev.step(0.2)
gc.collect()
print(json.dumps({"done": True, "heap_end": gc.mem_alloc()}))
'''
# The bench's minimum -X heapsize for the full device through this API (bench/heap.py:
# 75 KiB, bench/results.json), + 2 KiB.
API_HEAP = "79K"


def test_heap_stays_flat_through_the_api(gateway, tmp_path, board):  # noqa: F811
    import os

    app = board / "heap_app.py"
    app.write_text(HEAP_APP)
    cs = gateway.add_device("api-heap", gateway_host="localhost")
    folder = write_bundle(tmp_path, gateway.pki, gateway.port, device="api-heap", connection_string=cs,
                          log_level="quiet")  # the console is not what is measured
    env = dict(os.environ, EDGEKIT_BUNDLE=str(folder), MICROPYPATH=f".frozen:{board / 'lib'}")
    proc = subprocess.Popen([tool("micropython"), "-X", "heapsize=" + API_HEAP, str(app)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    lines = []
    try:
        first = json.loads(read_line(proc, lines, "heap_after_10"))
        assert first["sent"] == 500
        wait_for(lambda: len(readings_of(gateway, "api-heap")) >= 500, 30, "500 readings at the gateway")
        hub.update_twin(gateway.data, "api-heap", {"interval": 3})
        assert hub.invoke_method(gateway.data, "api-heap", "relay", {"on": True}, timeout=10) == \
            (200, {"on": True})
        end = json.loads(read_line(proc, lines, "heap_end"))
        assert first["heap_after_500"] - first["heap_after_10"] <= 2048, first
        assert end["heap_end"] - first["heap_after_10"] <= 2048, end
        print(f"heap in use after 10 messages {first['heap_after_10']} B, after 500"
              f" {first['heap_after_500']} B, at the end {end['heap_end']} B (-X heapsize={API_HEAP})")
    finally:
        proc.kill()
        proc.wait()
    assert "MemoryError" not in "".join(lines)



def test_bundle_options_log_level_and_model_id(tmp_path):
    import subprocess as sp
    import sys

    from conftest import ROOT
    from device_helpers import HUB, KEY, make_pki

    pki_, _server = make_pki(tmp_path / "pki")
    cs = f"HostName={HUB};DeviceId=pnp1;SharedAccessKey={KEY};GatewayHostName=localhost"
    base = [sys.executable, "-m", "edgekit", "bundle", "pnp1", "-c", cs, "--ca", str(pki_.root_cert),
            "--no-wifi", "--out", str(tmp_path / "b")]
    ok = sp.run(base + ["--model-id", MODEL, "--log-level", "debug"], capture_output=True, text=True,
                cwd=ROOT, timeout=60)
    assert ok.returncode == 0, ok.stderr
    cfg = json.loads((tmp_path / "b" / "pnp1" / "config.json").read_text())
    assert cfg["model_id"] == MODEL and cfg["log_level"] == "debug"
    bad = sp.run(base + ["--force", "--model-id", "Thermostat"], capture_output=True, text=True, cwd=ROOT,
                 timeout=60)
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode != 0 and len(lines) == 1 and "dtmi:com:example:Thermostat;1" in lines[0], bad.stderr
