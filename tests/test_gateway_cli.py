"""The gateway's registry, CONNECT rules and CLI: bad input gets one line, and nothing half-written."""
import base64
import json
import os
import socket
import subprocess

import pytest
from click.testing import CliRunner

from gateway_helpers import MqttDevice, gateway  # noqa: F401  (gateway is a fixture)
from edgekit.cli import main
from edgekit.certs.demo import make_demo_pki
from edgekit.gateway import auth, registry
from azure_edge import connstr, sas, topics  # noqa: E402  (conftest puts firmware/ on sys.path)

HUB = registry.DEFAULT_HUB


def _run(*args):
    result = CliRunner().invoke(main, ["gateway", *args])
    assert "Traceback" not in result.output, result.output
    return result


def _one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


# --- registry ----------------------------------------------------------------------------------

def test_add_device_makes_a_fresh_key_and_a_gateway_connection_string(tmp_path):
    cs = registry.add_device(tmp_path, "dev-1", gateway_host="gw.example.com")
    c = connstr.parse(cs)
    assert (c.host_name, c.device_id, c.gateway_host_name) == (HUB, "dev-1", "gw.example.com")
    assert len(base64.b64decode(c.shared_access_key)) == 32
    other = connstr.parse(registry.add_device(tmp_path, "dev-2", gateway_host="gw.example.com"))
    assert other.shared_access_key != c.shared_access_key
    assert os.stat(tmp_path / "registry.json").st_mode & 0o777 == 0o600


def test_gateway_host_defaults_to_the_name_serve_recorded(tmp_path):
    assert "GatewayHostName" not in registry.add_device(tmp_path, "early")
    registry.set_gateway_host(tmp_path, "edge.local")
    assert registry.add_device(tmp_path, "late").endswith(";GatewayHostName=edge.local")


def test_x509_identities_and_thumbprint_forms(tmp_path):
    sha1 = "ab:cd:" + "0" * 36
    cs = registry.add_device(tmp_path, "thumb", x509_thumbprint=sha1)
    assert "x509=true" in cs and "SharedAccessKey" not in cs
    [row] = registry.list_devices(tmp_path)
    assert row["auth"] == registry.AUTH_THUMBPRINT and row["thumbprint"] == "ABCD" + "0" * 36
    assert "key" not in row
    with pytest.raises(registry.RegistryError, match="SHA-1 .* or SHA-256"):
        registry.add_device(tmp_path, "bad-thumb", x509_thumbprint="1234")
    with pytest.raises(registry.RegistryError, match="choose one"):
        registry.add_device(tmp_path, "both", x509_thumbprint=sha1, x509_ca=True)


def test_modules_devices_and_removal(tmp_path):
    cs = registry.add_device(tmp_path, "host", module_id="m1")
    assert connstr.parse(cs).module_id == "m1"
    names = [(r["device"], r["module"]) for r in registry.list_devices(tmp_path)]
    assert names == [("host", None), ("host", "m1")]
    with pytest.raises(registry.RegistryError, match="already exists"):
        registry.add_device(tmp_path, "host", module_id="m1")
    registry.remove_device(tmp_path, "host", "m1")
    assert [r["module"] for r in registry.list_devices(tmp_path)] == [None]
    registry.remove_device(tmp_path, "host")
    assert registry.list_devices(tmp_path) == []
    with pytest.raises(registry.RegistryError, match="no device 'host'"):
        registry.remove_device(tmp_path, "host")


def test_bad_ids_write_nothing(tmp_path):
    with pytest.raises(registry.RegistryError, match="DeviceId"):
        registry.add_device(tmp_path, "has space")
    assert not (tmp_path / "registry.json").exists()
    registry.add_device(tmp_path, "ok")
    before = (tmp_path / "registry.json").read_bytes()
    with pytest.raises(registry.RegistryError, match="already exists"):
        registry.add_device(tmp_path, "ok")
    assert (tmp_path / "registry.json").read_bytes() == before


# --- CONNECT rules, without the network ---------------------------------------------------------

def _doc(tmp_path, **kwargs):
    cs = registry.add_device(tmp_path, "d", **kwargs)
    return registry.load(tmp_path), cs


def test_check_connect_accepts_a_good_token_and_names_each_failure(tmp_path):
    doc, cs = _doc(tmp_path)
    key = connstr.parse(cs).shared_access_key
    now = 1_700_000_000
    user = topics.username(HUB, "d")
    good = sas.generate(sas.resource_uri(HUB, "d"), key, now + 60)
    verdict = auth.check_connect(doc, "d", user, good, None, now)
    assert verdict.ok and verdict.identity.client_id == "d" and verdict.method == "sas"
    assert auth.check_connect(doc, "d", user, good, None, now + 61).code == 5  # expired
    assert "expired" in auth.check_connect(doc, "d", user, good, None, now + 61).reason
    assert auth.check_connect(doc, "nobody", topics.username(HUB, "nobody"), good, None, now).code == 5
    assert auth.check_connect(doc, "d", user, None, None, now).code == 5
    assert auth.check_connect(doc, "d", user, "garbage", None, now).code == 5  # edgeHub: any bad token is 5
    assert auth.check_connect(doc, "d", HUB + "/d", good, None, now).code == 3  # parser exception -> 3
    assert auth.check_connect(doc, "", user, good, None, now).code == 2
    assert key not in repr(verdict) and key not in auth.check_connect(doc, "d", user, "x", None, now).reason


def test_topic_rules(tmp_path):
    _doc(tmp_path)
    registry.add_device(tmp_path, "d", module_id="m")
    doc = registry.load(tmp_path)
    dev, mod = registry.lookup(doc, "d"), registry.lookup(doc, "d", "m")
    assert auth.may_publish(dev, "devices/d/messages/events/a=1")
    assert not auth.may_publish(dev, "devices/d2/messages/events/")
    assert not auth.may_publish(dev, "devices/d/modules/m/messages/events/")
    assert auth.may_publish(mod, "devices/d/modules/m/messages/events/")
    assert auth.may_publish(dev, "$iothub/twin/GET/?$rid=1")
    assert not auth.may_publish(dev, "$iothub/twin/res/200/?$rid=1")
    assert auth.may_subscribe(dev, "devices/d/messages/devicebound/#")
    assert not auth.may_subscribe(mod, "devices/d/messages/devicebound/#")  # no C2D for modules
    assert not auth.may_subscribe(dev, "#")


# --- CLI --------------------------------------------------------------------------------------

def test_cli_device_add_prints_the_connection_string_last(tmp_path):
    result = _run("device", "add", "cli-dev", "--gateway-host", "gw.local", "--data", str(tmp_path))
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    assert connstr.parse(last).gateway_host_name == "gw.local"
    listed = _run("device", "list", "--data", str(tmp_path))
    assert "cli-dev\tsas\tparent" in listed.output
    assert connstr.parse(last).shared_access_key not in listed.output


@pytest.mark.parametrize("args, fragment", [
    (["device", "add", "bad id"], "DeviceId contains ' '"),
    (["device", "add", "d", "--x509-thumbprint", "zz"], "SHA-1 (40 hex digits)"),
    (["device", "add", "d", "--module", "m", "--x509-ca"], "symmetric keys only"),
    (["device", "remove", "nope"], "no device 'nope'"),
    (["send-c2d", "d", "hello"], "no gateway is running for"),
    (["invoke-method", "d", "reboot", "--payload", "{oops"], "--payload is not JSON"),
    (["update-twin", "d", "[1"], "the patch is not JSON"),
])
def test_cli_bad_input_gets_one_line(tmp_path, args, fragment):
    _one_line_error(_run(*args, "--data", str(tmp_path / "data")), fragment)
    assert not (tmp_path / "data" / "registry.json").exists()


def test_cli_serve_refuses_what_it_cannot_serve(tmp_path):
    (tmp_path / "empty").mkdir()
    data = str(tmp_path / "data")
    _one_line_error(_run("serve", "--pki", str(tmp_path / "empty"), "--hostname", "localhost", "--data", data),
                    "has no certs/azure-iot-test-only.root.ca.cert.pem")
    pki = make_demo_pki(tmp_path / "pki", "localhost")
    _one_line_error(_run("serve", "--pki", pki.outdir, "--hostname", "not a host!", "--data", data),
                    "is not a host name")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        _one_line_error(_run("serve", "--pki", pki.outdir, "--hostname", "localhost", "--listen", str(port),
                             "--data", data), f"cannot listen on 127.0.0.1:{port}")
    assert not (tmp_path / "data" / "gateway.json").exists()
    other = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / "data" / "gateway.json").write_text(json.dumps({"pid": other.pid}))
        _one_line_error(_run("serve", "--pki", pki.outdir, "--hostname", "localhost", "--listen", "0",
                             "--data", data), f"a gateway (pid {other.pid}) already serves")
    finally:
        other.kill()
        other.wait()


def test_cli_hub_commands_against_a_running_gateway(gateway):
    data = str(gateway.data)
    cs = _run("device", "add", "cli-live", "--data", data).output.strip().splitlines()[-1]
    assert cs.endswith(";GatewayHostName=localhost")
    dev = MqttDevice.from_connection_string(gateway, cs)
    assert dev.connect() == 0
    dev.publish(topics.telemetry("cli-live", properties={"k": "v"}), b"hello cli")
    assert dev.subscribe(topics.c2d_filter("cli-live")) == 1
    lines = _run("telemetry", "--data", data).output.strip().splitlines()
    assert {"device": "cli-live", "body": "hello cli"}.items() <= json.loads(lines[-1]).items()

    sent = _run("send-c2d", "cli-live", "ping", "--prop", "a=b", "--wait", "10", "--data", data)
    assert sent.exit_code == 0 and sent.output.startswith("delivered ")
    topic, body = dev.next_message(prefix="devices/cli-live/messages/devicebound/")
    assert body == b"ping" and topics.parse_c2d(topic)["a"] == "b"

    assert _run("update-twin", "cli-live", '{"rate": 2}', "--data", data).output.strip() == "desired $version 2"
    twin = json.loads(_run("twin", "cli-live", "--data", data).output)
    assert twin["desired"] == {"rate": 2, "$version": 2}
    assert "cli-live\tsas" in _run("status", "--data", data).output

    _one_line_error(_run("invoke-method", "cli-live", "reboot", "--timeout", "1", "--data", data),
                    "has not subscribed to $iothub/methods/POST/#", "404")
    dev.close()
