"""Test parts for the firmware client: a TLS mosquitto, a hub played by paho-mqtt, and a
device process (CPython or the real MicroPython) running firmware/main.py from a bundle."""
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from conftest import FIRMWARE, ROOT, tool

from edgekit import bundle as bundles
from edgekit.deploy.compile import build_lib
from edgekit.certs import demo

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
HUB = "edgekit-hub.azure-devices.net"
KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
# MicroPython's heap in the device tests: what a plain ESP32 grows its heap to (about 110 KiB).
# The outbox backlog drain needs it (README).
DEVICE_HEAP = "112K"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def make_pki(outdir):
    """Demo PKI for gateway 'localhost' with two X.509 devices, and the gateway's server cert."""
    pki = demo.make_demo_pki(outdir, "localhost", devices=["dev-x509", "dev-thumb"])
    server = demo.issue_server_cert(pki.edge_ca_chain, pki.edge_ca_key, "localhost")
    return pki, server


class Mosquitto:
    """mosquitto with a server-auth TLS listener and a mutual-TLS listener, on free ports."""

    def __init__(self, workdir, pki, server):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.mtls_port = free_port()
        # Client certificates are signed by the intermediate, but a gateway's trust bundle
        # usually holds the root only: the device must present its intermediate itself.
        cafile = pki.root_cert
        conf = [f"listener {self.port} 127.0.0.1", f"certfile {server.cert}", f"keyfile {server.key}",
                f"cafile {pki.root_cert}",
                f"listener {self.mtls_port} 127.0.0.1", f"certfile {server.cert}", f"keyfile {server.key}",
                f"cafile {cafile}", "require_certificate true",
                "allow_anonymous true", "max_packet_size 300000",
                # edgeHub (DotNetty) and the emulator (asyncio) send without Nagle's delay;
                # mosquitto only when asked, else pipelined PUBACKs wait for delayed TCP ACKs.
                "set_tcp_nodelay true"]
        if os.geteuid() == 0:
            conf.append("user root")  # else mosquitto drops to a user that cannot read 0600 keys
        (self.dir / "mosquitto.conf").write_text("\n".join(conf) + "\n")
        self.proc = None

    def start(self):
        self.log = open(self.dir / "mosquitto.log", "ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.dir / "mosquitto.conf"), "-v"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: _listening(self.port) and _listening(self.mtls_port), 10, "mosquitto")

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(5)
            self.proc = None
            self.log.close()


def _listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


class Hub:
    """Plays IoT Hub on the broker: collects telemetry, answers twin GET and PATCH, calls methods."""

    def __init__(self, port, root_cert, desired=None):
        self.telemetry = []
        self.reported = []
        self.method_answers = {}
        self.twin_gets = 0
        self.desired = dict(desired or {}, **{"$version": 1})
        self.lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="hub-test")
        self.client.tls_set(ca_certs=str(root_cert))
        self.client.on_message = self._on_message
        self.port = port

    def start(self):
        self.client.connect("localhost", self.port)
        self.client.loop_start()
        done = self.client.subscribe([("devices/+/messages/events/#", 1),
                                      ("devices/+/modules/+/messages/events/#", 1),
                                      ("$iothub/methods/res/#", 0), ("$iothub/twin/GET/#", 0),
                                      ("$iothub/twin/PATCH/properties/reported/#", 0)])
        assert done[0] == paho.MQTT_ERR_SUCCESS
        time.sleep(0.3)

    def stop(self):
        self.client.loop_stop()
        self.client.disconnect()

    def _on_message(self, _c, _u, m):
        topic = m.topic
        with self.lock:
            if "/messages/events/" in topic:
                bag = topic.split("/messages/events/", 1)[1]
                self.telemetry.append((topic, _decode(bag), m.payload))
            elif topic.startswith("$iothub/methods/res/"):
                status = int(topic.split("/")[3])
                rid = topic.split("$rid=")[1]
                self.method_answers[rid] = (status, json.loads(m.payload or b"null"))
            elif topic.startswith("$iothub/twin/GET/"):
                self.twin_gets += 1
                rid = topic.split("$rid=")[1]
                body = {"desired": self.desired, "reported": {"$version": 1}}
                self.client.publish(f"$iothub/twin/res/200/?$rid={rid}", json.dumps(body))
            elif topic.startswith("$iothub/twin/PATCH/properties/reported/"):
                rid = topic.split("$rid=")[1]
                self.reported.append(json.loads(m.payload))
                self.client.publish(f"$iothub/twin/res/204/?$rid={rid}&$version={len(self.reported) + 1}", b"")

    def call(self, name, payload, rid, timeout=10):
        """Invoke a direct method; return (status, payload) of the device's answer."""
        body = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
        self.client.publish(f"$iothub/methods/POST/{name}/?$rid={rid}", body)
        return wait_for(lambda: self.method_answers.get(str(rid)), timeout, f"answer to {name}")

    def publish(self, topic, body=b"", qos=0):
        self.client.publish(topic, body, qos=qos).wait_for_publish(5)


def _decode(bag):
    from urllib.parse import unquote
    return dict((unquote(k), unquote(v)) for k, _, v in (p.partition("=") for p in bag.split("&") if p))


def readings_of(source, device_id, props=False):
    """device_id's telemetry bodies, parsed, oldest first; (properties, body) pairs with props.

    source is a Hub, for what reached the broker (a module's messages included), or the gateway
    emulator, for what it stored: a GatewayProcess or the data folder of one.
    """
    if isinstance(source, Hub):
        with source.lock:
            found = [(p, b) for t, p, b in source.telemetry if t.startswith(f"devices/{device_id}/")]
    else:
        from edgekit.gateway import hub  # imported here: only tests that have a gateway need it

        data = getattr(source, "data", source)
        found = [(r["properties"], r["body"]) for r in hub.read_telemetry(data) if r["device"] == device_id]
    return [(p, json.loads(b)) for p, b in found] if props else [json.loads(b) for _p, b in found]


# The config the device tests run with unless told otherwise: a reading every 0.5 s, and
# reconnects at most 2 s apart so that an outage costs the test little time.
QUICK = {"interval": 0.5, "backoff_cap": 2}


def write_bundle(out, pki, port, device="dev1", module=None, x509=False, connection_string=None,
                 ca=None, runtime="micropython", wifi_ssid=None, wifi_password=None, quick=True, **config):
    """A bundle made by `edgekit bundle`'s own function in out/bundles, then tuned for the test.

    The connection string is device's (or module's) of HUB behind GatewayHostName=localhost, with
    pki's certificate for device when x509, else SharedAccessKey KEY; connection_string replaces it
    (a gateway emulator's add_device gives one). ca defaults to pki's root. runtime and the Wi-Fi
    settings go to make_bundle. config.json then gets port, QUICK unless quick is False, and config.
    Returns the bundle's folder.
    """
    extra = {}
    cs = connection_string
    if cs is None:
        cs = f"HostName={HUB};DeviceId={device};GatewayHostName=localhost"
        cs += f";ModuleId={module}" if module else ""
        if x509:
            cs += ";x509=true"
            files = pki.devices[device]
            # What certGen.sh users give: iot-device-<id>-full-chain.cert.pem (leaf, intermediate, root).
            extra = {"cert": files.chain, "key": files.key}
        else:
            cs += f";SharedAccessKey={KEY}"
    folder, _ = bundles.make_bundle(device, cs, ca or pki.root_cert, runtime=runtime, wifi_ssid=wifi_ssid,
                                    wifi_password=wifi_password, out_dir=Path(out) / "bundles", **extra)
    cfg_path = Path(folder) / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update({"port": port}, **(QUICK if quick else {}))
    cfg.update(config)
    cfg_path.write_text(json.dumps(cfg))
    return Path(folder)


def build_board(tmp_path):
    """What deploy puts on a MicroPython board: /lib compiled to .mpy, and main.py."""
    board = Path(tmp_path)
    build_lib(board / "lib")
    shutil.copy(FIRMWARE / "main.py", board / "main.py")
    return board


def romfs_image(board):
    """board/lib as a ROMFS image, built as `edgekit deploy --romfs` builds it; its path."""
    from edgekit.deploy.romfs import image_from_tree

    path = Path(board) / "lib.romfs"
    path.write_bytes(image_from_tree(Path(board) / "lib"))
    return path


# A board maps its ROMFS partition into the address space, outside the heap. The unix port
# has no ROMFS partition, so the image is read into one heap block first and mounted with
# vfs.VfsRom, which runs .mpy code in place from it as from flash; that block is then left
# out of every figure (the caller adds romfs_block_bytes() to -X heapsize).
def romfs_mount(image):
    """`-c` code that mounts the image at /rom and puts /rom/lib first on sys.path."""
    return ("import vfs,sys\nf=open(%r,'rb');I=f.read();f.close()\n"
            "vfs.mount(vfs.VfsRom(I),'/rom');sys.path.insert(0,'/rom/lib')\n" % str(image))


def romfs_block_bytes(image):
    """Heap the image takes when read into one block, as romfs_mount() reads it."""
    code = ("import gc;gc.collect();a=gc.mem_alloc()\nf=open(%r,'rb');I=f.read();f.close()\n"
            "gc.collect();print(gc.mem_alloc()-a)" % str(image))
    out = subprocess.run([tool("micropython"), "-c", code], capture_output=True, text=True, timeout=30)
    if out.returncode:
        raise RuntimeError(f"cannot read the ROMFS image under MicroPython: {out.stderr[-300:]}")
    return int(out.stdout.split()[-1])


class Device:
    """firmware/main.py running as a process under one interpreter, console in a log file."""

    def __init__(self, runtime, bundle_dir, board=None, heap="64K", logfile=None, main=None, env=None,
                 path=()):
        # main: another entry file (an example) instead of main.py, as `deploy --main` ships it.
        # env: more environment; path: more folders after /lib (MicroPython), e.g. the sim's
        # board folder for its esp32 stand-in.
        self.log_path = Path(logfile or Path(bundle_dir).parent / f"console-{runtime}.log")
        env = dict(os.environ, EDGEKIT_BUNDLE=str(bundle_dir), **(env or {}))
        if runtime == "micropython":
            argv = [tool("micropython"), "-X", f"heapsize={heap}", str(main or board / "main.py")]
            env["MICROPYPATH"] = ":".join([".frozen", str(board / "lib")] + [str(p) for p in path])
        else:
            argv = [sys.executable, str(main or FIRMWARE / "main.py")]
            env["PYTHONPATH"] = str(FIRMWARE)  # azure_edge beside an entry file elsewhere
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     cwd=ROOT)

    def console(self):
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern, timeout=15):
        return wait_for(lambda: re.search(pattern, self.console()), timeout, f"console: {pattern}")

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        stop_process(self.proc, self.log)


# Module-scoped fixtures for the device tests (import them into a test module to use them):
# the demo PKI, a board's /lib built as deploy builds it, and mosquitto with TLS.
@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    return build_board(tmp_path_factory.mktemp("board"))


@pytest.fixture(scope="module")
def broker(tmp_path_factory, pki):
    m = Mosquitto(tmp_path_factory.mktemp("mosquitto"), *pki)
    m.start()
    yield m
    m.stop()


def stop_process(proc, log=None):
    """Terminate proc (kill after 5 s) and close its log file."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if log is not None:
        log.close()


def read_line(proc, lines, key, timeout=120):
    """The next line of proc's stdout holding key (every line read goes into lines)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError("device exited:\n" + "".join(lines[-20:]))
        lines.append(line)
        if key in line:
            return line
    raise AssertionError(f"no {key} line")
