"""The device firmware end to end: firmware/main.py under CPython and the real MicroPython,
over real TLS to a real broker (mosquitto), with paho-mqtt playing the hub."""
import json
import os
from pathlib import Path
import time

import pytest

from device_helpers import (DEVICE_HEAP, Device, Hub, Mosquitto, make_pki, read_line, readings_of, wait_for,
                            write_bundle)
from device_helpers import board, broker, pki  # noqa: F401  (fixtures)
from edgekit.sim.supervisor import partition_table, partitions_env

RUNTIMES = ["cpython", "micropython"]
# The device tests run in DEVICE_HEAP, what a plain ESP32 grows its heap to. The memory
# test below runs .mpy files near the smallest heap that works on this 64-bit unix port
# (75 KiB measured by make bench through the device API, which unloads the boot module;
# app.start() called directly, as here, keeps it), and from ROMFS in 64K, a plain ESP32
# after one heap growth.
MIN_HEAP = "80K"


@pytest.fixture
def hub(broker, pki):
    h = Hub(broker.port, pki[0].root_cert, desired={"interval": 0.5})
    h.start()
    yield h
    h.stop()


@pytest.fixture
def device(tmp_path, pki, board):
    running = []

    def start(runtime, port, heap=DEVICE_HEAP, env=None, path=(), **kw):
        d = Device(runtime, write_bundle(tmp_path, pki[0], port, **kw), board, heap=heap, env=env, path=path)
        running.append(d)
        return d
    yield start
    for d in running:
        d.stop()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_sas_device_telemetry_methods_twin_c2d(runtime, broker, hub, device):
    dev = device(runtime, broker.port, device="sas-" + runtime)
    dev.wait_log(r"connected to localhost:\d+ as sas-")
    wait_for(lambda: len(readings_of(hub, "sas-" + runtime)) >= 3, 20, "3 readings")
    topic, props, body = hub.telemetry[-1]
    assert props["$.ct"] == "application/json" and props["$.ce"] == "utf-8"
    mids = [p["$.mid"] for p, _r in readings_of(hub, "sas-" + runtime, props=True)]
    assert len(set(mids)) == len(mids)
    assert {"seq", "uptime", "free_heap"} <= set(json.loads(body))

    # twin: GET after connect, desired applied, device facts reported
    wait_for(lambda: hub.reported, 10, "reported properties")
    rep = hub.reported[-1]
    assert rep["runtime"] == runtime and rep["firmware"] and rep["interval"] == 0.5
    assert "queued" in rep and "dropped" in rep
    assert "free_heap" in rep and rep["idf_heap"] is None  # the IDF heap: esp32 only

    # direct methods: built-in, unknown, bad payload, bad value
    status, answer = hub.call("ping", {}, rid=11)
    assert status == 200 and abs(answer["pong"] - time.time()) < 5
    assert hub.call("no_such_method", {}, rid=12)[0] == 404
    assert hub.call("set_interval", b"not json", rid=13)[0] == 400
    assert hub.call("set_interval", {"seconds": "fast"}, rid=14)[0] == 400
    assert hub.call("set_interval", {"seconds": 1}, rid=15) == (200, {"interval": 1})

    # C2D, good and malformed; an unexpected twin topic; a desired patch of the wrong type
    dev_id = "sas-" + runtime
    hub.publish(f"devices/{dev_id}/messages/devicebound/%24.mid=m1&color=bright%20red", b"hi", qos=1)
    dev.wait_log(r"C2D message, 2 bytes, properties .*'color': 'bright red'")
    hub.publish(f"devices/{dev_id}/messages/devicebound/bad=%zz", b"x", qos=1)
    dev.wait_log(r"bad message on devices/.*bad percent-escape")
    hub.publish("$iothub/twin/res/abc/?$rid=99", b"{}")
    dev.wait_log(r"bad message on \$iothub/twin/res/abc")
    hub.publish("$iothub/twin/PATCH/properties/desired/?$version=7", json.dumps({"interval": "x"}))
    dev.wait_log(r"desired 'interval' ignored")
    hub.publish("$iothub/twin/PATCH/properties/desired/?$version=3", json.dumps({"interval": 2}))
    dev.wait_log(r"ignored stale desired patch \$version=3")
    # The same $version as the last one applied (7) is no newer either: ignored, interval kept.
    hub.publish("$iothub/twin/PATCH/properties/desired/?$version=7", json.dumps({"interval": 2}))
    dev.wait_log(r"ignored stale desired patch \$version=7")

    # still alive and sending
    n = len(readings_of(hub, dev_id))
    wait_for(lambda: len(readings_of(hub, dev_id)) > n + 1, 10, "telemetry after bad input")
    assert dev.alive()
    assert "Traceback" not in dev.console()
    assert "SharedAccessKey" not in dev.console() and "sig=" not in dev.console()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_x509_device_over_mutual_tls(runtime, broker, hub, device):
    dev = device(runtime, broker.mtls_port, device="dev-x509", x509=True)
    dev.wait_log(r"connected to localhost:\d+ as dev-x509")
    wait_for(lambda: len(readings_of(hub, "dev-x509")) >= 2, 15, "X.509 readings")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_leaf_without_its_intermediate_is_explained(runtime, tmp_path, pki, board, broker):
    # A bundle as edgekit made them before it kept the intermediates: the leaf alone, which a
    # gateway trusting only the root refuses during the handshake.
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    folder = write_bundle(tmp_path, pki[0], broker.mtls_port, device="dev-x509", x509=True)
    leaf = x509.load_pem_x509_certificates(Path(pki[0].devices["dev-x509"].chain).read_bytes())[0]
    (folder / "device.cert.der").write_bytes(leaf.public_bytes(Encoding.DER))
    dev = Device(runtime, folder, board, heap=DEVICE_HEAP)
    try:
        dev.wait_log(r"TLS: the gateway refused the device's client certificate: check that the"
                     r" certificate chain \(leaf and intermediates")
        assert dev.alive() and "Traceback" not in dev.console()
    finally:
        dev.stop()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_module_identity_uses_module_topics(runtime, broker, hub, device):
    dev = device(runtime, broker.port, device="gw-dev", module="filter")
    dev.wait_log(r"connected to localhost:\d+ as gw-dev/filter")
    wait_for(lambda: any(t.startswith("devices/gw-dev/modules/filter/messages/events/")
                         for t, p, b in hub.telemetry), 15, "module telemetry")


def test_x509_module_is_refused_clearly(tmp_path, pki, board, broker):
    # `edgekit bundle` refuses this already; a hand-edited bundle meets the firmware's own check.
    folder = write_bundle(tmp_path, pki[0], broker.port, device="dev-x509", x509=True)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["connection_string"] += ";ModuleId=m"
    (folder / "config.json").write_text(json.dumps(cfg))
    dev = Device("cpython", folder, board)
    try:
        dev.wait_log(r"cannot start: modules behind a gateway must use a SharedAccessKey")
    finally:
        dev.stop()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_sas_token_renewed_without_losing_readings(runtime, broker, hub, device):
    dev = device(runtime, broker.port, device="ttl-" + runtime, sas_ttl=4, interval=0.25)
    wait_for(lambda: dev.console().count("renewing SAS token") >= 2, 25, "two renewals")
    time.sleep(1.0)
    seqs = [r["seq"] for r in readings_of(hub, "ttl-" + runtime)]
    assert len(seqs) >= 6
    assert sorted(set(seqs)) == list(range(seqs[0], max(seqs) + 1)), "a reading was lost"
    # Renewals are paced by the TTL, not a storm of reconnects.
    assert dev.console().count("renewing SAS token") <= 6


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("case,expected", [
    ("wrong_host", r"does not cover 'localhost.invalid-name'|cannot resolve 'localhost.invalid-name'"),
    ("wrong_ca", r"does not chain to the CA in the bundle"),
    ("closed_port", r"refused the connection"),
])
def test_connection_errors_are_explained(runtime, case, expected, tmp_path, pki, board, broker):
    from device_helpers import free_port
    port = free_port() if case == "closed_port" else broker.port
    folder = write_bundle(tmp_path, pki[0], port, device="err-dev")
    cfg = json.loads((folder / "config.json").read_text())
    if case == "wrong_host":
        cfg["connection_string"] = cfg["connection_string"].replace(
            "GatewayHostName=localhost", "GatewayHostName=localhost.invalid-name")
    if case == "wrong_ca":
        other = make_pki(tmp_path / "other")[0]
        from edgekit.certs import pem
        (folder / "ca.der").write_bytes(pem.to_der(other.root_cert))
    (folder / "config.json").write_text(json.dumps(cfg))
    dev = Device(runtime, folder, board, heap=DEVICE_HEAP)
    try:
        dev.wait_log(expected, timeout=15)
        assert dev.alive()
    finally:
        dev.stop()


@pytest.mark.parametrize("store,runtime", [(s, r) for s in ("flash", "ram") for r in RUNTIMES]
                         + [("partition", "micropython")])
def test_outbox_keeps_readings_while_gateway_is_down(runtime, store, tmp_path, pki, board, device):
    m = Mosquitto(tmp_path / "mq", *pki)
    m.start()
    hub = Hub(m.port, pki[0].root_cert)
    hub.start()
    extra = {}
    if store == "ram":  # an unwritable outbox folder: the RAM queue takes the backlog
        (tmp_path / "ro").write_text("not a folder")
        extra["outbox_path"] = str(tmp_path / "ro")
    if store == "partition":
        # A board flashed with the raw outbox partition: the sim's esp32 stand-in, strict NOR.
        image = tmp_path / "outbox.img"
        extra["env"] = {"EDGEKIT_SIM_PARTITIONS": partitions_env(partition_table(16), image),
                        "EDGEKIT_SIM_NOR_STRICT": "1"}
        extra["path"] = [Path(__file__).parent.parent / "host_tools" / "edgekit" / "sim" / "board"]
        extra["outbox_path"] = str(tmp_path / "files")
    dev = device(runtime, m.port, device="ob-" + runtime, interval=0.2, **extra)
    try:
        if store == "ram":
            dev.wait_log(r"queuing in RAM")
        if store == "partition":
            dev.wait_log(r"outbox on partition \(64 KiB\): 0 queued")
        wait_for(lambda: len(readings_of(hub, "ob-" + runtime)) >= 2, 15, "first readings")
        hub.stop()
        m.stop()
        dev.wait_log(r"link to gateway lost")
        time.sleep(3)  # about 15 readings go to the outbox
        m.start()
        hub = Hub(m.port, pki[0].root_cert)
        hub.start()
        dev.wait_log(r"connected to localhost", timeout=20)
        time.sleep(0.5)
        wait_for(lambda: len(readings_of(hub, "ob-" + runtime)) >= 15, 20, "the backlog")
        seqs = [r["seq"] for r in readings_of(hub, "ob-" + runtime)]
        # Everything queued while away arrives, oldest first, before the new readings.
        assert seqs == sorted(seqs)
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        if store == "partition":
            raw = image.read_bytes()
            assert raw[:4] == b"EDKL" and not (tmp_path / "files").exists()  # the log, not files
    finally:
        hub.stop()
        m.stop()




@pytest.mark.parametrize("code", ["mpy-files", "romfs"])
def test_heap_stays_flat_under_micropython(code, tmp_path, pki, board, broker, hub):
    # "mpy-files": .mpy files in /lib, loaded into the heap (any MicroPython board).
    # "romfs": the same .mpy run in place from a ROMFS image (deploy --romfs), in 64K.
    import shutil
    import subprocess

    from conftest import tool
    from device_helpers import romfs_block_bytes, romfs_image, romfs_mount
    from edgekit import mpy
    device = "mem-" + code
    folder = write_bundle(tmp_path, pki[0], broker.port, device=device)
    env = dict(os.environ, EDGEKIT_BUNDLE=str(folder))
    image_block = 0
    if code == "romfs":
        rom = tmp_path / "rom"
        shutil.copytree(board / "lib", rom / "lib")
        mpy.compile_file(Path(__file__).parent / "device_memory.py", rom / "lib" / "device_memory.mpy")
        image = romfs_image(rom)
        image_block = romfs_block_bytes(image)  # stands for the flash partition: left out
        heap = str(64 * 1024 + image_block)
        argv = ["-X", "heapsize=" + heap, "-c", romfs_mount(image) + "import device_memory"]
        env["MICROPYPATH"] = ".frozen"
    else:
        heap = MIN_HEAP
        shutil.copy(Path(__file__).parent / "device_memory.py", board / "device_memory.py")
        argv = ["-X", "heapsize=" + heap, str(board / "device_memory.py")]
        env["MICROPYPATH"] = f".frozen:{board / 'lib'}"
    proc = subprocess.Popen([tool("micropython")] + argv, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, text=True)
    try:
        lines = []
        first = json.loads(read_line(proc, lines, "heap_after_10"))
        assert first["sent"] == 500
        wait_for(lambda: len(readings_of(hub, device)) >= 500, 30, "500 readings at the hub")
        hub.publish("$iothub/twin/PATCH/properties/desired/?$version=5",
                    json.dumps({"interval": 3, "$version": 5}))
        assert hub.call("ping", {}, rid=77)[0] == 200
        end = json.loads(read_line(proc, lines, "heap_end"))
        # Nothing grows per message: within 2 KiB after 500 messages, and after serving.
        assert first["heap_after_500"] - first["heap_after_10"] <= 2048, first
        assert end["heap_end"] - first["heap_after_10"] <= 2048, end
        print(f"[{code}] heap in use after 10 messages {first['heap_after_10'] - image_block} B, after"
              f" 500 {first['heap_after_500'] - image_block} B, at the end {end['heap_end'] - image_block}"
              f" B (heap {int(heap.rstrip('K')) * (1024 if heap.endswith('K') else 1) - image_block} B)")
    finally:
        proc.kill()
        proc.wait()
    assert "MemoryError" not in "".join(lines)



@pytest.mark.parametrize("runtime", RUNTIMES)
def test_unwritable_outbox_falls_back_to_ram(runtime, tmp_path, broker, hub, device):
    # A read-only drive (CIRCUITPY without a boot.py remount) must not stop the device.
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the outbox folder should be")
    dev = device(runtime, broker.port, device="ro-" + runtime, outbox_path=str(blocker))
    dev.wait_log(r"outbox .*not-a-folder not writable .*queuing in RAM")
    wait_for(lambda: len(readings_of(hub, "ro-" + runtime)) >= 2, 20, "readings without a flash outbox")
    assert dev.alive()


def test_repeated_out_of_memory_on_connect_asks_for_a_reset(monkeypatch):
    # A heap too fragmented to connect does not heal by waiting: after OOM_RESET connects
    # failing with MemoryError in a row the client asks the app to reset the board.
    import sys

    from conftest import FIRMWARE
    monkeypatch.syspath_prepend(str(FIRMWARE))
    # net.install() puts itself in sys.modules for MiniMQTT: undone after the test.
    monkeypatch.setitem(sys.modules, "adafruit_connection_manager",
                        sys.modules.get("adafruit_connection_manager"))
    from azure_edge import client as client_mod, net

    class Ident:
        host_name, device_id, module_id = "hub.azure-devices.net", "oom", None
        shared_access_key, shared_access_key_name, x509 = "c2VjcmV0", None, False
        gateway_host_name = connect_host = "localhost"

    lines = []
    c = client_mod.Client(Ident(), None, net, log=lines.append)

    def no_heap():
        raise MemoryError("memory allocation failed, allocating 592 bytes")
    c.connect = no_heap
    for n in range(1, client_mod.OOM_RESET + 1):
        assert not c.reboot_requested, n
        c._retry_at = client_mod.ticks_ms()
        c._try_connect()
    assert c.reboot_requested and not c.connected
    assert any("out of memory 5 times in a row while connecting: resetting" in line for line in lines)
