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


def make_drive(tmp_path, lab, device, ca=None, x509=False):
    """A CIRCUITPY-like folder: what `edgekit deploy` puts on the drive, with this device's bundle."""
    # The test network's NTP server is reached through the stand-in's port-123 route.
    write_bundle(tmp_path, lab.pki, lab.broker.mtls_port if x509 else lab.broker.port, device=device,
                 x509=x509, ca=ca, runtime="circuitpython", wifi_ssid=SSID, wifi_password=PASSWORD,
                 ntp_host="localhost")
    drive = tmp_path / "CIRCUITPY"
    for src in plan.plan_sources("circuitpython", device, FIRMWARE, tmp_path / "bundles"):
        dest = drive / src.board_path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src.path, dest)
    return drive


class Board:
    """code.py running under CPython as a CircuitPython board, console in a log file."""

    def __init__(self, drive, lab, **net):
        self.log_path = drive.parent / "console.log"
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
