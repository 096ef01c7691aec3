"""The firmware against the gateway emulator, which checks SAS signature, audience and expiry
the way edgeHub does: device under CPython and the real MicroPython."""
import time

import pytest

from device_helpers import DEVICE_HEAP, Device, build_board, readings_of, wait_for, write_bundle
from gateway_helpers import gateway  # noqa: F401  (a fixture)

from edgekit.gateway import hub

RUNTIMES = ["cpython", "micropython"]


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    return build_board(tmp_path_factory.mktemp("board"))


def start_device(gw, tmp_path, board, runtime, device_id, **config):
    cs = gw.add_device(device_id, gateway_host="localhost")
    folder = write_bundle(tmp_path, gw.pki, gw.port, device=device_id, connection_string=cs, **config)
    return Device(runtime, folder, board, heap=DEVICE_HEAP)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_device_through_emulator(runtime, gateway, tmp_path, board):  # noqa: F811
    dev_id = "emu-" + runtime
    dev = start_device(gateway, tmp_path, board, runtime, dev_id)
    try:
        dev.wait_log(r"connected to localhost:\d+ as " + dev_id)
        wait_for(lambda: len(readings_of(gateway, dev_id)) >= 3, 20, "telemetry stored by the gateway")
        status, payload = hub.invoke_method(gateway.data, dev_id, "ping", {}, timeout=10)
        assert status == 200 and "pong" in payload
        version = hub.update_twin(gateway.data, dev_id, {"interval": 1})
        wait_for(lambda: hub.get_twin(gateway.data, dev_id)["reported"].get("interval") == 1, 15,
                 f"reported interval after desired $version {version}")
        rep = hub.get_twin(gateway.data, dev_id)["reported"]
        assert rep["runtime"] == runtime and rep["queued"] == 0 and rep["firmware"]
        hub.send_c2d(gateway.data, dev_id, "hello", properties={"k": "v"})
        dev.wait_log(r"C2D message, 5 bytes, properties .*'k': 'v'")
        assert dev.alive() and "Traceback" not in dev.console()
    finally:
        dev.stop()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_token_renewal_accepted_by_gateway(runtime, gateway, tmp_path, board):  # noqa: F811
    # The gateway refuses expired tokens, so every renewal must present a fresh, valid one.
    dev_id = "ttl-" + runtime
    dev = start_device(gateway, tmp_path, board, runtime, dev_id, sas_ttl=4, interval=0.25)
    try:
        wait_for(lambda: dev.console().count("renewing SAS token") >= 2, 25, "two renewals")
        time.sleep(1)
        seqs = [r["seq"] for r in readings_of(gateway, dev_id)]
        assert sorted(set(seqs)) == list(range(1, max(seqs) + 1)), "a reading was lost"
        assert "CONNACK" not in dev.console()
    finally:
        dev.stop()


def test_missing_parent_is_explained(gateway, tmp_path, board):  # noqa: F811
    cs = gateway.add_device("orphan", gateway_host="localhost", parent=False)
    # Only the port set: the bundle's own interval and backoff, as `edgekit bundle` writes them.
    folder = write_bundle(tmp_path, gateway.pki, gateway.port, device="orphan", connection_string=cs,
                          quick=False)
    dev = Device("micropython", folder, board, heap=DEVICE_HEAP)
    try:
        dev.wait_log(r"not authorized \(CONNACK 5\)\. Set the gateway as the device's parent")
        assert dev.alive()
    finally:
        dev.stop()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_device_keeps_working_through_an_upstream_outage(runtime, gateway, tmp_path, board):  # noqa: F811
    # The gateway loses IoT Hub (issue 26): the device notices nothing; its readings are held and
    # reach the hub side in order once the upstream is back, and a desired change made meanwhile
    # comes down then, its reported answer following.
    dev_id = "outage-" + runtime
    dev = start_device(gateway, tmp_path, board, runtime, dev_id, interval=0.25)
    try:
        wait_for(lambda: len(readings_of(gateway, dev_id)) >= 2, 20, "telemetry before the outage")
        hub.upstream(gateway.data, "offline")
        before = len(readings_of(gateway, dev_id))
        hub.update_twin(gateway.data, dev_id, {"interval": 0.5})
        wait_for(lambda: len(list(hub.held_telemetry(gateway.data, dev_id))) >= 4, 20, "readings held")
        assert len(readings_of(gateway, dev_id)) <= before + 1  # at most one on its way at the cut
        assert hub.get_twin(gateway.data, dev_id)["reported"].get("interval") != 0.5
        hub.upstream(gateway.data, "online")
        seqs = [r["seq"] for r in readings_of(gateway, dev_id)]
        assert seqs == list(range(1, len(seqs) + 1)), f"in order, none lost or doubled: {seqs}"
        wait_for(lambda: hub.get_twin(gateway.data, dev_id)["reported"].get("interval") == 0.5, 15,
                 "the desired change made during the outage, reported back")
        assert dev.alive() and "Traceback" not in dev.console() and "CONNACK" not in dev.console()
    finally:
        hub.upstream(gateway.data, "online")
        dev.stop()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_readings_held_past_the_ttl_are_dropped_and_counted(runtime, gateway, tmp_path, board):  # noqa: F811
    # The store-and-forward time to live (issue 26), with the real firmware: what the gateway held
    # longer than --ttl never reaches IoT Hub and is counted; the rest arrives in order, none twice.
    from gateway_helpers import GatewayProcess

    (tmp_path / "gw").mkdir()
    gw = GatewayProcess(tmp_path / "gw", pki=gateway.pki, devices=(), extra=["--ttl", "2"]).start()
    dev_id = "ttl-drop-" + runtime
    dev = start_device(gw, tmp_path, board, runtime, dev_id, interval=0.25)
    try:
        wait_for(lambda: len(readings_of(gw, dev_id)) >= 2, 20, "telemetry before the outage")
        hub.upstream(gw.data, "offline")
        wait_for(lambda: hub.upstream(gw.data)["expired"] >= 3, 20, "held readings expired")
        hub.upstream(gw.data, "online")
        expired = hub.upstream(gw.data)["expired"]
        seqs = [r["seq"] for r in readings_of(gw, dev_id)]
        assert seqs == sorted(set(seqs)), f"in order, none doubled: {seqs}"
        missing = sorted(set(range(1, max(seqs) + 1)) - set(seqs))
        assert len(missing) == expired, f"{expired} expired, missing {missing}"
        assert missing == list(range(missing[0], missing[-1] + 1))  # the oldest of the outage, together
        assert dev.alive() and "Traceback" not in dev.console() and "CONNACK" not in dev.console()
    finally:
        dev.stop()
        assert gw.stop() == 0, gw.output()
