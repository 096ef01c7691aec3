"""What the hub side keeps for an identity, and that no identity's use of it stalls the others.

A removed identity takes its twin, queued C2D and session with it; twins are capped as IoT Hub and
edgeHub cap them; sessions store what they mean, once per SUBSCRIBE; a C2D send returns once queued.
Real `serve` subprocesses, raw MQTT over TLS (gateway_helpers.RawDevice).
"""
import json
import socket
import threading
import time

import pytest

from device_helpers import wait_for
from gateway_helpers import GatewayProcess, RawDevice
from edgekit.gateway import c2d_delivery, control, hub
from edgekit.gateway.core import HubError
from azure_edge import topics  # noqa: E402


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    g = GatewayProcess(tmp_path_factory.mktemp("hubstate"), devices=()).start()
    yield g
    assert g.stop() == 0, g.output()


# --- C2D: queued at once, delivered beside ------------------------------------------------------

def test_c2d_to_a_device_that_never_acknowledges_holds_nothing_on_the_hub_side(gw):
    mute_cs = gw.add_device("mute")
    gw.add_device("bystander")
    mute, _ = RawDevice.connect_as(gw, mute_cs)
    assert mute.subscribe(topics.c2d_filter("mute")) == [1]
    # More sends than the control port has connections: each used to hold one until a PUBACK
    # that never comes (504 after 10 s for the caller), and past 32 everyone got 503.
    results, errors = [], []
    t0 = time.monotonic()
    for n in range(control.MAX_CONNECTIONS + 8):
        try:
            results.append(hub.send_c2d(gw.data, "mute", f"m{n}"))
        except HubError as e:
            errors.append(e.status)
            break
    assert errors == [] and len(results) == control.MAX_CONNECTIONS + 8
    assert all(r["state"] == "queued" and not r["delivered"] for r in results)
    assert time.monotonic() - t0 < 8  # each returned once queued
    assert hub.status(gw.data) is not None
    assert hub.send_c2d(gw.data, "bystander", "still served")["state"] == "queued"

    # The first one is on the wire, unacknowledged; all stay queued.
    topic, body, qos, pid, _ = mute.next_publish()
    first = topics.parse_c2d(topic)["$.mid"]
    assert qos == 1 and hub.c2d_state(gw.data, "mute", first) == "queued"
    # IoT Hub queues at most 50 per device: 403 DeviceMaximumQueueDepthExceeded.
    while len(results) < c2d_delivery.MAX_QUEUED:
        results.append(hub.send_c2d(gw.data, "mute", "filler"))
    with pytest.raises(HubError, match="50 C2D messages queued") as full:
        hub.send_c2d(gw.data, "mute", "one too many")
    assert full.value.status == 403

    mute.puback(pid)  # the device takes it: delivered, and the next one goes out
    wait_for(lambda: hub.c2d_state(gw.data, "mute", first) == "delivered", 10, "the first to be delivered")
    topic, _, _, pid, _ = mute.next_publish()
    assert topics.parse_c2d(topic)["$.mid"] != first
    assert hub.c2d_state(gw.data, "mute", "no-such-id") == "unknown"
    mute.drop()


# --- sessions: what they mean, one write per SUBSCRIBE --------------------------------------------

def _ping_seconds(dev):
    t0 = time.monotonic()
    dev.send(b"\xc0\x00")  # PINGREQ
    dev.expect(13)  # PINGRESP
    return time.monotonic() - t0


def test_a_session_stores_its_kinds_not_every_filter_and_writes_once_per_subscribe(gw):
    hoarder, _ = RawDevice.connect_as(gw, gw.add_device("hoarder"), clean=False)
    watcher, _ = RawDevice.connect_as(gw, gw.add_device("watcher"))
    quiet = sorted(_ping_seconds(watcher) for _ in range(20))[10]
    pings = []
    done = threading.Event()

    def ping_meanwhile():
        while not done.is_set():
            pings.append(_ping_seconds(watcher))
    pinger = threading.Thread(target=ping_meanwhile)
    pinger.start()
    try:
        for batch in range(3):  # 3,000 filters edgeHub classifies as "methods"
            filters = [f"$iothub/methods/POST/m{batch}-{n}/#" for n in range(1000)]
            assert hoarder.subscribe(*filters) == [1] * 1000
        assert hoarder.subscribe(topics.METHODS_FILTER, topics.c2d_filter("hoarder")) == [1, 1]
    finally:
        done.set()
        pinger.join(10)
    stored = json.loads((gw.data / "sessions.json").read_text())["hoarder"]
    assert stored == {"methods": [topics.METHODS_FILTER, 1], "c2d": [topics.c2d_filter("hoarder"), 1]}
    # Another device was served meanwhile: no ping waited on 1,000 file rewrites.
    assert pings and max(pings) < max(0.5, 50 * quiet), (quiet, max(pings))
    hoarder.disconnect()
    again, ack = RawDevice.connect_as(gw, _cs(gw, "hoarder"), clean=False)
    assert ack == (1, 0)
    assert hub.send_c2d(gw.data, "hoarder", "resumed", wait=None)["state"] == "queued"
    topic, body, _, pid, _ = again.next_publish()
    assert body == b"resumed"
    again.puback(pid)
    again.disconnect()
    watcher.disconnect()


def _cs(gw, device_id):
    from edgekit.gateway import registry
    return registry.show_connection_string(gw.data, device_id)


def test_one_subscribe_is_one_session_write(tmp_path):
    from edgekit.gateway import registry
    from edgekit.gateway.core import Connection, Gateway
    registry.add_device(tmp_path, "one")
    gw = Gateway(tmp_path, "localhost", out=lambda line: None)
    ident = registry.lookup(gw.registry.current(), "one")
    conn = Connection(ident, handler=None, peer="test", method="sas", persistent=True)
    before = gw.sessions.writes
    gw.subscribed(conn, [(f"$iothub/methods/POST/x{n}", 1) for n in range(1000)] + [("unknown/#", 1)])
    assert gw.sessions.writes == before + 1
    assert gw.sessions.get("one") == {"$iothub/methods/POST/x999": 1}
    gw.subscribed(conn, [("$iothub/methods/POST/x999", 1)])  # nothing changed: nothing written
    assert gw.sessions.writes == before + 1
    gw.close()


# --- twins: capped as IoT Hub caps them, one identity's write never stalls another's --------------

def _reported(dev, rid, patch):
    """Send a reported patch and return (status, seconds) of its answer."""
    t0 = time.monotonic()
    dev.publish(f"$iothub/twin/PATCH/properties/reported/?$rid={rid}", json.dumps(patch).encode())
    topic, body, _, pid, _ = dev.next_publish()
    if pid is not None:
        dev.puback(pid)
    assert topic.endswith(f"?$rid={rid}"), topic
    return int(topic.split("/")[3]), time.monotonic() - t0, body


def test_twins_are_capped_at_32_kb_a_side_and_a_big_one_does_not_stall_another_device(tmp_path):
    # 60 other identities already hold twins near the cap: a store that rewrote every twin on
    # each write would make every patch pay for all of them.
    g = GatewayProcess(tmp_path, devices=())
    g.data.mkdir(parents=True, mode=0o700)
    near_cap = {"blob": "x" * 30_000}
    (g.data / "twins.json").write_text(json.dumps({f"other{n}": {"desired": {"$version": 1},
                                                                 "reported": dict(near_cap, **{"$version": 2})}
                                                   for n in range(60)}))
    for n in range(60):
        g.add_device(f"other{n}")
    big_cs, small_cs = g.add_device("big"), g.add_device("small")
    g.start()
    try:
        big, _ = RawDevice.connect_as(g, big_cs)
        small, _ = RawDevice.connect_as(g, small_cs)
        assert big.subscribe(topics.TWIN_RES_FILTER) == [1] and small.subscribe(topics.TWIN_RES_FILTER) == [1]

        # edgeHub's ReportedPropertiesValidator: a patch over 32 KB is 400 with an empty body.
        status, _, body = _reported(big, "huge", {"blob": "y" * 200_000})
        assert (status, body) == (400, b"")
        # IoT Hub's cap on the whole reported document: patches that each fit, but not together.
        statuses = [_reported(big, f"p{n}", {f"k{n}": "z" * 20_000})[0] for n in range(40)]
        assert statuses[0] == 204 and set(statuses[1:]) == {400}, statuses
        assert "reported properties would be" in g.output()
        big.publish("$iothub/twin/GET/?$rid=get")
        topic, twin, _, pid, _ = big.next_publish()
        big.puback(pid)
        assert topic.startswith("$iothub/twin/res/200/") and len(twin) < 64 * 1024
        # The desired side is capped the same way, from the hub side.
        with pytest.raises(HubError, match="desired patch of") as e:
            hub.update_twin(g.data, "big", {"blob": "d" * 40_000})
        assert e.value.status == 400

        # Another device's patch costs about what a PINGREQ does, whatever the other twins hold.
        # (No Nagle on the test's side: a PUBACK then a PUBLISH would wait for a delayed ACK.)
        small.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pings = sorted(_ping_seconds(small) for _ in range(20))
        patches = sorted(_reported(small, f"s{n}", {"n": n})[1] for n in range(20))
        ratio = patches[10] / pings[10]
        print(f"small device: patch {patches[10] * 1000:.2f} ms, ping {pings[10] * 1000:.2f} ms, x{ratio:.1f}")
        assert ratio < 30, (patches[10], pings[10])  # measured x8.8 here; x123 when every write rewrote all twins
        assert json.loads((g.data / "twins" / "small.json").read_text())["reported"]["n"] == 19
        assert not (g.data / "twins.json").exists()  # split into one file per identity
        assert len(list((g.data / "twins").iterdir())) == 62
        big.disconnect()
        small.disconnect()
    finally:
        assert g.stop() == 0, g.output()[-2000:]


# --- a removed identity takes its state with it ---------------------------------------------------

def test_a_device_removed_and_added_again_inherits_nothing(gw):
    from edgekit.gateway import registry
    old_cs = gw.add_device("reused")
    old, _ = RawDevice.connect_as(gw, old_cs, clean=False)
    assert old.subscribe(topics.c2d_filter("reused"), topics.TWIN_RES_FILTER) == [1, 1]
    assert _reported(old, "r1", {"secret": "old-owner-wifi-psk"})[0] == 204
    old.disconnect()
    hub.send_c2d(gw.data, "reused", "for the old owner only")
    # Removed and added again at once, with a new key: faster than the gateway's registry pass.
    registry.remove_device(gw.data, "reused")
    new_cs = gw.add_device("reused")
    new, ack = RawDevice.connect_as(gw, new_cs, clean=False)
    assert ack == (0, 0)  # no session present: the old owner's is gone
    assert new.subscribe(topics.c2d_filter("reused"), topics.TWIN_RES_FILTER) == [1, 1]
    new.publish("$iothub/twin/GET/?$rid=g")
    topic, twin, _, pid, _ = new.next_publish()
    new.puback(pid)
    assert topic.startswith("$iothub/twin/res/200/") and json.loads(twin)["reported"] == {"$version": 1}
    with pytest.raises(OSError):
        new.next_publish(timeout=0.5)  # the old owner's C2D message is not delivered
    on_disk = b"".join(p.read_bytes() for p in (gw.data / "twins").iterdir())
    assert b"old-owner-wifi-psk" not in on_disk
    assert b"for the old owner" not in (gw.data / "c2d.json").read_bytes()
    new.disconnect()


def test_state_of_a_device_removed_while_the_gateway_was_stopped_goes_at_the_next_start(tmp_path):
    from edgekit.gateway import registry
    g = GatewayProcess(tmp_path, devices=())
    cs = g.add_device("gone")
    g.start()
    try:
        dev, _ = RawDevice.connect_as(g, cs, clean=False)
        assert dev.subscribe(topics.TWIN_RES_FILTER) == [1]
        assert _reported(dev, "r", {"secret": "kept-too-long"})[0] == 204
        dev.disconnect()
        hub.send_c2d(g.data, "gone", "never")
    finally:
        assert g.stop() == 0
    registry.remove_device(g.data, "gone")
    g.start()
    try:
        assert not (g.data / "twins" / "gone.json").exists()
        assert json.loads((g.data / "c2d.json").read_text()) == {}
        assert "gone" not in json.loads((g.data / "sessions.json").read_text())
    finally:
        assert g.stop() == 0


# --- group commit: no record acknowledged before an fsync covers it ------------------------------

def test_group_commit_acknowledges_no_record_before_an_fsync_covers_it(tmp_path):
    import os
    from edgekit.gateway import store
    s = store.Store(tmp_path)
    done = []  # file sizes each finished fsync covered, in the order they finished
    real = s.fdatasync

    def watched(fd):
        covers = os.fstat(fd).st_size  # what is written when the fsync starts is what it covers
        time.sleep(0.002)  # a disk that takes its time: records keep arriving meanwhile
        real(fd)
        done.append(covers)
    s.fdatasync = watched
    covered_at_ack = {}

    async def device(n):
        import asyncio
        await asyncio.sleep((n % 30) * 0.001)  # arrivals spread over the fsyncs
        await s.add_telemetry_async({"device": "d", "n": n})
        covered_at_ack[n] = max(done, default=0)  # the PUBACK would go out now

    async def burst():
        import asyncio
        await asyncio.gather(*(device(n) for n in range(300)))
    import asyncio
    asyncio.run(burst())
    s.close()
    ends, pos = {}, 0
    for line in (tmp_path / store.TELEMETRY).read_bytes().splitlines(keepends=True):
        pos += len(line)
        ends[json.loads(line)["n"]] = pos
    assert sorted(ends) == list(range(300)) and 1 < len(done) < 300
    early = [n for n in range(300) if covered_at_ack[n] < ends[n]]
    assert early == [], f"acknowledged before an fsync covered them: {early[:10]}"


def test_a_record_discarded_by_another_writers_failed_fsync_is_never_committed(tmp_path):
    # One link writes a record and commits later (its read-ahead); meanwhile another writer's fsync
    # fails and cuts back every record not yet on disk. Records written since then land where the
    # first one was: its commit must still fail, not find the offset covered and acknowledge it.
    import asyncio
    from edgekit.gateway import store
    s = store.Store(tmp_path)

    async def scenario():
        kept = s.write_telemetry({"device": "d", "n": 0})
        await s.commit_telemetry(kept)
        lost = s.write_telemetry({"device": "a", "n": 1})  # written, not committed yet
        real = s.fdatasync

        def failing(fd):
            raise OSError(28, "No space left on device")
        s.fdatasync = failing
        with pytest.raises(store.StoreError):
            await s.add_telemetry_async({"device": "b", "n": 2})
        s.fdatasync = real
        later = s.write_telemetry({"device": "c", "n": 3, "pad": "x" * 40})  # past where `lost` ended
        await s.commit_telemetry(later)
        await s.commit_telemetry(kept)  # durable before the failure: still fine
        with pytest.raises(store.StoreError):
            await s.commit_telemetry(lost)
    asyncio.run(scenario())
    s.close()
    assert [r["n"] for r in store.read_telemetry(tmp_path)] == [0, 3]
