"""Microsoft's azure-iot-device SDK (2.14) as a second, independent device client of `gateway serve`.

The SDK runs in its own interpreter (.venv-sdk, made by `make setup`; see tests/sdk_driver.py for
why), with real TLS against the gateway's real certificates and identities from its registry.

The SDK always dials port 8883 (its MQTT transport takes no port; websockets means 443). So the
gateway of this module listens on its own loopback address 127.x.y.z:8883, with that IP as
--hostname: serve issues its server certificate with that IP in the SAN, and the connection
strings name it as GatewayHostName. Nothing in the SDK's path is patched: it resolves, dials,
verifies the chain and the name, and builds its username and token as it would in the field.
"""
import json
import os
import queue
import random
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from edgekit.gateway import DEFAULT_HUB, hub
from gateway_helpers import ROOT, GatewayProcess

SDK_PYTHON = ROOT / ".venv-sdk" / "bin" / "python"
DRIVER = Path(__file__).with_name("sdk_driver.py")
SDK_PORT = 8883
HUB = DEFAULT_HUB  # the IoT Hub HostName the registry puts in connection strings


def _free_loopback():
    """A 127.x.y.z address whose port 8883 nobody holds (all of 127/8 is loopback on Linux)."""
    for _ in range(50):
        addr = f"127.{random.randint(20, 250)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
        with socket.socket() as s:
            try:
                s.bind((addr, SDK_PORT))
            except OSError:
                continue
        return addr
    pytest.fail("no 127.x.y.z:8883 is free for the SDK's gateway: something listens on *:8883 "
                "(a broker or gateway bound to all addresses); stop it or bind it to one address")


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    """A gateway on 127.x.y.z:8883, the port and hostname the SDK dials; stopped (exit 0) afterwards."""
    addr = _free_loopback()
    g = GatewayProcess(tmp_path_factory.mktemp("sdk-gateway"), port=f"{addr}:{SDK_PORT}")  # --listen HOST:PORT
    g.hostname = addr  # serve's --hostname, the name devices dial and the server certificate's SAN
    g.start()
    yield g
    assert g.stop() == 0, g.output()[-3000:]


class SdkDevice:
    """One SDK client in a .venv-sdk subprocess; call(op, ...) runs one request of sdk_driver.OPS."""

    def __init__(self, workdir, name):
        if not SDK_PYTHON.exists():
            pytest.fail(f"{SDK_PYTHON} is missing; run 'make setup' (it makes the SDK's own venv)")
        self.name = name
        self.log = Path(workdir) / f"sdk-{name}.log"
        self.proc = subprocess.Popen([str(SDK_PYTHON), str(DRIVER), str(self.log)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        self._answers = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self._answers.put(line)
        self._answers.put("")

    def call(self, op, timeout=15, **args):
        """Run one SDK operation; its value, or AssertionError naming the SDK's error."""
        self.proc.stdin.write(json.dumps(dict(args, op=op)) + "\n")
        self.proc.stdin.flush()
        try:
            line = self._answers.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"SDK {self.name}: {op} did not return in {timeout} s")
        try:
            answer = json.loads(line)
        except ValueError:
            raise AssertionError(f"SDK {self.name}: {op} broke the driver: {line!r}")
        if "error" in answer:
            raise AssertionError(f"SDK {self.name}: {op} failed: {answer['error']}")
        return answer["ok"]

    def wait_connects(self, n, timeout):
        """Wait until the SDK has reported n connections (its own reconnects included) and is connected."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.call("connects") >= n and self.call("connected"):
                return
            time.sleep(0.2)
        raise AssertionError(f"SDK {self.name}: not connected a {n}th time in {timeout} s")

    def close(self):
        """Shut the client down; print the SDK's log tail (pytest shows it only if the test failed)."""
        try:
            if self.proc.poll() is None:
                self.call("shutdown", timeout=10)
        except AssertionError as e:
            print(e)
        finally:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            if self.log.exists():
                print(f"--- SDK log {self.name} (tail) ---\n{self.log.read_text(errors='replace')[-4000:]}")


@pytest.fixture
def sdk(gw, tmp_path):
    """Factory of SdkDevice clients; each is shut down after the test, with the gateway's log tail."""
    made = []

    def make(name, **create):
        dev = SdkDevice(tmp_path, name)
        made.append(dev)  # before create: a client that fails to connect still shows its log
        dev.call("create", timeout=30, ca=str(gw.ca), **create)
        return dev

    yield make
    for dev in made:
        dev.close()
    print(f"--- gateway log (tail) ---\n{gw.output()[-3000:]}")


def sas_device(gw, sdk, device_id, module_id=None, **opts):
    """Register a symmetric-key identity and connect the SDK with its connection string."""
    cs = gw.add_device(device_id, module_id=module_id)
    dev = sdk(device_id + (f"-{module_id}" if module_id else ""), connection_string=cs,
              module=bool(module_id), **opts)
    dev.call("connect", timeout=30)
    return dev


def telemetry_of(gw, device_id, module_id=None):
    return [r for r in hub.read_telemetry(gw.data) if r["device"] == device_id and r["module"] == module_id]


def assert_round_trips(gw, dev, device_id, module_id=None, tag="1"):
    """Methods, C2D (devices only), twin GET, reported and desired patches all work right now."""
    status, answer = hub.invoke_method(gw.data, device_id, "reboot", {"delay": tag}, timeout=10,
                                       module_id=module_id)
    assert (status, answer) == (200, {"method": "reboot", "echo": {"delay": tag}})
    assert dev.call("method") == "reboot"

    if module_id is None:
        hub.send_c2d(gw.data, device_id, f"c2d {tag}", {"colour": "green"})
        msg = dev.call("c2d", timeout=10)
        assert msg["data"] == f"c2d {tag}"
        assert msg["custom_properties"].get("colour") == "green"

    dev.call("report", patch={"firmware": tag})
    assert hub.get_twin(gw.data, device_id, module_id=module_id)["reported"]["firmware"] == tag
    version = hub.update_twin(gw.data, device_id, {"interval": tag}, module_id=module_id)
    patch = dev.call("desired", timeout=10)
    while patch["$version"] < version:  # one the SDK raised itself at a reconnect (ensure_desired_properties)
        patch = dev.call("desired", timeout=10)
    assert patch["interval"] == tag and patch["$version"] == version
    twin = dev.call("get_twin")
    assert twin["desired"]["interval"] == tag and twin["desired"]["$version"] == version
    assert twin["reported"]["firmware"] == tag


def test_sdk_telemetry_with_properties(gw, sdk):
    dev = sas_device(gw, sdk, "sdk-telemetry")
    dev.call("send", body='{"temperature": 21.5}', message_id="m-1", content_type="application/json",
             content_encoding="utf-8", properties={"unit": "celsius", "alert": "no way"})
    dev.call("send", body="plain", properties={"seq": "2"})
    first, second = telemetry_of(gw, "sdk-telemetry")
    assert json.loads(first["body"]) == {"temperature": 21.5}
    props = first["properties"]
    assert (props["$.mid"], props["$.ct"], props["$.ce"]) == ("m-1", "application/json", "utf-8")
    assert (props["unit"], props["alert"]) == ("celsius", "no way")
    assert second["body"] == "plain" and second["properties"]["seq"] == "2"


def test_sdk_c2d_methods_and_twin(gw, sdk):
    dev = sas_device(gw, sdk, "sdk-features")
    assert_round_trips(gw, dev, "sdk-features")


def test_sdk_x509_self_signed_by_thumbprint(gw, sdk, tmp_path):
    # Made as a user would, with openssl, and registered while serve runs: no restart in between.
    cert, key = tmp_path / "thumb.cert.pem", tmp_path / "thumb.key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-subj", "/CN=sdk-thumb", "-days", "2"],
                   check=True, capture_output=True)
    os.chmod(key, 0o600)
    thumb = x509.load_pem_x509_certificate(cert.read_bytes()).fingerprint(hashes.SHA256()).hex()
    gw.add_device("sdk-thumb", x509_thumbprint=thumb)
    dev = sdk("sdk-thumb", cert=str(cert), key=str(key), hub=HUB, device_id="sdk-thumb", gateway=gw.hostname)
    dev.call("connect", timeout=30)
    dev.call("send", body="from a thumbprint device")
    assert [r["body"] for r in telemetry_of(gw, "sdk-thumb")] == ["from a thumbprint device"]
    assert_round_trips(gw, dev, "sdk-thumb")


def test_sdk_x509_ca_signed_certgen_chain(gw, sdk):
    # certGen's shape: the device presents its leaf and the intermediate (the -full-chain file),
    # so it verifies against a trust bundle that holds the root only, as on a real gateway.
    _, chain, key, _, _ = gw.pki.device_paths("x509-a")
    gw.add_device("x509-a", x509_ca=True)
    dev = sdk("x509-a", cert=chain, key=key, hub=HUB, device_id="x509-a", gateway=gw.hostname)
    dev.call("connect", timeout=30)
    dev.call("send", body="from a CA-signed device")
    assert [r["body"] for r in telemetry_of(gw, "x509-a")] == ["from a CA-signed device"]
    assert_round_trips(gw, dev, "x509-a")


def test_sdk_module_client_sas(gw, sdk):
    dev = sas_device(gw, sdk, "sdk-host", module_id="sensor")
    dev.call("send", body="from a module", properties={"kind": "module"})
    [record] = telemetry_of(gw, "sdk-host", "sensor")
    assert record["body"] == "from a module" and record["properties"]["kind"] == "module"
    assert_round_trips(gw, dev, "sdk-host", module_id="sensor")


def test_sdk_reconnect_explicit(gw, sdk):
    # The SDK reconnects with CleanSession=0 and does not subscribe again: the session must hold.
    dev = sas_device(gw, sdk, "sdk-explicit")
    assert_round_trips(gw, dev, "sdk-explicit", tag="before")
    dev.call("disconnect")
    dev.call("connect", timeout=30)
    assert_round_trips(gw, dev, "sdk-explicit", tag="after")


def test_sdk_reconnect_sas_renewal(gw, sdk):
    # The SDK renews its token 120 s before expiry: with a 135 s TTL it re-authenticates (a new
    # CONNECT with CleanSession=0 and a fresh token) about 15 s after connecting.
    dev = sas_device(gw, sdk, "sdk-renew", sastoken_ttl=135)
    dev.wait_connects(1, timeout=10)
    dev.wait_connects(2, timeout=30)
    assert_round_trips(gw, dev, "sdk-renew", tag="renewed")


def test_sdk_reconnect_gateway_restart(gw, sdk):
    # Last in the module: it stops and starts the module's gateway (same data folder and address).
    dev = sas_device(gw, sdk, "sdk-restart")
    assert_round_trips(gw, dev, "sdk-restart", tag="before")
    assert gw.stop() == 0, gw.output()[-3000:]
    gw.start()
    dev.wait_connects(2, timeout=30)  # the SDK's own retry, every connection_retry_interval (1 s)
    assert_round_trips(gw, dev, "sdk-restart", tag="after")


def test_sdk_through_an_upstream_outage(gw, sdk):
    # Microsoft's SDK behind a gateway that loses IoT Hub (issue 26): sends are acknowledged and held,
    # its twin GET is answered from the cache and its reported patch at once; all of it reaches
    # the hub side, in order, once the upstream is back.
    dev = sas_device(gw, sdk, "sdk-outage")
    dev.call("report", patch={"firmware": "before"})
    hub.upstream(gw.data, "offline")
    try:
        for n in range(3):
            dev.call("send", body=f"held {n}")
        assert telemetry_of(gw, "sdk-outage") == []
        assert [r["body"] for r in hub.held_telemetry(gw.data, "sdk-outage")] == ["held 0", "held 1", "held 2"]
        dev.call("report", patch={"firmware": "during"})  # the SDK's call returns: edgeHub answered 204
        assert hub.get_twin(gw.data, "sdk-outage")["reported"]["firmware"] == "before"
        twin = dev.call("get_twin")
        assert twin["reported"]["firmware"] == "during"  # edgeHub's twin cache
    finally:
        hub.upstream(gw.data, "online")
    assert [r["body"] for r in telemetry_of(gw, "sdk-outage")] == ["held 0", "held 1", "held 2"]
    assert hub.get_twin(gw.data, "sdk-outage")["reported"]["firmware"] == "during"
    assert_round_trips(gw, dev, "sdk-outage", tag="after")
