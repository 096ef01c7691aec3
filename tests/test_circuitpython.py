"""firmware/code.py run as CircuitPython runs it, under CPython, against a real TLS mosquitto.

The drive is laid out as `edgekit deploy` lays out a CIRCUITPY drive (edgekit.deploy.plan):
code.py, lib/ with the firmware and MiniMQTT as .py sources, /edgekit with the bundle that
`edgekit bundle --runtime circuitpython` writes (PEM root CA), settings.toml at the root.
tests/circuitpython_standins stands in for the Wi-Fi radio, the RTC and the chip only; TLS
(OpenSSL, verifying chain and hostname), sockets, MiniMQTT and adafruit_connection_manager
are real. See tests/circuitpython_standins/sitecustomize.py for what is mapped and why.
"""
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from conftest import FIRMWARE, ROOT
from device_helpers import Hub, Mosquitto, make_pki, readings_of, stop_process, wait_for, write_bundle

from edgekit.certs import demo
from edgekit.deploy import plan

STANDINS = ROOT / "tests" / "circuitpython_standins"
SSID, PASSWORD = "edgekit-lab", "correct horse"
RSSI = -52
CPU_TEMPERATURE = 41.5  # tests/circuitpython_standins/microcontroller.py
HEAP_FREE = 123456      # tests/circuitpython_standins/sitecustomize.py
_NTP_DELTA = 2208988800


class NtpServer:
    """A one-thread SNTP server on 127.0.0.1 answering with the host's clock."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.queries = 0
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self._stop:
            try:
                data, addr = self.sock.recvfrom(64)
            except TimeoutError:
                continue
            if len(data) < 48 or data[0] & 7 != 3:
                continue  # only client-mode requests get an answer
            self.queries += 1
            now = time.time() + _NTP_DELTA
            secs, frac = int(now), int((now % 1) * 2**32)
            reply = bytearray(48)
            reply[0], reply[1] = 0x24, 2  # version 4, server mode; stratum 2
            reply[24:32] = data[40:48]    # originate = the client's transmit time
            struct.pack_into("!IIII", reply, 32, secs, frac, secs, frac)
            self.sock.sendto(reply, addr)

    def stop(self):
        self._stop = True
        self.thread.join(2)
        self.sock.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Demo PKI, mosquitto with TLS, a paho hub and an NTP server, shared by this module."""
    root = tmp_path_factory.mktemp("cp-lab")
    pki, server = make_pki(root / "pki")
    broker = Mosquitto(root / "mosquitto", pki, server)
    broker.start()
    hub = Hub(broker.port, pki.root_cert, desired={"interval": 0.5})
    ntp = NtpServer()
    try:
        hub.start()
        yield type("Lab", (), {"pki": pki, "broker": broker, "hub": hub, "ntp": ntp, "root": root})
    finally:
        ntp.stop()
        hub.stop()
        broker.stop()


def make_drive(tmp_path, lab, device, ca=None, x509=False, adu_roots=None, **config):
    """A CIRCUITPY-like folder: what `edgekit deploy` puts on the drive, with this device's bundle
    (config into its config.json; adu_roots: an adu_roots.json copied into it)."""
    # The test network's NTP server is reached through the stand-in's port-123 route.
    bundle = write_bundle(tmp_path, lab.pki, lab.broker.mtls_port if x509 else lab.broker.port,
                          device=device, x509=x509, ca=ca, runtime="circuitpython", wifi_ssid=SSID,
                          wifi_password=PASSWORD, ntp_host="localhost", **config)
    if adu_roots:
        shutil.copy(adu_roots, bundle / "adu_roots.json")
    drive = tmp_path / "CIRCUITPY"
    for src in plan.plan_sources("circuitpython", device, FIRMWARE, tmp_path / "bundles"):
        dest = drive / src.board_path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src.path, dest)
    return drive


class Board:
    """code.py running under CPython as a CircuitPython board, console in a log file."""

    def __init__(self, drive, lab, log_name="console.log", **net):
        self.log_path = drive.parent / log_name
        net = dict({"ssid": SSID, "password": PASSWORD, "rssi": RSSI, "ntp_port": lab.ntp.port}, **net)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEKIT_", "PYTHON"))}
        env.update(PYTHONPATH=f"{STANDINS}{os.pathsep}{drive / 'lib'}", PYTHONUNBUFFERED="1",
                   PYTHONDONTWRITEBYTECODE="1", EDGEKIT_STANDIN_NET=json.dumps(net))
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "code.py"], cwd=drive, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def console(self):
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern, timeout=15):
        return wait_for(lambda: re.search(pattern, self.console()) or self._dead(), timeout,
                        f"console: {pattern}")

    def _dead(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"the board stopped (status {self.proc.returncode}):\n{self.console()}")
        return None

    def stop(self):
        stop_process(self.proc, self.log)


def test_code_py_joins_syncs_connects_and_serves_the_hub(tmp_path, lab):
    drive = make_drive(tmp_path, lab, "cp-dev1")
    assert (drive / "settings.toml").read_text().startswith(f'CIRCUITPY_WIFI_SSID = "{SSID}"')
    board = Board(drive, lab)
    try:
        board.wait_log(r"\[stand-in wifi\] joined 'edgekit-lab'")
        board.wait_log(r"\[stand-in rtc\] set to 20\d\d-")
        board.wait_log(r"connected to localhost:%d as cp-dev1" % lab.broker.port)
        assert lab.ntp.queries >= 1
        props, reading = wait_for(lambda: readings_of(lab.hub, "cp-dev1", props=True), 15, "telemetry")[0]
        assert props["$.ct"] == "application/json" and props["$.mid"]
        assert reading["temperature"] == CPU_TEMPERATURE
        assert reading["rssi"] == RSSI
        assert reading["free_heap"] == HEAP_FREE
        # The device's clock came from NTP through the RTC: its pong is the host's time.
        status, answer = lab.hub.call("ping", {}, rid="cp-ping-1")
        assert status == 200 and abs(answer["pong"] - time.time()) < 5
        status, answer = lab.hub.call("no_such_method", {}, rid="cp-ping-2")
        assert status == 404
        # The twin GET answered interval 0.5; a desired patch moves it, and it is reported.
        lab.hub.publish("$iothub/twin/PATCH/properties/desired/?$version=7",
                        json.dumps({"interval": 0.3, "$version": 7}))
        wait_for(lambda: any(r.get("interval") == 0.3 and r.get("runtime") == "circuitpython"
                             for r in lab.hub.reported), 10, "reported interval 0.3")
        assert "Traceback" not in board.console()
    finally:
        board.stop()


def test_wrong_ca_is_explained_on_one_line_and_retried(tmp_path, lab):
    other = demo.make_demo_pki(tmp_path / "other-pki", "localhost")
    drive = make_drive(tmp_path, lab, "cp-dev2", ca=other.root_cert)
    board = Board(drive, lab)
    try:
        board.wait_log(r"TLS: the gateway's certificate does not chain to the CA in the bundle")
        # It keeps running and retrying, and says the same thing once, not per attempt.
        wait_for(lambda: board.console().count("retrying in") >= 2 or board._dead(), 15,
                 "a second attempt")
        console = board.console()
        assert console.count("does not chain to the CA") == 1
        assert "Traceback" not in console
        assert board.proc.poll() is None
        assert readings_of(lab.hub, "cp-dev2") == []
    finally:
        board.stop()


def test_wifi_join_failing_then_succeeding(tmp_path, lab):
    drive = make_drive(tmp_path, lab, "cp-dev3")
    # The access point answers only from the fourth join (the supervisor's is the first).
    board = Board(drive, lab, fail_joins=3)
    try:
        board.wait_log(r"Wi-Fi 'edgekit-lab' not joined; retrying in 1 s")
        board.wait_log(r"Wi-Fi 'edgekit-lab' not joined; retrying in 2 s")
        board.wait_log(r"\[stand-in wifi\] join 4: 'edgekit-lab'")
        board.wait_log(r"network up \(RSSI -52 dBm\)")
        wait_for(lambda: readings_of(lab.hub, "cp-dev3"), 15, "telemetry after the retries")
    finally:
        board.stop()


def test_x509_device_loads_its_pem_cert_and_key_from_the_drive(tmp_path, lab):
    # The mutual-TLS listener refuses any client without a certificate from the demo CA.
    drive = make_drive(tmp_path, lab, "dev-x509", x509=True)
    assert (drive / "edgekit" / "device.key.pem").read_text().startswith("-----BEGIN")
    board = Board(drive, lab)
    try:
        board.wait_log(r"connected to localhost:%d as dev-x509" % lab.broker.mtls_port)
        wait_for(lambda: readings_of(lab.hub, "dev-x509"), 15, "telemetry over mutual TLS")
    finally:
        board.stop()


def test_sas_on_circuitpython_9_signs_with_adafruit_hashlib(tmp_path, lab):
    # CircuitPython 9.x hashes sha1 only: deploy ships adafruit_hashlib, and SAS signing uses it.
    drive = make_drive(tmp_path, lab, "cp-dev9")
    assert (drive / "lib" / "adafruit_hashlib" / "_sha256.py").exists()
    board = Board(drive, lab, circuitpython="9")
    try:
        board.wait_log(r"connected to localhost:%d as cp-dev9" % lab.broker.port)
        wait_for(lambda: readings_of(lab.hub, "cp-dev9"), 15, "telemetry")
        assert "Traceback" not in board.console()
    finally:
        board.stop()


# --- the update agent (docs/updates.md): code.py, slots and a reset that is a process exit ---
# Deployments signed as the local gateway signs them, with the RSA-3072 root of
# tests/test_adu_agent.py that the bundle's adu_roots.json trusts; the files come from its
# Connected Cache stand-in (http.server). A board reset (microcontroller.reset) ends the stand-in
# process with status 3; the next boot is a new process on the same drive.

from test_adu_agent import SIGNER, Cache, app_tar, serve, service, signer  # noqa: E402,F401


@pytest.fixture
def cache():
    c = Cache()
    yield c
    c.stop()


def adu_drive(tmp_path, lab, device, cache):
    adu = {"manufacturer": "contoso", "model": "sensor", "cache": f"127.0.0.1:{cache.port}"}
    return make_drive(tmp_path, lab, device, adu=adu, adu_roots=SIGNER["bundle"] / "adu_roots.json")


class Deployment:
    """The hub's desired deviceUpdate for the test (the lab's hub is shared: put back after)."""

    def __init__(self, hub):
        self.hub = hub
        with hub.lock:
            self.saved = dict(hub.desired)

    def set(self, svc, patch_version=None):
        with self.hub.lock:
            self.hub.desired["deviceUpdate"] = {"__t": "c", "service": svc}
            if patch_version:
                self.hub.desired["$version"] = patch_version
        if patch_version:  # to a running device: as a desired patch, as the service writes it
            self.hub.publish(f"$iothub/twin/PATCH/properties/desired/?$version={patch_version}",
                             json.dumps({"deviceUpdate": {"__t": "c", "service": svc},
                                         "$version": patch_version}))

    def restore(self):
        with self.hub.lock:
            self.hub.desired.clear()
            self.hub.desired.update(self.saved)


def agent_for(hub, wid, result):
    """The reported deviceUpdate agent of workflow wid with that lastInstallResult.resultCode."""
    with hub.lock:
        for r in reversed(hub.reported):
            a = r.get("deviceUpdate", {}).get("agent", {})
            if a.get("workflow", {}).get("id") == wid and \
                    (a.get("lastInstallResult") or {}).get("resultCode") == result:
                return a
    return None


def reset_of(board, timeout=30):
    wait_for(lambda: board.proc.poll() is not None, timeout, "the board's reset")
    assert board.proc.returncode == 3 and "[stand-in microcontroller] reset" in board.console(), \
        board.console()[-3000:]


def test_update_installs_switches_keeps_then_rolls_back_an_import_error(tmp_path, lab, cache, signer):
    # v2 is firmware/code.py itself, saying so; it runs from the slot as the factory's would.
    code = (FIRMWARE / "code.py").read_text()
    v2 = code.replace("    app.run(read_sensors)", "    print('[app] v2 running')\n    app.run(read_sensors)")
    assert v2 != code
    files = [("app.tar", app_tar(v2))]
    svc = service("wf-cp2", files)
    serve(cache, svc, files)
    drive = adu_drive(tmp_path, lab, "cp-adu", cache)
    twin = Deployment(lab.hub)
    twin.set(svc)
    boards = []
    try:
        # Boot 1, the factory: the deployment is taken (written to flash) and the board reset.
        boards.append(Board(drive, lab, "boot1.log"))
        reset_of(boards[-1])
        assert "deployment wf-cp2: rebooting to apply it" in boards[-1].console()
        # Boot 2, the deployment's own (code.py's start.boot(), adu_apply): downloaded, verified,
        # installed into slot a; reset.
        boards.append(Board(drive, lab, "boot2.log"))
        reset_of(boards[-1])
        assert "update installed in slot a: rebooting into it on trial" in boards[-1].console()
        assert json.loads((drive / "data" / "boot.json").read_text())["try"] == "a"
        # Boot 3: start.boot() runs slot a on trial; connected and reported, kept.
        boards.append(Board(drive, lab, "boot3.log"))
        boards[-1].wait_log(r"running the trial application from \S*data/slots/a", 15)
        boards[-1].wait_log(r"\[app\] v2 running", 15)
        boards[-1].wait_log("trial application connected and reported: kept", 20)
        agent = wait_for(lambda: agent_for(lab.hub, "wf-cp2", 700), 15, "v2 reported installed")
        assert agent["state"] == 0 and json.loads(agent["installedUpdateId"])["version"] == "2.0"
        assert json.loads((drive / "data" / "boot.json").read_text())["run"] == "a"
        # v3 fails to import. It comes as a desired patch to v2 running: taken, then installed
        # into slot b in its own boot.
        files = [("app.tar", app_tar("import no_such_module_here\n"))]
        svc3 = service("wf-cp3", files, version="3.0")
        serve(cache, svc3, files)
        twin.set(svc3, patch_version=2)
        reset_of(boards[-1])
        assert "deployment wf-cp3: rebooting to apply it" in boards[-1].console()
        boards.append(Board(drive, lab, "boot4.log"))
        reset_of(boards[-1])
        assert "update installed in slot b" in boards[-1].console()
        # Boot 5: slot b fails to import: rolled back, and reset so that v2 starts in a clean heap.
        boards.append(Board(drive, lab, "boot5.log"))
        boards[-1].wait_log("the trial application failed to import", 15)
        reset_of(boards[-1])
        # Boot 6: slot a (v2) runs; v3 reported failed, with v2 as what runs.
        boards.append(Board(drive, lab, "boot6.log"))
        boards[-1].wait_log(r"\[app\] v2 running", 15)
        agent = wait_for(lambda: agent_for(lab.hub, "wf-cp3", 0), 20, "v3 reported failed")
        assert agent["state"] == 255 and agent["lastInstallResult"]["extendedResultCode"] == 0x7E000201
        assert json.loads(agent["installedUpdateId"])["version"] == "2.0"
        boot = json.loads((drive / "data" / "boot.json").read_text())
        assert boot["run"] == "a" and boot["try"] == "" and boot["why"] == "import"
        assert boards[-1].proc.poll() is None
        assert (drive / "data" / "outbox").exists()  # state beside the bundle, as the outbox's
        # Boot 7, after a power cut: v2 runs, the decided deployment is left alone.
        boards[-1].stop()
        fetched = len(cache.requests)
        boards.append(Board(drive, lab, "boot7.log"))
        boards[-1].wait_log(r"\[app\] v2 running", 15)
        boards[-1].wait_log("ignored deployment wf-cp3: already handled", 20)
        console = boards[-1].console()
        assert "rolled back" not in console and "update refused" not in console, console
        assert len(cache.requests) == fetched
    finally:
        for b in boards:
            b.stop()
        twin.restore()


def test_read_only_drive_refuses_a_deployment_in_one_line(tmp_path, lab, cache, signer):
    # The default on a board: CIRCUITPY is the USB host's, read-only to code (boot.py did not
    # remount it). Nothing can be recorded or installed: refused, reported, and the device runs on.
    files = [("app.tar", app_tar("print('never')\n"))]
    svc = service("wf-cpro", files)
    serve(cache, svc, files)
    drive = adu_drive(tmp_path, lab, "cp-adu-ro", cache)
    twin = Deployment(lab.hub)
    twin.set(svc)
    board = Board(drive, lab, readonly=True)
    try:
        board.wait_log(r"outbox \S+ not writable \(.*\): queuing in RAM")  # as docs/outbox.md says
        agent = wait_for(lambda: agent_for(lab.hub, "wf-cpro", 0), 20, "the refusal reported")
        assert agent["state"] == 255 and agent["lastInstallResult"]["extendedResultCode"] == 0x7E000306
        wait_for(lambda: readings_of(lab.hub, "cp-adu-ro"), 15, "telemetry")
        console = board.console()
        refused = [line for line in console.splitlines() if "update refused" in line]
        assert refused == ["[edgekit] update refused: CIRCUITPY is read-only to code: boot.py must "
                           "remount it (docs/updates.md)"], console
        assert "Traceback" not in console and not cache.requests and not (drive / "data").exists()
    finally:
        board.stop()
        twin.restore()
