"""The MQTT protocol head behaves like edgeHub's, row by row of docs/gateway.md.

Real TLS against a `serve` subprocess, raw MQTT packets (gateway_helpers.RawDevice) where a client
library would hide the behaviour. One module-scoped gateway with short re-authentication and
CONNECT deadlines, so the slow rows take seconds.
"""
import asyncio
import contextlib
import json
import os
import socket
import ssl
import threading
import time
import types

import pytest

from device_helpers import wait_for
from gateway_helpers import GatewayProcess, RawDevice, _fixed, _str, connect, sas_password
from edgekit.gateway import auth, control, hub, registry, tls
from edgekit.gateway.core import HubError
from edgekit.gateway.protocol import MAX_PENDING, ProtocolHead, keepalive_timeout
from azure_edge import connstr, topics  # noqa: E402

CONNECT_TIMEOUT = 2
MODEL = "dtmi:com:example:Thermostat;1"


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    g = GatewayProcess(tmp_path_factory.mktemp("edgehub"), devices=(),
                       options={"reauth_interval": 1, "connect_timeout": CONNECT_TIMEOUT}).start()
    yield g
    assert g.stop() == 0, g.output()


def _telemetry(gw, device_id):
    return [r for r in hub.read_telemetry(gw.data) if r["device"] == device_id]


def _c2d_of(gw, device_id):
    return json.loads((gw.data / "c2d.json").read_text()).get(device_id, [])


def _send_c2d(gw, device_id, body, wait=10):
    """hub.send_c2d in a thread, waiting up to `wait` s for the acknowledgement: the test is the device."""
    result = {}
    t = threading.Thread(target=lambda: result.update(hub.send_c2d(gw.data, device_id, body, wait=wait)))
    t.start()
    return t, result


def _no_publish(dev, seconds=1.0):
    try:
        got = dev.next_publish(timeout=seconds)
    except socket.timeout:
        return True
    raise AssertionError(f"unexpected PUBLISH {got[0]!r}")


# --- 1. persistent sessions ---------------------------------------------------------------------

def test_persistent_session_keeps_subscriptions_and_answers_session_present(gw):
    cs = gw.add_device("sdk-like")
    dev, ack = RawDevice.connect_as(gw, cs, clean=False)
    assert ack == (0, 0)  # no stored session yet
    assert dev.subscribe(topics.c2d_filter("sdk-like"), topics.METHODS_FILTER) == [1, 1]
    dev.disconnect()
    dev, ack = RawDevice.connect_as(gw, cs, clean=False)
    assert ack == (1, 0)
    # No SUBSCRIBE this time, as the Azure SDK does: C2D and methods still arrive.
    t, result = _send_c2d(gw, "sdk-like", "after reconnect")
    topic, body, qos, pid, _ = dev.next_publish()
    assert body == b"after reconnect" and qos == 1
    dev.puback(pid)
    t.join(10)
    assert result["delivered"] is True
    dev.disconnect()


def test_persistent_session_survives_a_serve_restart(tmp_path):
    g = GatewayProcess(tmp_path, devices=()).start()
    try:
        cs = g.add_device("restarted")
        dev, ack = RawDevice.connect_as(g, cs, clean=False)
        assert dev.subscribe(topics.c2d_filter("restarted")) == [1]
        dev.disconnect()
        assert g.stop() == 0
        g.start()
        dev, ack = RawDevice.connect_as(g, cs, clean=False)
        assert ack == (1, 0)
        t, _ = _send_c2d(g, "restarted", "still subscribed")
        topic, body, qos, pid, _ = dev.next_publish()
        assert body == b"still subscribed"
        dev.puback(pid)
        t.join(10)
        dev.disconnect()
    finally:
        g.stop()


def test_unacknowledged_c2d_is_delivered_again_on_reconnect(gw):
    cs = gw.add_device("forgetful")
    dev, _ = RawDevice.connect_as(gw, cs, clean=False)
    dev.subscribe(topics.c2d_filter("forgetful"))
    t, result = _send_c2d(gw, "forgetful", "ack me", wait=None)
    topic, body, qos, pid, _ = dev.next_publish()
    mid = topics.parse_c2d(topic)["$.mid"]
    assert qos == 1 and topics.parse_c2d(topic)["$.mid"] == mid
    dev.drop()  # no PUBACK
    t.join(10)
    assert result["delivered"] is False and result["mid"] == mid
    wait_for(lambda: all(c["client_id"] != "forgetful" for c in hub.status(gw.data)), 5, "the link to close")
    dev, ack = RawDevice.connect_as(gw, cs, clean=False)
    assert ack == (1, 0)
    topic, body, qos, pid, _ = dev.next_publish()
    assert body == b"ack me" and topics.parse_c2d(topic)["$.mid"] == mid
    dev.puback(pid)
    wait_for(lambda: _c2d_of(gw, "forgetful") == [], 5, "the C2D message to be completed")
    dev.disconnect()


def test_clean_session_starts_afresh_and_deletes_the_stored_session(gw):
    cs = gw.add_device("fresh")
    dev, _ = RawDevice.connect_as(gw, cs, clean=False)
    dev.subscribe(topics.c2d_filter("fresh"))
    dev.disconnect()
    dev, ack = RawDevice.connect_as(gw, cs, clean=True)
    assert ack == (0, 0)
    assert "fresh" not in json.loads((gw.data / "sessions.json").read_text())
    hub.send_c2d(gw.data, "fresh", "queued, not sent")
    assert _no_publish(dev, 0.5)
    dev.disconnect()


# --- 2. CONNACK codes ---------------------------------------------------------------------------

def test_connack_1_for_a_protocol_level_other_than_4(gw):
    cs = gw.add_device("mqtt31")
    dev, ack = RawDevice.connect_as(gw, cs, level=3)
    assert ack == (0, 1)
    assert dev.closed()
    assert "refused" in gw.output() and "level 3" in gw.output()


# --- 3. publishes outside the templates, twin requests ------------------------------------------

def test_publish_outside_the_templates_is_acknowledged_dropped_and_logged(gw):
    cs = gw.add_device("stray")
    dev, _ = RawDevice.connect_as(gw, cs)
    pid = dev.publish("devices/someone-else/messages/events/", b"forged")
    assert dev.expect(4)[2] == pid.to_bytes(2, "big")  # PUBACK, link stays open
    pid = dev.publish("no/such/template", b"x")
    assert dev.expect(4)[2] == pid.to_bytes(2, "big")
    dev.publish(topics.telemetry("stray"), b"mine")
    dev.expect(4)
    dev.disconnect()
    assert [r["body"] for r in _telemetry(gw, "stray")] == ["mine"]
    assert "stray: publish dropped" in gw.output()


def test_twin_get_without_rid_closes_the_link(gw):
    cs = gw.add_device("no-rid")
    dev, _ = RawDevice.connect_as(gw, cs)
    dev.subscribe(topics.TWIN_RES_FILTER)
    dev.publish("$iothub/twin/GET/", b"")
    assert dev.closed()


def test_reported_patch_without_rid_is_applied_and_not_answered(gw):
    cs = gw.add_device("quiet-patch")
    dev, _ = RawDevice.connect_as(gw, cs)
    dev.subscribe(topics.TWIN_RES_FILTER)
    dev.publish("$iothub/twin/PATCH/properties/reported/", b'{"fw": "1.2"}')
    dev.expect(4)
    assert _no_publish(dev, 0.5)
    assert hub.get_twin(gw.data, "quiet-patch")["reported"]["fw"] == "1.2"
    dev.publish(topics.twin_reported("r1"), b'{"fw": "1.3"}')
    topic, *_ = dev.next_publish()
    # MessagingServiceClient.ProcessTwinAsync answers 204 with the $rid and no $version (IoT Hub adds one).
    assert topic == "$iothub/twin/res/204/?$rid=r1"
    dev.disconnect()


def test_unsupported_twin_operation_closes_the_link(gw):
    cs = gw.add_device("twin-writer")
    dev, _ = RawDevice.connect_as(gw, cs)
    dev.publish("$iothub/twin/PATCH/properties/desired/?$rid=1", b'{"interval": 1}')
    assert dev.closed()
    assert hub.get_twin(gw.data, "twin-writer")["desired"] == {"$version": 1}


# --- 4. subscriptions ---------------------------------------------------------------------------

def test_subscriptions_granted_at_most_qos_1_and_delivery_at_the_subscribed_qos(gw):
    cs = gw.add_device("subs")
    dev, _ = RawDevice.connect_as(gw, cs)
    assert dev.subscribe(topics.TWIN_RES_FILTER, "unknown/#", qos=2) == [1, 1]
    dev.publish(topics.twin_get("q1"))
    topic, _, qos, pid, _ = dev.next_publish()
    assert topic.startswith("$iothub/twin/res/200/?$rid=q1") and qos == 1
    dev.puback(pid)
    assert dev.subscribe(topics.TWIN_RES_FILTER, qos=0) == [0]
    dev.publish(topics.twin_get("q0"))
    topic, _, qos, _, _ = dev.next_publish()
    assert topic.startswith("$iothub/twin/res/200/?$rid=q0") and qos == 0
    # Another device's C2D filter is classified C2D, and still never matches its messages.
    gw.add_device("subs-victim")
    assert dev.subscribe(topics.c2d_filter("subs-victim")) == [1]
    assert hub.send_c2d(gw.data, "subs-victim", "not for subs")["delivered"] is False
    assert _no_publish(dev, 0.5)
    dev.disconnect()
    assert "subs: subscription to 'unknown/#' ignored" in gw.output()


# --- 5. limits ----------------------------------------------------------------------------------

def test_packet_over_262144_bytes_closes_the_link_before_its_body_is_read(gw):
    cs = gw.add_device("huge")
    devs = []
    for _ in range(5):
        dev, _ = RawDevice.connect_as(gw, cs if not devs else gw.add_device(f"huge{len(devs)}"))
        # Announce 100 MB and send only the topic: the gateway must not wait for the rest.
        header = _fixed(0x30, b"", length=100 * 1024 * 1024)
        dev.send(header + _str(topics.telemetry("huge")))
        devs.append(dev)
    for dev in devs:
        assert dev.closed()
    assert "over edgeHub's 262144" in gw.output()


def test_routed_message_over_256_kib_with_properties_is_dropped_after_its_puback(gw):
    cs = gw.add_device("pnp-big")
    c = connstr.parse(cs)
    dev = RawDevice(gw)
    dev.send(connect("pnp-big", f"{c.host_name}/pnp-big/?api-version=2021-04-12&model-id={MODEL}",
                     sas_password(cs)))
    assert dev.connack() == (0, 0)
    topic = topics.telemetry("pnp-big")
    # The largest packet edgeHub reads: 262,144 bytes with the 4-byte fixed header (MqttDecoder).
    body = b"x" * (262_144 - 4 - 4 - len(topic))
    pid = dev.publish(topic, body, retain=True)  # + mqtt-retain and modelId: over 256 KiB
    assert dev.expect(4)[2] == pid.to_bytes(2, "big")
    dev.publish(topic, b"small")
    dev.expect(4)
    dev.disconnect()
    assert [r["body"] for r in _telemetry(gw, "pnp-big")] == ["small"]


def test_plug_and_play_model_id_is_stamped_on_telemetry(gw):
    cs = gw.add_device("pnp")
    c = connstr.parse(cs)
    dev = RawDevice(gw)
    dev.send(connect("pnp", f"{c.host_name}/pnp/?api-version=2021-04-12&model-id={MODEL}", sas_password(cs)))
    assert dev.connack() == (0, 0)
    dev.publish(topics.telemetry("pnp"), b"21.5")
    dev.expect(4)
    dev.disconnect()
    [record] = _telemetry(gw, "pnp")
    assert record["properties"]["modelId"] == MODEL


def test_retain_becomes_the_mqtt_retain_property_and_is_never_kept(gw):
    cs = gw.add_device("retainer")
    dev, _ = RawDevice.connect_as(gw, cs)
    dev.publish(topics.telemetry("retainer"), b"sticky", retain=True)
    dev.expect(4)
    dev.disconnect()
    [record] = _telemetry(gw, "retainer")
    assert record["properties"]["mqtt-retain"] == "true"
    again, _ = RawDevice.connect_as(gw, cs)
    again.subscribe(topics.c2d_filter("retainer"), topics.METHODS_FILTER, topics.DESIRED_FILTER)
    assert _no_publish(again, 0.5)
    again.disconnect()


def test_keepalive_is_one_and_a_half_times_at_most_ten_minutes_and_zero_means_ten_minutes():
    assert keepalive_timeout(60) == 90
    assert keepalive_timeout(1000) == 600
    assert keepalive_timeout(0) == 600


def test_connect_deadline_closes_a_silent_link(gw):
    ctx = ssl.create_default_context(cafile=gw.ca)
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", gw.port)), server_hostname=gw.hostname)
    sock.settimeout(CONNECT_TIMEOUT + 10)
    assert sock.recv(1) == b""
    sock.close()
    assert "no CONNECT in time" in gw.output()


# --- 7. wills -----------------------------------------------------------------------------------

def test_will_is_routed_as_own_telemetry_on_abnormal_close_only(gw):
    cs = gw.add_device("willing")
    dev, _ = RawDevice.connect_as(gw, cs, will=(topics.telemetry("willing"), b"gone", 1, True))
    dev.drop()
    wait_for(lambda: _telemetry(gw, "willing"), 5, "the will to be routed")
    [record] = _telemetry(gw, "willing")
    assert record["body"] == "gone" and record["properties"]["mqtt-retain"] == "true"
    dev, _ = RawDevice.connect_as(gw, cs, will=(topics.telemetry("willing"), b"clean", 1, False))
    dev.disconnect()
    time.sleep(0.3)
    assert [r["body"] for r in _telemetry(gw, "willing")] == ["gone"]


def test_will_is_routed_when_a_second_connection_takes_over(gw):
    cs = gw.add_device("taken")
    first, _ = RawDevice.connect_as(gw, cs, will=(topics.telemetry("taken"), b"replaced", 0, False))
    second, ack = RawDevice.connect_as(gw, cs)
    assert ack == (0, 0) and first.closed()
    wait_for(lambda: _telemetry(gw, "taken"), 5, "the will to be routed")
    second.disconnect()


@pytest.mark.parametrize("n, topic, body", [
    (0, "$iothub/methods/POST/reboot/?$rid=x", b"{}"),
    (1, "$iothub/twin/PATCH/properties/desired/?$version=99999", b'{"interval": 86400}'),
    (2, "devices/victim2/messages/devicebound/%24.mid=evil", b"reboot"),
])
def test_will_with_retain_never_reaches_another_identity(gw, n, topic, body):
    # The review's attack: a retained will on another identity's or the $iothub topics, then a drop.
    attacker = gw.add_device(f"attacker{n}")
    victim = gw.add_device(f"victim{n}")
    dev, ack = RawDevice.connect_as(gw, attacker, will=(topic, body, 1, True))
    assert ack == (0, 0)
    dev.drop()
    wait_for(lambda: all(c["client_id"] != f"attacker{n}" for c in hub.status(gw.data)), 5, "the link to close")
    for cs in (victim, attacker):
        other, _ = RawDevice.connect_as(gw, cs)
        device_id = connstr.parse(cs).device_id
        other.subscribe(topics.METHODS_FILTER, topics.DESIRED_FILTER, topics.TWIN_RES_FILTER,
                        topics.c2d_filter(device_id))
        assert _no_publish(other, 0.5)
        other.disconnect()
    assert _telemetry(gw, f"attacker{n}") == []
    assert f"attacker{n}: will on" in gw.output() and "not routed" in gw.output()


# --- 8. methods to offline devices --------------------------------------------------------------

def test_method_to_an_offline_device_waits_for_the_connect_timeout_then_404(gw):
    gw.add_device("offline")
    t0 = time.monotonic()
    with pytest.raises(HubError, match="not connected") as e:
        control.call(gw.data, "invoke_method", wait=10, device_id="offline", name="ping", timeout=5,
                     connect_timeout=1)
    assert e.value.status == 404 and time.monotonic() - t0 >= 1


def test_method_to_a_device_that_subscribes_within_the_connect_timeout_is_delivered(gw):
    cs = gw.add_device("late")
    result = {}

    def call():
        result["r"] = control.call(gw.data, "invoke_method", wait=30, device_id="late", name="ping",
                                   timeout=10, connect_timeout=10)

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.5)
    dev, _ = RawDevice.connect_as(gw, cs)
    dev.subscribe(topics.METHODS_FILTER)
    topic, body, qos, pid, _ = dev.next_publish(timeout=10)
    name, rid = topics.parse_method(topic)
    if pid:
        dev.puback(pid)
    dev.publish(topics.method_response(200, rid), b'{"pong": true}')
    t.join(20)
    dev.disconnect()
    assert name == "ping" and result["r"] == [200, {"pong": True}]


# --- 10. no tracebacks --------------------------------------------------------------------------

def test_resets_half_open_handshakes_and_garbage_are_one_line_each(gw):
    cs = gw.add_device("rude")
    # A reset right after a refusing CONNACK.
    dev = RawDevice(gw)
    dev.send(connect("rude", "bad/user", "SharedAccessSignature sr=x&sig=y&se=1"))
    dev.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    dev.sock.close()
    # A half-open TLS handshake, and plain TCP garbage.
    raw = socket.create_connection(("127.0.0.1", gw.port))
    raw.sendall(b"\x16\x03\x01\x00\x10garbage")
    raw.close()
    raw = socket.create_connection(("127.0.0.1", gw.port))
    raw.sendall(b"GET / HTTP/1.1\r\n\r\n")
    raw.close()
    # Garbage inside TLS before CONNECT.
    dev = RawDevice(gw)
    dev.send(b"\xff\xff\xff\xff\x7f")
    assert dev.closed()
    dev, ack = RawDevice.connect_as(gw, cs)
    assert ack == (0, 0)
    dev.disconnect()
    time.sleep(0.3)
    assert "Traceback" not in gw.output() and "never retrieved" not in gw.output()


# --- 11. re-authentication ----------------------------------------------------------------------

def test_reauthentication_drops_expired_tokens_and_removed_identities(gw):
    short = gw.add_device("short-lived")
    removed = gw.add_device("removed")
    dev1, ack1 = RawDevice.connect_as(gw, short, ttl=3)
    dev2, ack2 = RawDevice.connect_as(gw, removed)
    assert ack1 == ack2 == (0, 0)
    registry.remove_device(gw.data, "removed")
    assert dev2.closed(timeout=5)
    assert dev1.closed(timeout=10)
    out = gw.output()
    assert "closing short-lived: re-authentication failed" in out
    assert "closing removed: re-authentication failed" in out


# --- 6. back-pressure ---------------------------------------------------------------------------

class _SlowHub:
    """The gateway core as the protocol head sees it, with publishes held until `gate` opens.

    Only this row needs the hub side to be slow on purpose; everything else is the real Gateway.
    """

    def __init__(self, loop):
        self.gate = asyncio.Event()
        self.loop = loop
        self.handled = []
        self.link = None

    def check_connect(self, client_id, username, password, peer_der, **more):  # peer_chain= after the merge
        ident = types.SimpleNamespace(client_id=client_id, device_id=client_id, module_id=None)
        return auth.Verdict(auth.ACCEPTED, "test", identity=ident, method="test")

    def open_session(self, client_id, clean):
        return False

    async def connected(self, verdict, link, peer):
        self.link = link
        return types.SimpleNamespace(client_id=verdict.identity.client_id, identity=verdict.identity)

    async def resume(self, conn):
        pass

    async def on_device_publish(self, conn, topic, data, retain=False):
        await self.gate.wait()
        self.handled.append(data)

    async def commit(self, conn):
        pass

    def link_closed(self, conn, why):
        pass

    def say(self, text):
        pass

    async def reauthenticate_forever(self):
        await asyncio.Event().wait()


def _server_context(cert, key):
    # The context tls.start_server takes: tls.server_context where tls.py has one (pyOpenSSL,
    # gwauth's branch), else the standard library's.
    if hasattr(tls, "server_context"):
        return tls.server_context(str(cert), str(key))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


@contextlib.contextmanager
def _serving(loop, core, gw):
    """A protocol head over core, served on loop in a thread of its own; yields its port."""
    head = ProtocolHead(core, _server_context(gw.data / "tls" / "server.cert.pem", gw.data / "tls" / "server.key.pem"))
    port = loop.run_until_complete(head.start("127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(head.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_back_pressure_stops_reading_at_100_pending_publishes_and_pubacks_stay_in_order(gw):
    # edgeHub's MessagingServiceClient.MaxPendingMessages (100), not MaxPendingInboundAcknowledgements
    # (16, which counts the device's PUBACKs): see docs/gateway.md.
    loop = asyncio.new_event_loop()
    slow = _SlowHub(loop)
    with _serving(loop, slow, gw) as port:
        dev = RawDevice(types.SimpleNamespace(ca=gw.ca, port=port, hostname=gw.hostname))
        dev.send(connect("busy", "hub/busy/?api-version=2021-04-12", "x"))
        assert dev.connack() == (0, 0)
        pids = [dev.publish(topics.telemetry("busy"), b"%d" % i) for i in range(150)]
        wait_for(lambda: slow.link is not None and slow.link._inbound.qsize() == MAX_PENDING - 1, 5,
                 "the head to stop reading")
        time.sleep(0.3)  # had it kept reading, more would be queued by now
        assert MAX_PENDING == 100
        assert slow.link._inbound.qsize() == MAX_PENDING - 1  # + 1 being handled = 100 pending
        assert slow.handled == []
        loop.call_soon_threadsafe(slow.gate.set)
        acked = [int.from_bytes(dev.expect(4)[2], "big") for _ in pids]
        assert acked == pids
        assert slow.handled == [b"%d" % i for i in range(150)]
        dev.disconnect()


def test_one_link_commits_its_read_ahead_with_few_fsyncs_and_acknowledges_none_before_it(gw, tmp_path, monkeypatch):
    # Issue 26 part 4: a draining device's publishes are written as they are read, one fsync covers
    # the run, and each PUBACK goes, in order, only once an fsync finished covering its record.
    from edgekit.gateway import protocol
    from edgekit.gateway.core import Gateway
    data = tmp_path / "data"
    cs = registry.add_device(data, "drainer")
    loop = asyncio.new_event_loop()
    core = Gateway(data, gw.hostname, out=lambda line: None)
    done = []  # file sizes the finished fsyncs covered, in the order they finished
    real = core.store.fdatasync

    def watched(fd):
        covers = os.fstat(fd).st_size  # what is written when the fsync starts is what it covers
        time.sleep(0.003)  # a disk that takes its time: the device keeps publishing meanwhile
        real(fd)
        done.append(covers)
    core.store.fdatasync = watched
    covered_at_ack = {}  # packet id -> bytes durable when its PUBACK was built (just before it is written)
    build = protocol.PubackPacket.build

    def puback(pid):
        covered_at_ack[pid] = max(done, default=0)
        return build(pid)
    monkeypatch.setattr(protocol.PubackPacket, "build", puback)
    try:
        with _serving(loop, core, gw) as port:
            dev, ack = RawDevice.connect_as(types.SimpleNamespace(ca=gw.ca, port=port, hostname=gw.hostname), cs)
            assert ack == (0, 0)
            pids = [dev.publish(topics.telemetry("drainer"), b"%d" % i) for i in range(300)]
            acked = [int.from_bytes(dev.expect(4)[2], "big") for _ in pids]
            assert acked == pids  # in order
            dev.disconnect()
    finally:
        core.close()
    ends, pos = {}, 0
    for line in (data / "telemetry.jsonl").read_bytes().splitlines(keepends=True):
        pos += len(line)
        ends[int(json.loads(line)["body"])] = pos
    assert sorted(ends) == list(range(300))
    early = [i for i, pid in enumerate(pids) if covered_at_ack[pid] < ends[i]]
    assert early == [], f"acknowledged before an fsync covered them: {early[:10]}"
    assert 1 <= core.store.syncs <= 100, f"{core.store.syncs} fsyncs for 300 readings: no read-ahead"


def test_a_removed_identity_is_dropped_at_once_without_waiting_for_the_pass(tmp_path):
    # ServiceIdentityRemoved drops the connection right away; the 5-minute timer is for tokens.
    g = GatewayProcess(tmp_path, devices=()).start()  # default reauth_interval (300 s)
    try:
        cs = g.add_device("gone-soon")
        dev, ack = RawDevice.connect_as(g, cs)
        assert ack == (0, 0)
        registry.remove_device(g.data, "gone-soon")
        assert dev.closed(timeout=5)
        assert "closing gone-soon: re-authentication failed" in g.output()
    finally:
        g.stop()


def test_publishes_read_before_a_close_are_still_handled(gw):
    # CompletePublishAsync completes the publish processor's backlog before the link goes.
    cs = gw.add_device("last-words")
    dev, _ = RawDevice.connect_as(gw, cs)
    for i in range(20):
        dev.publish(topics.telemetry("last-words"), b"%d" % i, qos=0)
    dev.disconnect()
    wait_for(lambda: len(_telemetry(gw, "last-words")) == 20, 5, "all 20 to be stored")
    assert [r["body"] for r in _telemetry(gw, "last-words")] == [str(i) for i in range(20)]
