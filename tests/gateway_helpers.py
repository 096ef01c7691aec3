"""Run `edgekit gateway serve` as a real subprocess, and talk to it with real paho-mqtt clients.

Use from any test file:

    from gateway_helpers import GatewayProcess, MqttDevice, gateway  # noqa: F401  (gateway is a fixture)

    def test_x(gateway):
        cs = gateway.add_device("dev1")                 # registry.add_device on its data folder
        dev = MqttDevice.from_connection_string(gateway, cs)
        assert dev.connect() == 0
        ...
        dev.close()

`gateway` is module-scoped: a demo PKI (ECC, hostname "localhost", devices "x509-a",
"x509-b" and "x509-c" with CA-signed and self-signed certificates) and a serve on free ports. For your
own set-up, `GatewayProcess(workdir, devices=..., max_clients=..., port=...)` then `.start()`/`.stop()`.
"""
import json
import queue
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from edgekit import check
from edgekit.certs.demo import make_demo_pki
from edgekit import use_firmware
from edgekit.gateway import registry

use_firmware()  # the device side of these helpers runs the firmware's own code
from azure_edge import connstr, sas, topics  # noqa: E402  (after use_firmware)

ROOT = Path(__file__).resolve().parent.parent

HOSTNAME = "localhost"
PKI_DEVICES = ("x509-a", "x509-b", "x509-c")
_CONNACK = {"Success": 0, "Unsupported protocol version": 1, "Client identifier not valid": 2,
            "Server unavailable": 3, "Bad user name or password": 4, "Not authorized": 5}


class GatewayProcess:
    """One `python -m edgekit gateway serve` subprocess with its PKI and data folder."""

    def __init__(self, workdir, devices=PKI_DEVICES, max_clients=None, pki=None, port=0, extra=(), options=None):
        self.workdir = Path(workdir)
        self.data = self.workdir / "data"
        self.pki = pki or make_demo_pki(self.workdir / "pki", HOSTNAME, devices=devices)
        self.ca = self.pki.root_cert
        self.hostname = HOSTNAME
        self.max_clients = max_clients
        # serve's --port: 0 takes a free one at every start; a fixed one is kept across restarts.
        self.listen_port = port
        self.extra_args = list(extra)  # more serve options, e.g. ["--edgehub", "1.5"], ["--web"]
        # serve() keyword options the CLI does not offer (reauth_interval, connect_timeout, ...):
        # with these, serve.run is started directly instead of the CLI.
        self.options = options
        self.proc = None
        self.port = None
        self.control_port = None
        self.startup_seconds = None
        self.log = self.workdir / "serve.log"

    def start(self, timeout=15):
        """Start serve and wait for DATA/gateway.json; records startup_seconds (wall time)."""
        argv = [sys.executable, "-m", "edgekit", "gateway", "serve", "--pki", self.pki.outdir,
                "--hostname", self.hostname, "--listen", str(self.listen_port), "--data", str(self.data)]
        if self.max_clients is not None:
            argv += ["--max-clients", str(self.max_clients)]
        argv += self.extra_args  # e.g. ["--edgehub", "1.5"], ["--web"]
        if self.options:
            argv = [sys.executable, "-c", "import json, sys; from edgekit.gateway import serve; "
                    "serve.run(*sys.argv[1:4], port=int(sys.argv[4]), **json.loads(sys.argv[5]))",
                    str(self.pki.outdir), self.hostname, str(self.data), str(self.listen_port),
                    json.dumps(dict(self.options, **({"max_clients": self.max_clients} if self.max_clients else {})))]
        info = self.data / "gateway.json"
        t0 = time.monotonic()
        # stdout to a file: a pipe nobody reads would block the gateway once it fills.
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        # Errors quote the log's end only: after restarts it holds every earlier run too.
        while time.monotonic() - t0 < timeout:
            try:
                doc = json.loads(info.read_text())
            except (OSError, ValueError):
                doc = None  # absent or being written (one a killed run left has another pid)
            if doc and doc.get("pid") == self.proc.pid:
                self.startup_seconds = time.monotonic() - t0
                self.port, self.control_port = doc["mqtt_port"], doc["control_port"]
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway serve exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"gateway serve not ready in {timeout} s:\n{self.output()[-3000:]}")

    def stop(self, timeout=10):
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc, self.proc = self.proc.returncode, None
        return rc

    def output(self):
        """Everything serve printed so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def add_device(self, device_id, **kwargs):
        """Register an identity in this gateway's data folder; returns its connection string."""
        return registry.add_device(self.data, device_id, **kwargs)


class MqttDevice:
    """A paho-mqtt client over verified TLS to the gateway, with blocking helpers."""

    def __init__(self, gw, client_id, username=None, password=None, cert=None, key=None, keepalive=60):
        self.gw = gw
        self.client_id = client_id
        self.messages = queue.Queue()
        self._connack = queue.Queue()
        self._subacks = {}
        self._pubacks = {}
        self.disconnected = threading.Event()
        self.keepalive = keepalive
        # No automatic reconnect: a test that sees the gateway close a connection must not see
        # paho open a new one behind its back.
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311,
                        reconnect_on_failure=False)
        c.tls_set(ca_certs=gw.ca, certfile=cert, keyfile=key)
        if username is not None:
            c.username_pw_set(username, password)
        c.on_connect = lambda cl, ud, flags, rc, props: self._connack.put(_CONNACK.get(rc.getName(), -1))
        c.on_message = lambda cl, ud, msg: self.messages.put((msg.topic, msg.payload))
        c.on_subscribe = lambda cl, ud, mid, rcs, props: self._event(self._subacks, mid, [r.value for r in rcs])
        c.on_publish = lambda cl, ud, mid, rc, props: self._event(self._pubacks, mid, True)
        c.on_disconnect = lambda cl, ud, flags, rc, props: self.disconnected.set()
        self.client = c

    def _event(self, table, mid, value):
        table.setdefault(mid, queue.Queue()).put(value)

    def _wait(self, table, mid, timeout):
        q = table.setdefault(mid, queue.Queue())
        return q.get(timeout=timeout)

    @classmethod
    def from_connection_string(cls, gw, cs, ttl=3600, cert=None, key=None, **kwargs):
        """A device as the SDKs build it from a connection string (SAS token or X.509)."""
        c = connstr.parse(cs)
        cid = topics.client_id(c.device_id, c.module_id)
        password = sas_password(cs, ttl) if c.shared_access_key else None
        return cls(gw, cid, topics.username(c.host_name, c.device_id, c.module_id), password,
                   cert=cert, key=key, **kwargs)

    def connect(self, timeout=10):
        """Connect and return the CONNACK code (0 accepted, 4, 5, 3 ...)."""
        self.client.connect(self.gw.hostname, self.gw.port, keepalive=self.keepalive)
        self.client.loop_start()
        try:
            code = self._connack.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no CONNACK in {timeout} s:\n{self.gw.output()[-2000:]}")
        if code != 0:
            self.client.loop_stop()
        return code

    def subscribe(self, topic_filter, qos=1, timeout=10):
        """Subscribe; return the granted code (0, 1, or 128 for refused)."""
        rc, mid = self.client.subscribe(topic_filter, qos)
        assert rc == paho.MQTT_ERR_SUCCESS
        return self._wait(self._subacks, mid, timeout)[0]

    def publish(self, topic, payload, qos=1, timeout=10):
        """Publish; with QoS 1 wait for the PUBACK (AssertionError if none comes)."""
        info = self.client.publish(topic, payload, qos)
        if qos == 1:
            try:
                self._wait(self._pubacks, info.mid, timeout)
            except queue.Empty:
                raise AssertionError(f"no PUBACK for {topic!r} in {timeout} s")
        return info

    def next_message(self, timeout=10, prefix=""):
        """The next received (topic, payload) whose topic starts with prefix."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no message on {prefix!r}* in {timeout} s")
            try:
                topic, payload = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            if topic.startswith(prefix):
                return topic, payload

    def close(self):
        """Disconnect cleanly and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


def raw_connect(gw, client_id, username, password, timeout=10, keepalive=60):
    """A bare MQTT 3.1.1 CONNECT over verified TLS: (open TLS socket, CONNACK return code).

    Cheaper than a paho client when a test needs a hundred connections; close the socket yourself.
    """
    ctx = ssl.create_default_context(cafile=gw.ca)
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", gw.port), timeout=timeout),
                           server_hostname=gw.hostname)
    sock.sendall(check.connect_packet(client_id, username, password, keepalive, clean_session=True))
    return sock, check.read_connack(sock)


def sas_password(cs, ttl=3600):
    """The SAS token a device with this connection string sends as its MQTT password."""
    c = connstr.parse(cs)
    return sas.generate(sas.resource_uri(c.host_name, c.device_id, c.module_id), c.shared_access_key,
                        int(time.time()) + ttl)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """A running gateway (module scope); stopped, and checked to exit 0, afterwards."""
    gw = GatewayProcess(tmp_path_factory.mktemp("gateway")).start()
    yield gw
    assert gw.stop() == 0, gw.output()


class RawDevice:
    """A device speaking raw MQTT 3.1.1 over verified TLS, for what a client library would hide.

    Packets are built by hand (amqtt's codec is what the gateway uses: an independent encoder
    here keeps the test honest) and read back as (packet type, flags, body).
    """

    def __init__(self, gw, timeout=10):
        ctx = ssl.create_default_context(cafile=gw.ca)
        self.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", gw.port), timeout=timeout),
                                    server_hostname=gw.hostname)
        self._buf = b""
        self._next_id = 0

    @classmethod
    def connect_as(cls, gw, cs, clean=True, keepalive=60, will=None, ttl=3600, level=4):
        """Open a link and send CONNECT for connection string cs; returns (device, (session present, code))."""
        c = connstr.parse(cs)
        cid = topics.client_id(c.device_id, c.module_id)
        dev = cls(gw)
        dev.send(connect(cid, topics.username(c.host_name, c.device_id, c.module_id), sas_password(cs, ttl),
                         clean=clean, keepalive=keepalive, will=will, level=level))
        return dev, dev.connack()

    def send(self, data):
        """Write raw bytes."""
        self.sock.sendall(data)

    def packet(self, timeout=10):
        """The next packet: (type, flags, body); ConnectionError when the gateway closed the link."""
        self.sock.settimeout(timeout)
        while True:
            parsed = _split(self._buf)
            if parsed is not None:
                kind, flags, body, self._buf = parsed
                return kind, flags, body
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the gateway closed the link")
            self._buf += chunk

    def connack(self):
        """(session present, return code) of the CONNACK."""
        kind, _, body = self.packet()
        assert kind == 2, f"expected CONNACK, got packet type {kind}"
        return body[0] & 1, body[1]

    def closed(self, timeout=5):
        """True when the gateway closes the link within timeout (packets before that are skipped)."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.packet(max(0.05, deadline - time.monotonic()))
        except (ConnectionError, ssl.SSLError, OSError) as e:
            return not isinstance(e, socket.timeout)
        return False

    def publish(self, topic, payload=b"", qos=1, retain=False):
        """Send a PUBLISH; returns its packet id (None for QoS 0)."""
        pid = None
        body = _str(topic)
        if qos:
            self._next_id += 1
            pid = self._next_id
            body += pid.to_bytes(2, "big")
        self.send(_fixed(0x30 | (qos << 1) | int(retain), body + payload))
        return pid

    def subscribe(self, *filters, qos=1):
        """SUBSCRIBE to filters; returns the SUBACK's return codes."""
        self._next_id += 1
        body = self._next_id.to_bytes(2, "big") + b"".join(_str(f) + bytes([qos]) for f in filters)
        self.send(_fixed(0x82, body))
        kind, _, ack = self.expect(9)
        return list(ack[2:])

    def expect(self, kind, timeout=10):
        """The next packet of this type, skipping others (returns (type, flags, body))."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.packet(max(0.05, deadline - time.monotonic()))
            if got[0] == kind:
                return got

    def next_publish(self, timeout=10):
        """(topic, payload, qos, packet id, retain) of the next PUBLISH from the gateway."""
        _, flags, body = self.expect(3, timeout)
        n = int.from_bytes(body[:2], "big")
        topic = body[2:2 + n].decode()
        qos = (flags >> 1) & 3
        pid = int.from_bytes(body[2 + n:4 + n], "big") if qos else None
        return topic, body[2 + n + (2 if qos else 0):], qos, pid, flags & 1

    def puback(self, pid):
        """Acknowledge a QoS 1 PUBLISH from the gateway."""
        self.send(b"\x40\x02" + pid.to_bytes(2, "big"))

    def drop(self):
        """Close TCP without DISCONNECT (an abnormal close: the will goes)."""
        self.sock.close()

    def disconnect(self):
        """Send DISCONNECT and close."""
        try:
            self.send(b"\xe0\x00")
        finally:
            self.sock.close()


def connect(client_id, username=None, password=None, clean=True, keepalive=60, will=None, level=4):
    """A CONNECT packet; will = (topic, payload, qos, retain)."""
    flags = (0x80 if username is not None else 0) | (0x40 if password is not None else 0) | (0x02 if clean else 0)
    payload = _str(client_id)
    if will is not None:
        topic, message, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += _str(topic) + len(message).to_bytes(2, "big") + message
    if username is not None:
        payload += _str(username)
    if password is not None:
        payload += _str(password)
    return _fixed(0x10, b"\x00\x04MQTT" + bytes([level, flags]) + keepalive.to_bytes(2, "big") + payload)


def _str(text):
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def _fixed(first, body, length=None):
    n, out = len(body) if length is None else length, b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return bytes([first]) + out + body


def _split(buf):
    if len(buf) < 2:
        return None
    n, mult, i = 0, 1, 1
    while True:
        if i >= len(buf):
            return None
        n += (buf[i] & 0x7F) * mult
        mult *= 128
        i += 1
        if not buf[i - 1] & 0x80:
            break
    if len(buf) < i + n:
        return None
    return buf[0] >> 4, buf[0] & 0x0F, buf[i:i + n], buf[i + n:]
