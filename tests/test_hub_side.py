"""The hub side for scripts: --json everywhere, telemetry filters, C2D system properties, device
show/--force, serve --listen/--detach and stop, a durable telemetry store, a bounded control port.

Everything runs against a real `serve` subprocess (gateway_helpers) and real files.
"""
import asyncio
import datetime
import json
import os
import resource
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from device_helpers import wait_for
from gateway_helpers import ROOT, GatewayProcess, MqttDevice, gateway  # noqa: F401  (gateway is a fixture)
from edgekit.cli import main
from edgekit.gateway import control, hub, registry, store
from azure_edge import connstr, topics  # noqa: E402  (conftest puts firmware/ on sys.path)


def _run(*args):
    result = CliRunner().invoke(main, ["gateway", *args])
    assert "Traceback" not in result.output, result.output
    return result


def _json(result, exit_code=0):
    """The one JSON object a --json command printed (stdout holds nothing else)."""
    assert result.exit_code == exit_code, result.output
    lines = [ln for ln in result.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    return json.loads(lines[0])


def _device(gw, name):
    cs = gw.add_device(name)
    dev = MqttDevice.from_connection_string(gw, cs)
    assert dev.connect() == 0
    return cs, dev


# --- --json: one shape, errors included -------------------------------------------------------

def test_every_hub_command_speaks_json_with_one_shape(gateway):
    data = str(gateway.data)
    added = _json(_run("device", "add", "json-dev", "--json", "--data", data))
    assert added["status"] == 200 and connstr.parse(added["connection_string"]).device_id == "json-dev"
    dev = MqttDevice.from_connection_string(gateway, added["connection_string"])
    assert dev.connect() == 0
    try:
        assert dev.subscribe(topics.c2d_filter("json-dev")) == 1
        listed = _json(_run("device", "list", "--json", "--data", data))
        assert {"device": "json-dev", "module": None}.items() <= listed["devices"][-1].items()
        assert "key" not in json.dumps(listed["devices"])  # no key in a listing
        shown = _json(_run("device", "show", "json-dev", "--json", "--data", data))
        assert shown["auth"] == "sas" and "connection_string" not in shown
        assert _json(_run("update-twin", "json-dev", '{"rate": 3}', "--json", "--data", data)) == \
            {"status": 200, "version": 2}
        twin = _json(_run("twin", "json-dev", "--json", "--data", data))
        assert twin["status"] == 200 and twin["twin"]["desired"] == {"rate": 3, "$version": 2}
        sent = _json(_run("send-c2d", "json-dev", "hi", "--wait", "10", "--json", "--data", data))
        assert sent["status"] == 200 and sent["state"] == "delivered" and sent["delivered"] is True and sent["mid"]
        assert _json(_run("c2d-state", "json-dev", sent["mid"], "--json", "--data", data)) == \
            {"status": 200, "mid": sent["mid"], "state": "delivered"}
        status = _json(_run("status", "--json", "--data", data))
        assert "json-dev" in [c["client_id"] for c in status["connections"]]

        # Errors: the same object with "status" and "error", exit 1, nothing else on stdout.
        offline = _json(_run("invoke-method", "json-dev", "reboot", "--timeout", "1", "--json", "--data", data), 1)
        assert offline["status"] == 404 and "$iothub/methods/POST/#" in offline["error"]
        assert _json(_run("twin", "nobody", "--json", "--data", data), 1)["status"] == 404
        assert _json(_run("device", "show", "nobody", "--json", "--data", data), 1)["status"] == 404
        bad = _json(_run("update-twin", "json-dev", "[1", "--json", "--data", data), 1)
        assert bad["status"] == 400 and "not JSON" in bad["error"]
        bad = _json(_run("send-c2d", "json-dev", "x", "--prop", "novalue", "--json", "--data", data), 1)
        assert bad["status"] == 400 and "k=v" in bad["error"]
    finally:
        dev.close()


def test_json_errors_when_no_gateway_runs(tmp_path):
    down = _json(_run("invoke-method", "d", "m", "--json", "--data", str(tmp_path)), 1)
    assert down["status"] == 503 and "no gateway is running" in down["error"]
    assert _json(_run("status", "--json", "--data", str(tmp_path)), 1)["status"] == 503


# --- telemetry for scripts ----------------------------------------------------------------------

def _lines(result):
    return [json.loads(ln) for ln in result.stdout.splitlines() if ln.strip()]


def test_telemetry_filters_by_device_and_since_with_the_decoded_body(gateway):
    data = str(gateway.data)
    _, a = _device(gateway, "tel-a")
    _, b = _device(gateway, "tel-b")
    try:
        a.publish(topics.telemetry("tel-a"), b"old")
        time.sleep(0.05)  # the records' times have milliseconds: keep "since" strictly between them
        since = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        time.sleep(0.05)
        a.publish(topics.telemetry("tel-a", properties={"$.ct": "application/json"}), b'{"t": 21.5}')
        b.publish(topics.telemetry("tel-b"), b"from b")
        a.publish(topics.telemetry("tel-a"), b"plain text")
    finally:
        a.close()
        b.close()
    got = _lines(_run("telemetry", "--device", "tel-a", "--since", since, "--data", data))
    assert [r["payload"] for r in got] == [{"t": 21.5}, "plain text"]
    assert got[0]["body"] == '{"t": 21.5}' and got[0]["properties"]["$.ct"] == "application/json"
    assert [r["body"] for r in _lines(_run("telemetry", "--device", "tel-b", "--data", data))] == ["from b"]
    assert len(_lines(_run("telemetry", "--device", "tel-a", "--since", "1h", "--data", data))) == 3
    bad = _json(_run("telemetry", "--since", "yesterday", "--json", "--data", data), 1)
    assert bad["status"] == 400 and "--since" in bad["error"]


def test_telemetry_wait_returns_on_the_first_message_and_fails_on_none(gateway):
    data = str(gateway.data)
    _, dev = _device(gateway, "tel-wait")
    try:
        none = _json(_run("telemetry", "--device", "tel-wait", "--wait", "0.5", "--json", "--data", data), 1)
        assert none["status"] == 504 and "no telemetry from tel-wait" in none["error"]

        later = threading.Timer(1.0, lambda: dev.publish(topics.telemetry("tel-wait"), b'{"n": 1}'))
        later.start()
        t0 = time.monotonic()
        got = _lines(_run("telemetry", "--device", "tel-wait", "--since", "0s", "--wait", "60", "--data", data))
        later.join()
        assert [r["payload"] for r in got] == [{"n": 1}]
        assert time.monotonic() - t0 < 30  # returned on the message, not at the end of --wait

        def burst():
            for n in (2, 3):
                time.sleep(0.3)
                dev.publish(topics.telemetry("tel-wait"), json.dumps({"n": n}).encode())
        sender = threading.Thread(target=burst)
        sender.start()
        got = _lines(_run("telemetry", "--device", "tel-wait", "--since", "0s", "--follow", "--wait", "2.5",
                          "--data", data))
        sender.join()
        assert [r["payload"] for r in got] == [{"n": 2}, {"n": 3}]
    finally:
        dev.close()


# --- C2D system properties ------------------------------------------------------------------------

def test_send_c2d_puts_system_properties_on_the_device_bound_topic(gateway):
    data = str(gateway.data)
    _, dev = _device(gateway, "c2d-sys")
    try:
        assert dev.subscribe(topics.c2d_filter("c2d-sys")) == 1
        sent = _json(_run("send-c2d", "c2d-sys", '{"on": true}', "--message-id", "m-1", "--correlation-id", "c-9",
                          "--content-type", "application/json", "--content-encoding", "utf-8",
                          "--expiry", "600", "--prop", "k=v", "--wait", "10", "--json", "--data", data))
        assert sent == {"status": 200, "mid": "m-1", "state": "delivered", "delivered": True}
        topic, body = dev.next_message(prefix="devices/c2d-sys/messages/devicebound/")
        props = topics.parse_c2d(topic)
        assert body == b'{"on": true}'
        assert (props["$.mid"], props["$.cid"], props["$.ct"], props["$.ce"], props["k"]) == \
            ("m-1", "c-9", "application/json", "utf-8", "v")
        exp = datetime.datetime.fromisoformat(props["$.exp"].replace("Z", "+00:00"))
        left = exp - datetime.datetime.now(datetime.timezone.utc)
        assert datetime.timedelta(seconds=590) < left <= datetime.timedelta(seconds=600)
        assert props["$.to"] == "/devices/c2d-sys/messages/devicebound"

        past = _json(_run("send-c2d", "c2d-sys", "x", "--expiry", "2020-01-01T00:00:00Z", "--json",
                          "--data", data), 1)
        assert past["status"] == 400 and "already past" in past["error"]
        worse = _json(_run("send-c2d", "c2d-sys", "x", "--expiry", "tomorrow", "--json", "--data", data), 1)
        assert worse["status"] == 400 and "ISO 8601" in worse["error"]
    finally:
        dev.close()


def test_an_expired_c2d_message_is_not_delivered(gateway):
    data = str(gateway.data)
    _, dev = _device(gateway, "c2d-exp")
    try:  # not subscribed yet: both messages wait in the queue
        assert _json(_run("send-c2d", "c2d-exp", "stale", "--expiry", "1", "--json", "--data", data))["delivered"] is False
        assert _json(_run("send-c2d", "c2d-exp", "fresh", "--json", "--data", data))["delivered"] is False
        time.sleep(1.2)
        assert dev.subscribe(topics.c2d_filter("c2d-exp")) == 1
        _, body = dev.next_message(prefix="devices/c2d-exp/messages/devicebound/")
        assert body == b"fresh"
        wait_for(lambda: "c2d-exp" not in json.loads((gateway.data / store.C2D).read_text()), 10,
                 "the queue to empty (the stale message dropped, the fresh one acknowledged)")
        with pytest.raises(AssertionError, match="no message"):
            dev.next_message(timeout=0.5, prefix="devices/c2d-exp/messages/devicebound/")
    finally:
        dev.close()


# --- device show / --force ------------------------------------------------------------------------

def test_device_add_again_says_how_to_show_or_force(gateway):
    data = str(gateway.data)
    first = _run("device", "add", "again", "--data", data).stdout.strip().splitlines()[-1]
    registry.add_device(gateway.data, "again", module_id="m1")
    before = (gateway.data / registry.REGISTRY).read_bytes()
    again = _run("device", "add", "again", "--data", data)
    assert again.exit_code == 1
    [line] = [ln for ln in again.output.splitlines() if ln.strip()]
    assert line.startswith("error: 'again' already exists") and "--force" in line
    assert f"edgekit gateway device show again --connection-string --data {data}" in line
    assert (gateway.data / registry.REGISTRY).read_bytes() == before  # nothing written

    shown = _run("device", "show", "again", "--connection-string", "--data", data)
    assert shown.exit_code == 0 and shown.stdout.strip() == first
    dev = MqttDevice.from_connection_string(gateway, first)
    assert dev.connect() == 0
    dev.close()

    forced = _run("device", "add", "again", "--force", "--data", data).stdout.strip().splitlines()[-1]
    assert connstr.parse(forced).shared_access_key != connstr.parse(first).shared_access_key
    assert MqttDevice.from_connection_string(gateway, first).connect() == 5  # the old key is gone
    dev = MqttDevice.from_connection_string(gateway, forced)
    assert dev.connect() == 0
    dev.close()
    assert [r["module"] for r in registry.list_devices(gateway.data) if r["device"] == "again"] == [None, "m1"]


# --- owner-only state, under an ignored folder --------------------------------------------------

def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_control_token_and_registry_are_owner_only(gateway):
    assert _mode(gateway.data) == 0o700
    assert _mode(gateway.data / control.TOKEN) == 0o600
    assert _mode(gateway.data / registry.REGISTRY) == 0o600
    assert _mode(gateway.data / store.TELEMETRY) == 0o600


def test_default_data_folder_is_under_git_ignored_edgekit(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEKIT_GATEWAY_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    # A process of its own without $EDGEKIT_HOME (conftest sets one for this process, read when
    # edgekit is imported): the default is the working folder's.
    env = {k: v for k, v in os.environ.items() if k != "EDGEKIT_HOME"}
    result = subprocess.run([sys.executable, "-m", "edgekit", "gateway", "device", "add", "home",
                             "--gateway-host", "gw.local"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    data = tmp_path / ".edgekit" / "gateway"
    assert _mode(data) == 0o700 and _mode(data / registry.REGISTRY) == 0o600
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    noted = _run("device", "add", "d2", "--gateway-host", "gw.local", "--data", str(shared))
    assert f"note: {shared} is open to other users (mode 755); 'chmod 700 {shared}'" in noted.output
    assert _mode(shared / registry.REGISTRY) == 0o600
    ignored = subprocess.run(["git", "check-ignore", "-q", ".edgekit/gateway/registry.json"], cwd=ROOT)
    assert ignored.returncode == 0, ".gitignore does not cover .edgekit/gateway/"


# --- serve --listen, --detach, stop ----------------------------------------------------------------

def _edgekit(*args, timeout=90):
    return subprocess.run([sys.executable, "-m", "edgekit", "gateway", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from edgekit.certs.demo import make_demo_pki
    return make_demo_pki(tmp_path_factory.mktemp("hubpki") / "pki", "localhost")


def test_serve_detach_on_a_free_port_then_stop(pki, tmp_path):
    data = str(tmp_path / "gw")
    up = _edgekit("serve", "--pki", pki.outdir, "--hostname", "localhost", "--listen", "127.0.0.1:0", "--detach",
                  "--max-clients", "7", "--data", data)
    assert up.returncode == 0, up.stdout + up.stderr
    info = json.loads((tmp_path / "gw" / "gateway.json").read_text())
    port, pid = info["mqtt_port"], info["pid"]
    try:
        assert port > 0 and f"gateway ready on localhost:{port}" in up.stdout and f"pid {pid}" in up.stdout
        assert f"edgekit gateway stop --data {data}" in up.stdout
        child = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert child[child.index(b"--max-clients") + 1] == b"7"  # the other options reach it too
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # it listens where it says
        cs = _run("device", "add", "det", "--data", data).stdout.strip().splitlines()[-1]
        assert cs.endswith("GatewayHostName=localhost")

        again = _edgekit("serve", "--pki", pki.outdir, "--hostname", "localhost", "--listen", "0", "--detach",
                         "--data", data)
        assert again.returncode == 1 and f"a gateway (pid {pid}) already serves" in again.stderr
    finally:
        down = _edgekit("stop", "--data", data)
    assert down.returncode == 0 and down.stdout.strip() == f"gateway stopped (pid {pid})", down.stdout + down.stderr
    assert not _alive(pid) and not (tmp_path / "gw" / "gateway.json").exists()
    assert _edgekit("stop", "--data", data).stdout.strip() == "gateway was not running"


def test_a_taken_port_fails_loudly_also_detached(pki, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for extra in (["--detach"], []):
            r = _edgekit("serve", "--pki", pki.outdir, "--hostname", "localhost", "--listen", str(port), *extra,
                         "--data", str(tmp_path / "gw"))
            lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
            assert r.returncode == 1 and len(lines) == 1, r.stdout + r.stderr
            assert lines[0].startswith(f"error: cannot listen on 127.0.0.1:{port}")
        old = _edgekit("serve", "--pki", pki.outdir, "--hostname", "localhost", "--port", str(port),
                       "--data", str(tmp_path / "gw"))
        notice, error = [ln for ln in old.stderr.splitlines() if ln.strip()]
        assert notice == f"note: --bind/--port are deprecated and go in the next release; use --listen 127.0.0.1:{port}"
        assert old.returncode == 1 and error.startswith(f"error: cannot listen on 127.0.0.1:{port}")


@pytest.mark.parametrize("listen", ["host:", "99999", "a:b:c", ":80"])
def test_bad_listen_gets_one_line(listen, tmp_path):
    r = _run("serve", "--pki", str(tmp_path), "--hostname", "localhost", "--listen", listen,
             "--data", str(tmp_path / "d"))
    assert r.exit_code == 1 and r.output.strip().startswith("error: --listen") and "[HOST:]PORT" in r.output


# --- durable store ----------------------------------------------------------------------------------

_FULL_DISK_WORKER = r"""
import asyncio, json, resource, signal, sys
from edgekit.gateway import store
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
data, limit, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = store.Store(data)
_, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
acked, failed = [], 0
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))  # the disk is full at `limit` bytes
for n in range(200):
    record = {"device": "d", "n": n, "body": "x" * 37}
    try:
        if mode == "async":
            asyncio.run(s.add_telemetry_async(record))
        else:
            s.add_telemetry(record)
        acked.append(n)
    except store.StoreError:
        failed += 1
    if failed == 3:
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # space again
s.close()
print(json.dumps({"acked": acked, "failed": failed}))
"""


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_full_disk_never_glues_the_next_record_onto_a_torn_one(tmp_path, mode):
    out = subprocess.run([sys.executable, "-c", _FULL_DISK_WORKER, str(tmp_path), "1000", mode],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["failed"] == 3 and len(result["acked"]) == 197
    readable = [r["n"] for r in store.read_telemetry(tmp_path)]
    assert readable == result["acked"]  # every acknowledged record, and only those
    raw = (tmp_path / store.TELEMETRY).read_bytes()
    assert raw.endswith(b"\n") and raw.count(b"\n") == len(readable)


def test_group_commit_shares_fsyncs_and_loses_nothing(tmp_path):
    s = store.Store(tmp_path)

    async def burst():
        await asyncio.gather(*(s.add_telemetry_async({"device": "d", "n": n}) for n in range(200)))
    asyncio.run(burst())
    s.close()
    assert [r["n"] for r in store.read_telemetry(tmp_path)] == list(range(200))
    assert 1 <= s.syncs < 200  # concurrent records shared their fsyncs


def test_a_torn_line_left_before_a_restart_is_cut_back(tmp_path):
    gw = GatewayProcess(tmp_path, devices=())
    cs = gw.add_device("torn")
    gw.start()
    dev = MqttDevice.from_connection_string(gw, cs)
    assert dev.connect() == 0
    dev.publish(topics.telemetry("torn"), b"one")
    dev.close()
    assert gw.stop() == 0
    path = gw.data / store.TELEMETRY
    with open(path, "ab") as f:
        f.write(b'{"device": "torn", "body": "half')  # a crash mid-write
    gw.start()
    try:
        dev = MqttDevice.from_connection_string(gw, cs)
        assert dev.connect() == 0
        for body in (b"two", b"three"):
            dev.publish(topics.telemetry("torn"), body)  # PUBACK: stored
        dev.close()
        assert [r["body"] for r in hub.read_telemetry(gw.data)] == ["one", "two", "three"]
        assert b"half" not in path.read_bytes()
    finally:
        assert gw.stop() == 0, gw.output()


# --- bounded control channel -----------------------------------------------------------------------

def test_idle_control_connections_are_bounded_in_count_and_time(gateway):
    port = gateway.control_port
    t0 = time.monotonic()
    idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(200)]
    try:
        # Past MAX_WAITING, the connections that waited longest are closed to make room.
        for s in idle[:200 - control.MAX_WAITING]:
            assert s.recv(1) == b""
        assert hub.status(gateway.data) is not None  # a real request is read meanwhile
        # The rest said nothing: closed once their time to send a request is up.
        for s in idle[200 - control.MAX_WAITING:]:
            assert s.recv(1) == b""
        assert time.monotonic() - t0 > control.REQUEST_SECONDS - 1  # each had its time to send a request
    finally:
        for s in idle:
            s.close()
    assert hub.status(gateway.data) is not None  # a real request goes through again


def test_serve_on_a_full_disk_acknowledges_only_what_it_stored(tmp_path):
    gw = GatewayProcess(tmp_path, devices=())
    gw.log = Path(os.devnull)  # only telemetry.jsonl meets the size limit below
    cs = gw.add_device("full")
    gw.start()
    try:
        dev = MqttDevice.from_connection_string(gw, cs)
        assert dev.connect() == 0
        dev.publish(topics.telemetry("full"), b"m0")
        acked = ["m0"]
        _, hard = resource.prlimit(gw.proc.pid, resource.RLIMIT_FSIZE)
        size = (gw.data / store.TELEMETRY).stat().st_size
        resource.prlimit(gw.proc.pid, resource.RLIMIT_FSIZE, (2 * size + size // 2, hard))  # full soon
        for n in range(1, 20):
            try:
                dev.publish(topics.telemetry("full"), f"m{n}".encode(), timeout=3)
            except AssertionError:
                break  # no PUBACK: not stored
            acked.append(f"m{n}")
        assert 1 < len(acked) < 20
        resource.prlimit(gw.proc.pid, resource.RLIMIT_FSIZE, (hard, hard))  # space again
        dev.client.loop_stop()
        again = MqttDevice.from_connection_string(gw, cs)
        assert again.connect() == 0
        for body in ("after1", "after2"):
            again.publish(topics.telemetry("full"), body.encode())
            acked.append(body)
        again.close()
        assert [r["body"] for r in hub.read_telemetry(gw.data)] == acked
    finally:
        gw.stop()
