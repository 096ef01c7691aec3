"""Load on the gateway emulator: edgeHub's 100 clients at once, every message kept, the hub-side
commands and `edgekit check` still answering, and a clear refusal for the 101st client.

Real parts throughout: `edgekit gateway serve` as a subprocess, paho-mqtt clients over verified
TLS with SAS tokens, the hub-side functions the CLI calls. tests/test_gateway.py tests the cap
with idle raw connections; this is the cap under load.
"""
import json
import threading
import time

from gateway_helpers import GatewayProcess, MqttDevice
from edgekit import check
from edgekit.gateway import hub
from azure_edge import topics  # noqa: E402  (conftest puts firmware/ on sys.path)

CLIENTS = 100     # edgeHub's default cap, and the emulator's
MESSAGES = 30     # QoS 1 messages per client
BOUND = 10.0      # seconds: a generous bound on every hub-side answer under load


class Probe:
    """Times one hub-side call again and again while the load runs."""

    def __init__(self, name, fn):
        self.name = name
        self.fn = fn
        self.seconds = []
        self.errors = []

    def loop(self, until, ready=None):
        """Call fn back to back until `until` is set (starting once `ready` is, if given)."""
        if ready is not None:
            ready.wait(BOUND)
        while not until.is_set():
            t0 = time.monotonic()
            try:
                self.fn()
            except Exception as e:
                self.errors.append(repr(e))
            self.seconds.append(time.monotonic() - t0)

    def summary(self):
        s = sorted(self.seconds)
        return (f"{self.name}: {len(s)} calls, median {s[len(s) // 2] * 1000:.0f} ms, "
                f"max {s[-1] * 1000:.0f} ms")


def _answer_methods(dev, stop):
    # load0 answers its direct methods while it publishes, as a firmware device would.
    while not stop.is_set():
        try:
            topic, body = dev.next_message(timeout=0.2, prefix="$iothub/methods/POST/")
        except AssertionError:
            continue
        name, rid = topics.parse_method(topic)
        dev.publish(topics.method_response(200, rid), json.dumps({"echo": json.loads(body)}), qos=0)


def test_100_clients_publish_while_hub_commands_answer_and_the_101st_is_refused(tmp_path):
    gw = GatewayProcess(tmp_path, devices=()).start()
    devices, stop = [], threading.Event()
    try:
        ids = [f"load{i}" for i in range(CLIENTS + 1)]
        strings = {d: gw.add_device(d) for d in ids}
        devices = [MqttDevice.from_connection_string(gw, strings[d]) for d in ids[:CLIENTS]]
        spare = MqttDevice.from_connection_string(gw, strings[ids[CLIENTS]])

        start = threading.Barrier(CLIENTS + 1)
        connacks, failures, connect_s, done_at = {}, [], [], []
        answering = threading.Event()

        def run(dev):
            start.wait()
            t0 = time.monotonic()
            try:
                connacks[dev.client_id] = dev.connect(timeout=30)
                connect_s.append(time.monotonic() - t0)
                if dev is devices[0]:
                    assert dev.subscribe(topics.METHODS_FILTER, qos=0) == 0
                    answering.set()
                for n in range(MESSAGES):
                    body = json.dumps({"device": dev.client_id, "n": n}).encode()
                    dev.publish(topics.telemetry(dev.client_id, properties={"n": n}), body, qos=1,
                                timeout=30)
                done_at.append(time.monotonic())
            except Exception as e:  # reported below: one failing client must not hang the rest
                failures.append(f"{dev.client_id}: {e}")

        threads = [threading.Thread(target=run, args=(d,), daemon=True) for d in devices]
        for t in threads:
            t.start()
        start.wait()
        t_start = time.monotonic()

        # The hub side, while the load runs.
        answerer = threading.Thread(target=_answer_methods, args=(devices[0], stop), daemon=True)
        answerer.start()
        calls = iter(range(10 ** 6))
        probes = [
            Probe("status", lambda: hub.status(gw.data)),
            Probe("get_twin", lambda: hub.get_twin(gw.data, "load1")),
            Probe("invoke_method", lambda: _invoke(gw, next(calls))),
            Probe("check (DNS, TCP, TLS)", lambda: _check(gw)),
        ]
        loaded = threading.Event()
        probing = [threading.Thread(target=p.loop, args=(loaded, answering if p.name == "invoke_method"
                                                          else None), daemon=True) for p in probes]
        for t in probing:
            t.start()
        for t in threads:
            t.join()
        loaded.set()
        for t in probing:
            t.join()
        assert not failures, failures[:5]
        assert set(connacks.values()) == {0}, connacks
        elapsed = max(done_at) - t_start

        # Every message kept, once, at the hub side.
        records = [r for r in hub.read_telemetry(gw.data) if r["device"].startswith("load")]
        got = sorted((r["device"], int(r["properties"]["n"])) for r in records)
        want = sorted((d.client_id, n) for d in devices for n in range(MESSAGES))
        assert got == want
        assert all(json.loads(r["body"])["n"] == int(r["properties"]["n"]) for r in records)
        assert len(hub.status(gw.data)) == CLIENTS

        # The 101st client is refused clearly: CONNACK 3 and the reason on the gateway's console.
        assert spare.connect() == 3
        spare.client.loop_stop()
        assert "refused load100 from" in gw.output()
        assert "the gateway already has 100 clients (edgeHub's cap)" in gw.output()
        # `edgekit check` with that identity says the same: its MQTT step gets CONNACK 3.
        t0 = time.monotonic()
        report = check.run_check(f"localhost:{gw.port}", gw.ca, strings[ids[CLIENTS]])
        check_full_s = time.monotonic() - t0
        mqtt = report.steps[-1]
        assert mqtt.name == "mqtt" and mqtt.data["connack"] == 3 and not report.ok

        # The hub side answered every time, within the bound, during the load.
        for p in probes:
            assert p.seconds, f"{p.name} never ran during the load"
            assert not p.errors, (p.name, p.errors[:3])
            assert max(p.seconds) < BOUND, p.summary()
        connect_s.sort()
        print(f"\n{CLIENTS} clients x {MESSAGES} QoS 1 messages: {len(records)} kept in {elapsed:.1f} s "
              f"({len(records) / elapsed:.0f} msg/s at the hub); TLS+MQTT connect median "
              f"{connect_s[len(connect_s) // 2]:.2f} s, max {connect_s[-1]:.2f} s")
        for p in probes:
            print("  " + p.summary())
        print(f"  check with the 101st identity: CONNACK 3 in {check_full_s * 1000:.0f} ms")
        print("  gateway: " + next(line for line in gw.output().splitlines() if "refused load100" in line))
    finally:
        stop.set()
        for d in devices:
            try:
                d.close()
            except Exception:
                pass
        assert gw.stop() == 0, gw.output()[-2000:]


def _invoke(gw, n):
    status, payload = hub.invoke_method(gw.data, "load0", "echo", {"n": n}, timeout=BOUND)
    assert (status, payload) == (200, {"echo": {"n": n}})


def _check(gw):
    report = check.run_check(f"localhost:{gw.port}", gw.ca)
    tls = [s for s in report.steps if s.name == "tls"]
    assert tls and tls[0].status == check.OK, check.render_text(report)
