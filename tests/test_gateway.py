"""`edgekit gateway serve` as a real subprocess, real TLS (demo PKI, hostname localhost), paho clients."""
import json
import threading
import time

import pytest

from device_helpers import wait_for
from gateway_helpers import GatewayProcess, MqttDevice, gateway, raw_connect, sas_password  # noqa: F401
from edgekit.gateway import hub, registry
from edgekit.gateway.core import HubError
from azure_edge import connstr, sas, topics  # noqa: E402  (conftest puts firmware/ on sys.path)

OTHER_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="


def _device(gw, device_id, **kwargs):
    return MqttDevice.from_connection_string(gw, gw.add_device(device_id, **kwargs))


def _telemetry_of(gw, device_id):
    return [r for r in hub.read_telemetry(gw.data) if r["device"] == device_id]


def _closed(dev, timeout=5):
    return dev.disconnected.wait(timeout)


def _gone(gw, client_id, timeout=5):
    """Wait until the gateway itself has dropped the connection (the client may know first)."""
    wait_for(lambda: all(c["client_id"] != client_id for c in hub.status(gw.data)), timeout,
             f"the gateway to drop {client_id}")


def test_startup_writes_gateway_json_and_prints_ready(gateway):
    print(f"\ngateway start-up (process start to gateway.json): {gateway.startup_seconds:.2f} s")
    info = json.loads((gateway.data / "gateway.json").read_text())
    assert set(info) == {"mqtt_port", "control_port", "pid", "hostname"}
    assert info["hostname"] == "localhost" and info["mqtt_port"] == gateway.port
    assert f"gateway ready on localhost:{gateway.port}" in gateway.output().splitlines()


def test_good_sas_token_telemetry_is_stored_with_decoded_properties(gateway):
    dev = _device(gateway, "sas-good")
    assert dev.connect() == 0
    props = {"$.ct": "application/json", "$.ce": "utf-8", "room": "kitchen & hall"}
    dev.publish(topics.telemetry("sas-good", properties=props), b'{"temp": 21.5}')
    dev.close()
    [record] = _telemetry_of(gateway, "sas-good")
    assert record["module"] is None
    assert record["properties"] == props
    assert json.loads(record["body"]) == {"temp": 21.5}
    assert record["time"].endswith("Z")
    assert "connected sas-good (SAS token)" in gateway.output()


def test_module_telemetry_names_the_module(gateway):
    cs = gateway.add_device("mod-host", module_id="filter")
    assert "ModuleId=filter" in cs and "GatewayHostName=localhost" in cs
    dev = MqttDevice.from_connection_string(gateway, cs)
    assert dev.connect() == 0
    dev.publish(topics.telemetry("mod-host", "filter"), b"m")
    dev.close()
    [record] = _telemetry_of(gateway, "mod-host")
    assert record["module"] == "filter" and record["body"] == "m"


@pytest.mark.parametrize("case, expected", [
    # edgeHub accepts an audience naming the gateway (DeviceScopeTokenAuthenticator.ValidateAudience)
    # and answers every bad token with 5; tests/test_edgehub_auth.py has the rest.
    ("wrong key", 5), ("expired token", 5), ("audience is the gateway", 0), ("token not SAS", 5),
])
def test_bad_sas_tokens_are_refused(gateway, case, expected):
    device_id = "sas-bad-" + case.replace(" ", "-")
    cs = gateway.add_device(device_id)
    c = connstr.parse(cs)
    good_uri = sas.resource_uri(c.host_name, device_id)
    later = int(time.time()) + 600
    password = {
        "wrong key": sas.generate(good_uri, OTHER_KEY, later),
        "expired token": sas.generate(good_uri, c.shared_access_key, int(time.time()) - 5),
        "audience is the gateway": sas.generate("localhost/devices/" + device_id, c.shared_access_key, later),
        "token not SAS": c.shared_access_key,
    }[case]
    dev = MqttDevice(gateway, device_id, topics.username(c.host_name, device_id), password)
    assert dev.connect() == expected
    dev.client.loop_stop()
    assert (f"refused {device_id}" in gateway.output()) == (expected != 0)


@pytest.mark.parametrize("case, username, expected", [
    ("other-id", "edgekit-hub.azure-devices.net/someone-else/?api-version=2021-04-12", 5),
    ("no-api", "edgekit-hub.azure-devices.net/{id}/", 3),  # parser exception: MqttAdapter sends 3
    ("gw-name", "localhost/{id}/?api-version=2021-04-12", 0),  # edgeHub does not check the hub segment
])
def test_bad_usernames_are_refused(gateway, case, username, expected):
    device_id = "user-" + case
    password = sas_password(gateway.add_device(device_id))
    dev = MqttDevice(gateway, device_id, username.format(id=device_id), password)
    assert dev.connect() == expected
    dev.client.loop_stop()


def test_device_without_parent_gets_connack_5(gateway):
    dev = _device(gateway, "orphan", parent=False)
    assert dev.connect() == 5
    dev.client.loop_stop()
    assert "does not have this gateway as its parent" in gateway.output()


def test_x509_module_is_refused(gateway):
    with pytest.raises(registry.RegistryError, match="symmetric keys only"):
        gateway.add_device("x509-a", module_id="m", x509_ca=True)
    # A symmetric-key module that shows a certificate instead of a token gets CONNACK 5.
    c = connstr.parse(gateway.add_device("cert-mod-host", module_id="m"))
    files = gateway.pki.devices["x509-a"]
    dev = MqttDevice(gateway, "cert-mod-host/m", topics.username(c.host_name, "cert-mod-host", "m"), None,
                     cert=files.chain, key=files.key)
    assert dev.connect() == 5
    dev.client.loop_stop()
    assert "modules behind a gateway cannot use X.509" in gateway.output()


def _x509(gw, device_id, cert, key):
    return MqttDevice(gw, device_id, topics.username(registry.DEFAULT_HUB, device_id), None, cert=cert, key=key)


def test_x509_device_by_thumbprint(gateway):
    a = gateway.pki.devices["x509-a"]
    cs = gateway.add_device("x509-a", x509_thumbprint=a.thumbprint_sha256)
    assert cs.endswith(";x509=true;GatewayHostName=localhost")
    dev = _x509(gateway, "x509-a", a.selfsigned_cert, a.selfsigned_key)
    assert dev.connect() == 0
    dev.publish(topics.telemetry("x509-a"), b"by thumbprint")
    dev.close()
    assert _telemetry_of(gateway, "x509-a")[0]["body"] == "by thumbprint"
    # The registered thumbprint belongs to x509-a: x509-c's own certificate does not match it.
    c = gateway.pki.devices["x509-c"]
    gateway.add_device("x509-c", x509_thumbprint=a.thumbprint_sha1)
    dev = _x509(gateway, "x509-c", c.selfsigned_cert, c.selfsigned_key)
    assert dev.connect() == 5
    dev.client.loop_stop()


def test_x509_device_by_ca(gateway):
    b = gateway.pki.devices["x509-b"]
    gateway.add_device("x509-b", x509_ca=True)
    dev = _x509(gateway, "x509-b", b.chain, b.key)  # leaf + intermediate: chains to the root
    assert dev.connect() == 0
    dev.close()
    assert _closed(dev)
    # The leaf alone does not reach the trust bundle (the root only), as on a real gateway.
    dev = _x509(gateway, "x509-b", b.cert, b.key)
    assert dev.connect() == 5
    dev.client.loop_stop()
    # Registered as CA-signed: a self-signed certificate with the right CN is not enough.
    dev = _x509(gateway, "x509-b", b.selfsigned_cert, b.selfsigned_key)
    assert dev.connect() == 5
    dev.client.loop_stop()
    # And a CA-signed certificate of another device does not open this one.
    a = gateway.pki.devices["x509-a"]
    dev = _x509(gateway, "x509-b", a.cert, a.key)
    assert dev.connect() == 5
    dev.client.loop_stop()


def test_cross_identity_publish_is_acknowledged_and_dropped(gateway):
    # edgeHub acknowledges a publish it has no IoT Hub operation for and drops it (docs/gateway.md).
    gateway.add_device("victim")
    dev = _device(gateway, "intruder")
    assert dev.connect() == 0
    dev.publish(topics.telemetry("victim"), b"forged", qos=1)  # PUBACK comes
    dev.publish(topics.telemetry("intruder"), b"own")
    assert not _closed(dev, 0.2)
    dev.close()
    assert _telemetry_of(gateway, "victim") == []
    assert [r["body"] for r in _telemetry_of(gateway, "intruder")] == ["own"]
    assert "intruder: publish dropped: no IoT Hub operation for this topic" in gateway.output()


def test_cross_identity_subscribe_is_granted_but_ignored(gateway):
    # Util.AddSubscriptions grants every filter; SessionStateParser ignores the ones it does not know.
    dev = _device(gateway, "snoop")
    assert dev.connect() == 0
    assert dev.subscribe(topics.c2d_filter("victim")) == 1
    assert dev.subscribe("devices/#") == 1
    assert dev.subscribe(topics.c2d_filter("snoop")) == 1
    [me] = [c for c in hub.status(gateway.data) if c["client_id"] == "snoop"]
    # Classified C2D by its ending, as edgeHub does; it matched none of snoop's own messages, and
    # snoop's own C2D filter (the kind's usual one) takes its place: one filter per kind.
    assert me["subscriptions"] == [topics.c2d_filter("snoop")]
    dev.close()
    assert "snoop: subscription to 'devices/#' ignored" in gateway.output()


def test_oversize_message_closes_the_connection(gateway):
    dev = _device(gateway, "big")
    assert dev.connect() == 0
    dev.publish(topics.telemetry("big"), b"x" * (256 * 1024 - 100), qos=1)  # packet under 262,144: accepted
    dev.publish(topics.telemetry("big"), b"x" * (256 * 1024 + 1), qos=0)
    assert _closed(dev)
    dev.client.loop_stop()
    assert [len(r["body"]) for r in _telemetry_of(gateway, "big")] == [256 * 1024 - 100]
    assert "over edgeHub's 262144" in gateway.output()


def test_qos2_publish_is_forwarded_then_the_connection_closes(gateway):
    dev = _device(gateway, "qos2")
    assert dev.connect() == 0
    dev.publish(topics.telemetry("qos2"), b"exactly once?", qos=2)
    assert _closed(dev)
    dev.client.loop_stop()
    assert [r["body"] for r in _telemetry_of(gateway, "qos2")] == ["exactly once?"]


def test_second_connection_replaces_the_first(gateway):
    cs = gateway.add_device("twice")
    first = MqttDevice.from_connection_string(gateway, cs)
    assert first.connect() == 0
    second = MqttDevice.from_connection_string(gateway, cs)
    assert second.connect() == 0
    assert _closed(first)
    second.publish(topics.telemetry("twice"), b"still here")
    second.close()
    first.client.loop_stop()


def test_silent_client_is_dropped_after_one_and_a_half_keepalives(gateway):
    cs = gateway.add_device("sleepy")
    sock, code = raw_connect(gateway, "sleepy", topics.username(registry.DEFAULT_HUB, "sleepy"),
                             sas_password(cs), keepalive=1)
    assert code == 0
    sock.settimeout(20)  # a generous bound: the gateway should close after about 2 s
    try:
        assert sock.recv(1) == b""  # EOF: the gateway closed it, no PINGREQ was sent
    finally:
        sock.close()
    assert "sleepy: keep-alive expired" in gateway.output()


def _twin_device(gw, device_id):
    dev = _device(gw, device_id)
    assert dev.connect() == 0
    for f in (topics.TWIN_RES_FILTER, topics.DESIRED_FILTER, topics.METHODS_FILTER):
        assert dev.subscribe(f, qos=0) == 0
    return dev


def test_twin_get_and_reported_patch_answers(gateway):
    dev = _twin_device(gateway, "twin-dev")
    dev.publish(topics.twin_get("g1"), b"")
    topic, body = dev.next_message(prefix="$iothub/twin/res/")
    assert topics.parse_twin_response(topic) == (200, "g1", None)
    assert json.loads(body) == {"desired": {"$version": 1}, "reported": {"$version": 1}}

    dev.publish(topics.twin_reported("r1"), json.dumps({"fw": "1.0", "led": {"on": True}}).encode())
    topic, body = dev.next_message(prefix="$iothub/twin/res/")
    assert topics.parse_twin_response(topic) == (204, "r1", None)  # edgeHub's 204 carries no $version
    dev.publish(topics.twin_reported("r2"), b'{"led": {"on": null}}')
    assert topics.parse_twin_response(dev.next_message(prefix="$iothub/twin/res/")[0]) == (204, "r2", None)
    dev.publish(topics.twin_reported("r3"), b"not json")
    assert topics.parse_twin_response(dev.next_message(prefix="$iothub/twin/res/")[0]) == (400, "r3", None)

    assert hub.get_twin(gateway.data, "twin-dev")["reported"] == {"fw": "1.0", "led": {}, "$version": 3}
    version = hub.update_twin(gateway.data, "twin-dev", {"interval": 5})
    assert version == 2
    topic, body = dev.next_message(prefix="$iothub/twin/PATCH/properties/desired/")
    assert topics.parse_desired(topic) == 2
    assert json.loads(body) == {"interval": 5, "$version": 2}
    dev.publish(topics.twin_get("g2"), b"")
    _, body = dev.next_message(prefix="$iothub/twin/res/")
    assert json.loads(body)["desired"] == {"interval": 5, "$version": 2}
    dev.close()


def test_direct_method_round_trip_and_timeout(gateway):
    dev = _twin_device(gateway, "method-dev")

    def answer():
        topic, body = dev.next_message(prefix="$iothub/methods/POST/")
        name, rid = topics.parse_method(topic)
        reply = {"name": name, "got": json.loads(body)}
        dev.publish(topics.method_response(200, rid), json.dumps(reply).encode())

    t = threading.Thread(target=answer)
    t.start()
    status, payload = hub.invoke_method(gateway.data, "method-dev", "blink", {"times": 3}, timeout=10)
    t.join()
    assert (status, payload) == (200, {"name": "blink", "got": {"times": 3}})

    with pytest.raises(HubError, match="did not answer method 'sleep' within 1 s") as e:
        hub.invoke_method(gateway.data, "method-dev", "sleep", timeout=1)
    assert e.value.status == 504
    dev.close()
    _gone(gateway, "method-dev")
    with pytest.raises(HubError, match="not connected") as e:
        hub.invoke_method(gateway.data, "method-dev", "blink", timeout=1)
    assert e.value.status == 404


def test_c2d_is_delivered_with_properties_and_queued_while_offline(gateway):
    cs = gateway.add_device("c2d-dev")
    queued = hub.send_c2d(gateway.data, "c2d-dev", "first", {"kind": "cmd"})
    assert queued["delivered"] is False
    dev = MqttDevice.from_connection_string(gateway, cs)
    assert dev.connect() == 0
    assert dev.subscribe(topics.c2d_filter("c2d-dev")) == 1
    topic, body = dev.next_message(prefix="devices/c2d-dev/messages/devicebound/")
    props = topics.parse_c2d(topic)
    assert body == b"first" and props["kind"] == "cmd" and props["$.mid"] == queued["mid"]
    assert props["$.to"] == "/devices/c2d-dev/messages/devicebound"

    live = hub.send_c2d(gateway.data, "c2d-dev", "second & more", {"a b": "c/d"}, wait=10)
    assert live["delivered"] is True
    topic, body = dev.next_message(prefix="devices/c2d-dev/messages/devicebound/")
    assert body == b"second & more" and topics.parse_c2d(topic)["a b"] == "c/d"
    dev.close()
    assert json.loads((gateway.data / "c2d.json").read_text()) == {}


def test_hub_actions_on_unknown_identities_say_so(gateway):
    with pytest.raises(HubError, match="no identity 'ghost'") as e:
        hub.send_c2d(gateway.data, "ghost", "x")
    assert e.value.status == 404
    with pytest.raises(HubError, match="must be a JSON object"):
        hub.update_twin(gateway.data, "twin-dev", [1, 2])


def test_restart_keeps_telemetry_and_twins(tmp_path):
    gw = GatewayProcess(tmp_path, devices=()).start()
    try:
        dev = _twin_device(gw, "keeper")
        dev.publish(topics.telemetry("keeper", properties={"n": 1}), b"before restart")
        dev.publish(topics.twin_reported("1"), b'{"boots": 1}')
        dev.next_message(prefix="$iothub/twin/res/204/")
        dev.close()
        hub.update_twin(gw.data, "keeper", {"mode": "eco"})
    finally:
        assert gw.stop() == 0
    assert not (gw.data / "gateway.json").exists()
    gw.start()
    try:
        [record] = hub.read_telemetry(gw.data)
        assert record["body"] == "before restart" and record["properties"] == {"n": "1"}
        twin = hub.get_twin(gw.data, "keeper")
        assert twin == {"desired": {"mode": "eco", "$version": 2}, "reported": {"boots": 1, "$version": 2}}
        dev = _twin_device(gw, "keeper2")
        dev.close()
    finally:
        assert gw.stop() == 0


def test_client_cap_refuses_the_next_client_with_connack_3(tmp_path):
    gw = GatewayProcess(tmp_path, devices=()).start()  # edgeHub's default cap: 100
    socks = []
    try:
        t0 = time.monotonic()
        for i in range(101):
            cs = gw.add_device(f"cap{i}")
            sock, code = raw_connect(gw, f"cap{i}", topics.username(registry.DEFAULT_HUB, f"cap{i}"),
                                     sas_password(cs))
            socks.append(sock)
            assert code == (0 if i < 100 else 3), i
        print(f"\n101 TLS+MQTT connections in {time.monotonic() - t0:.1f} s")
        assert "the gateway already has 100 clients" in gw.output()
        socks.pop(0).close()  # one leaves: the next one gets in
        deadline = time.monotonic() + 5
        while "disconnected cap0" not in gw.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        sock, code = raw_connect(gw, "cap100", topics.username(registry.DEFAULT_HUB, "cap100"),
                                 sas_password(registry.connection_string(
                                     registry.DEFAULT_HUB, "cap100",
                                     key=registry.load(gw.data)["devices"]["cap100"]["key"])))
        socks.append(sock)
        assert code == 0
    finally:
        for s in socks:
            s.close()
        assert gw.stop() == 0


def test_sas_expiry_takes_ascii_digits_only():
    # '²' passes str.isdigit() but not int(): the token must be refused, not crash the check.
    from edgekit.gateway import auth
    with pytest.raises(ValueError, match="se= is not Unix seconds"):
        auth.parse_token("SharedAccessSignature sr=h%2Fdevices%2Fd&sig=abc&se=%C2%B2")
    assert auth.parse_token("SharedAccessSignature sr=h&sig=abc&se=42")["se"] == "42"
