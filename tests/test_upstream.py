"""A gateway that loses IoT Hub (issue 26): what devices and the hub side see while it is offline.

One `serve` subprocess per module, started with `--upstream offline --ttl 3`, driven from the hub
side with `edgekit gateway upstream online|offline` (the control op) and paho devices.
"""
import json
import time

import pytest
from click.testing import CliRunner

from gateway_helpers import GatewayProcess, MqttDevice

from edgekit.gateway import hub
from edgekit.gateway.cli import gateway as gateway_cli

TTL = 3


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    g = GatewayProcess(tmp_path_factory.mktemp("upstream"), devices=(),
                       extra=["--upstream", "offline", "--ttl", str(TTL)])
    # Registered before the start: in the device scope cache edgeHub synced before the outage.
    g.cs = {d: g.add_device(d, gateway_host="localhost") for d in ("up-a", "up-b", "up-gone", "up-twin")}
    g.start()
    yield g
    assert g.stop() == 0, g.output()


def _device(gw, name):
    dev = MqttDevice.from_connection_string(gw, gw.cs[name])
    assert dev.connect() == 0, gw.output()[-2000:]
    return dev


def _mine(gw, device_id):
    return [hub.decoded(r) for r in hub.read_telemetry(gw.data) if r["device"] == device_id]


def _wait(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


def test_telemetry_is_held_then_forwarded_in_order_and_what_outlives_the_ttl_is_dropped(gw):
    assert hub.upstream(gw.data)["upstream"] == "offline"
    dev = _device(gw, "up-a")
    try:
        t0 = time.time()
        for seq in range(1, 6):
            dev.publish("devices/up-a/messages/events/", json.dumps({"seq": seq}))  # PUBACK: stored
        state = hub.upstream(gw.data)
        assert state["held"] == 5 and _mine(gw, "up-a") == []  # IoT Hub has none of them yet
        assert [r["payload"]["seq"] for r in hub.held_telemetry(gw.data, "up-a")] == [1, 2, 3, 4, 5]
        assert time.time() - t0 < TTL, "the machine is too slow for this TTL"
        back = hub.upstream(gw.data, "online")
        assert back["held"] == 0 and back["expired"] == 0
        got = _mine(gw, "up-a")
        assert [r["payload"]["seq"] for r in got] == [1, 2, 3, 4, 5]  # in order, each once
        assert all(r["held_since"] <= r["time"] for r in got)  # received by the gateway, then by IoT Hub
        dev.publish("devices/up-a/messages/events/", json.dumps({"seq": 6}))  # online: straight through
        assert [r["payload"]["seq"] for r in _mine(gw, "up-a")][-1] == 6

        hub.upstream(gw.data, "offline")
        dev.publish("devices/up-a/messages/events/", json.dumps({"seq": 7}))
        assert hub.upstream(gw.data)["held"] == 1
        _wait(lambda: hub.upstream(gw.data)["expired"] == 1, TTL + 5, "the held reading expired")
        assert hub.upstream(gw.data)["held"] == 0 and hub.expired_count(gw.data) == 1
        result = CliRunner().invoke(gateway_cli, ["telemetry", "--held", "--data", str(gw.data)])
        assert result.exit_code == 0 and "1 message(s) expired" in result.output
        hub.upstream(gw.data, "online")
        assert 7 not in [r["payload"]["seq"] for r in _mine(gw, "up-a")]  # never reaches IoT Hub
    finally:
        dev.close()
        hub.upstream(gw.data, "offline")


def test_the_scope_cache_authenticates_offline_and_new_identities_wait_for_the_upstream(gw):
    hub.upstream(gw.data, "offline")
    late = gw.add_device("up-late", gateway_host="localhost")  # added while IoT Hub is away
    dev = MqttDevice.from_connection_string(gw, late)
    assert dev.connect() == 5  # not in the cache, and the refresh cannot reach IoT Hub
    assert "device scope cache" in gw.output()
    from edgekit.gateway import registry
    registry.remove_device(gw.data, "up-gone")  # edgeHub cannot hear of it while offline
    gone = _device(gw, "up-gone")  # still in the cache: accepted, and kept
    time.sleep(1.5)
    assert not gone.disconnected.is_set()
    hub.upstream(gw.data, "online")
    try:
        assert gone.disconnected.wait(5), "a removed identity is dropped once the cache refreshes"
        dev = MqttDevice.from_connection_string(gw, late)
        assert dev.connect() == 0
        dev.close()
    finally:
        hub.upstream(gw.data, "offline")


def test_twin_is_read_from_the_cache_reported_synced_and_desired_sent_as_the_difference(gw):
    hub.upstream(gw.data, "online")
    hub.update_twin(gw.data, "up-twin", {"interval": 5, "mode": "a"})
    hub.upstream(gw.data, "offline")
    dev = _device(gw, "up-twin")
    try:
        dev.subscribe("$iothub/twin/res/#")
        dev.subscribe("$iothub/twin/PATCH/properties/desired/#")
        hub.update_twin(gw.data, "up-twin", {"interval": 9, "mode": None})  # waits for the upstream
        dev.publish("$iothub/twin/GET/?$rid=1", b"")
        topic, body = dev.next_message(prefix="$iothub/twin/res/")
        assert topic == "$iothub/twin/res/200/?$rid=1"
        assert json.loads(body)["desired"]["interval"] == 5  # the cache, as before the outage
        dev.publish("$iothub/twin/PATCH/properties/reported/?$rid=2", json.dumps({"fw": "1.0"}))
        topic, _ = dev.next_message(prefix="$iothub/twin/res/")
        assert topic == "$iothub/twin/res/204/?$rid=2"  # answered at once, before IoT Hub has it
        dev.publish("$iothub/twin/PATCH/properties/reported/?$rid=3", json.dumps({"temp": 20}))
        dev.next_message(prefix="$iothub/twin/res/204/")
        before = hub.get_twin(gw.data, "up-twin")["reported"]
        assert "fw" not in before
        dev.publish("$iothub/twin/GET/?$rid=4", b"")
        _, body = dev.next_message(prefix="$iothub/twin/res/200/")
        assert json.loads(body)["reported"]["fw"] == "1.0"  # the cache has the device's own reports
        assert dev.messages.empty()  # no desired patch came down

        hub.upstream(gw.data, "online")
        after = hub.get_twin(gw.data, "up-twin")["reported"]
        assert after["fw"] == "1.0" and after["temp"] == 20
        assert after["$version"] == before["$version"] + 1  # one merged patch (ReportedPropertiesStore)
        topic, body = dev.next_message(prefix="$iothub/twin/PATCH/properties/desired/")
        patch = json.loads(body)
        assert patch["interval"] == 9 and patch["mode"] is None and topic.endswith(f"$version={patch['$version']}")
    finally:
        dev.close()
        hub.upstream(gw.data, "offline")


def test_methods_and_c2d_from_iot_hub_cannot_come_down_while_offline(gw):
    hub.upstream(gw.data, "offline")
    dev = _device(gw, "up-b")
    try:
        dev.subscribe("$iothub/methods/POST/#")
        dev.subscribe("devices/up-b/messages/devicebound/#")
        with pytest.raises(hub.HubError) as e:
            hub.invoke_method(gw.data, "up-b", "ping", timeout=5)
        assert e.value.status == 404 and "upstream is offline" in str(e.value)
        sent = hub.send_c2d(gw.data, "up-b", "hello")
        time.sleep(1)
        assert dev.messages.empty() and hub.c2d_state(gw.data, "up-b", sent["mid"]) == "queued"
        hub.upstream(gw.data, "online")
        topic, body = dev.next_message(prefix="devices/up-b/messages/devicebound/")
        assert body == b"hello"
        _wait(lambda: hub.c2d_state(gw.data, "up-b", sent["mid"]) == "delivered", 5, "C2D acknowledged")
    finally:
        dev.close()
        hub.upstream(gw.data, "offline")


def test_upstream_command_speaks_json_and_refuses_other_states(gw):
    runner = CliRunner()
    result = runner.invoke(gateway_cli, ["upstream", "--json", "--data", str(gw.data)])
    doc = json.loads(result.output)
    assert result.exit_code == 0 and doc["status"] == 200 and doc["upstream"] == "offline" and doc["ttl"] == TTL
    result = runner.invoke(gateway_cli, ["upstream", "sideways", "--data", str(gw.data)])
    assert result.exit_code != 0


def test_what_is_held_and_pending_survives_a_restart_while_offline(tmp_path):
    # edgeHub's message, twin and reported-properties stores are persistent (usePersistentStorage):
    # a gateway restarted during the outage still forwards, in order, what it acknowledged before.
    g = GatewayProcess(tmp_path, devices=(), extra=["--upstream", "offline", "--ttl", "600"])
    g.cs = {"keep": g.add_device("keep", gateway_host="localhost")}
    g.start()
    try:
        dev = _device(g, "keep")
        dev.subscribe("$iothub/twin/res/#")
        for seq in range(1, 4):
            dev.publish("devices/keep/messages/events/", json.dumps({"seq": seq}))
        dev.publish("$iothub/twin/PATCH/properties/reported/?$rid=1", json.dumps({"boots": 1}))
        assert dev.next_message(prefix="$iothub/twin/res/")[0] == "$iothub/twin/res/204/?$rid=1"
        dev.close()
    finally:
        assert g.stop() == 0, g.output()
    g.start()  # offline again: --upstream is not kept, the stores are
    try:
        assert hub.upstream(g.data)["held"] == 3 and _mine(g, "keep") == []
        assert "boots" not in hub.get_twin(g.data, "keep")["reported"]
        hub.upstream(g.data, "online")
        assert [r["payload"]["seq"] for r in _mine(g, "keep")] == [1, 2, 3]
        assert hub.get_twin(g.data, "keep")["reported"]["boots"] == 1
    finally:
        assert g.stop() == 0, g.output()


def test_a_method_waiting_its_connect_timeout_goes_through_once_the_upstream_returns(gw):
    # IoT Hub holds a call for its connectTimeoutInSeconds while the device is not connected to it;
    # the link back within that time makes the device connected again, and the call is delivered.
    import threading

    from edgekit.gateway import control
    hub.upstream(gw.data, "offline")
    dev = _device(gw, "up-b")
    result = {}

    def call():
        result["r"] = control.call(gw.data, "invoke_method", wait=30, device_id="up-b", name="ping",
                                   timeout=10, connect_timeout=10)
    t = threading.Thread(target=call)
    try:
        dev.subscribe("$iothub/methods/POST/#")
        t.start()
        time.sleep(1.5)
        assert dev.messages.empty() and t.is_alive()  # not while IoT Hub cannot reach the device
        hub.upstream(gw.data, "online")
        topic, _ = dev.next_message(prefix="$iothub/methods/POST/")
        assert topic.startswith("$iothub/methods/POST/ping/?$rid=")
        dev.publish("$iothub/methods/res/200/?$rid=" + topic.split("$rid=", 1)[1], json.dumps({"pong": True}))
        t.join(20)
        assert result["r"] == [200, {"pong": True}]
    finally:
        if t.is_alive():
            t.join(20)
        dev.close()
        hub.upstream(gw.data, "offline")
