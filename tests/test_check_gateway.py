"""`edgekit check` against the edgeHub emulator (`edgekit gateway serve`): real TLS, real MQTT logins."""
import json
import subprocess

import pytest
from click.testing import CliRunner

from gateway_helpers import GatewayProcess, gateway  # noqa: F401  (module-scoped fixture)
from edgekit import check
from edgekit.cli import main


def run(gw, cs, **kw):
    return check.run_check(f"{gw.hostname}:{gw.port}", gw.ca, cs, **kw)


def test_sas_device_passes_every_step(gateway):  # noqa: F811
    cs = gateway.add_device("chk-sas")
    r = CliRunner().invoke(main, ["check", f"localhost:{gateway.port}", "--ca", gateway.ca,
                                  "--connection-string", cs, "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    steps = {s["name"]: s for s in rep["steps"]}
    assert [s["name"] for s in rep["steps"]] == ["dns", "tcp", "ports", "tls", "profile", "mqtt"]
    # Like IoT Edge, the emulator serves server, edge CA, intermediate and root.
    assert len(steps["tls"]["data"]["chain"]) == 4
    assert steps["tls"]["summary"].startswith("Verification: OK")
    assert steps["mqtt"]["data"]["connack"] == 0
    assert cs.split("SharedAccessKey=")[1].split(";")[0] not in r.output


def test_emulator_chain_verdict_matches_openssl(gateway):  # noqa: F811
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{gateway.port}", "-servername",
                        "localhost", "-CAfile", str(gateway.ca), "-verify_return_error",
                        "-verify_hostname", "localhost"],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    report = check.run_check(f"localhost:{gateway.port}", gateway.ca)
    assert r.returncode == 0 and "Verify return code: 0 (ok)" in r.stdout
    [tls] = [s for s in report.steps if s.name == "tls"]
    assert report.ok and tls.data["verify_code"] == 0


@pytest.mark.parametrize("case", ["wrong key", "no parent", "unregistered"])
def test_refused_sas_logins_get_connack_5_with_causes(gateway, case):  # noqa: F811
    cs = gateway.add_device(f"chk-{case.replace(' ', '-')}", parent=case != "no parent")
    if case == "wrong key":
        good = cs.split("SharedAccessKey=")[1].split(";")[0]
        cs = cs.replace(good, "A" * (len(good) - 1) + "=")
    elif case == "unregistered":
        cs = cs.replace("DeviceId=chk-unregistered", "DeviceId=nobody")
    report = run(gateway, cs)
    mqtt = report.steps[-1]
    assert not report.ok and mqtt.name == "mqtt" and mqtt.data["connack"] == 5
    assert "no parent" in mqtt.fixes[0] and any("wrong key" in f for f in mqtt.fixes)


def test_hub_name_replaced_by_gateway_name_is_accepted_as_by_edgehub(gateway):  # noqa: F811
    # The classic mix-up: HostName set to the gateway; username and audience then name the gateway.
    # edgeHub takes a SAS audience naming itself and never checks the username's hub segment
    # (DeviceScopeTokenAuthenticator.ValidateAudience, MqttUsernameParser), so it connects;
    # the emulator logs that IoT Hub itself would refuse it.
    cs = gateway.add_device("chk-hub")
    hub = cs.split("HostName=")[1].split(";")[0]
    report = run(gateway, cs.replace(f"HostName={hub}", "HostName=localhost"))
    mqtt = report.steps[-1]
    assert mqtt.data["connack"] == 0 and mqtt.data["username"].startswith("localhost/chk-hub/")
    assert "chk-hub: username names hub 'localhost'" in gateway.output()


def test_x509_ca_signed_device(gateway):  # noqa: F811
    cs = gateway.add_device("x509-a", x509_ca=True)
    dev = gateway.pki.devices["x509-a"]
    report = run(gateway, cs, cert=dev.chain, key=dev.key)
    assert report.ok, check.render_text(report)
    assert report.steps[-1].data["auth"] == "x509"


def test_x509_thumbprint_device(gateway):  # noqa: F811
    dev = gateway.pki.devices["x509-b"]
    cs = gateway.add_device("x509-b", x509_thumbprint=dev.thumbprint_sha1)
    assert run(gateway, cs, cert=dev.selfsigned_cert, key=dev.selfsigned_key).ok


@pytest.fixture(scope="module")
def gateway16(tmp_path_factory, gateway):  # noqa: F811
    gw = GatewayProcess(tmp_path_factory.mktemp("gw16"), pki=gateway.pki, extra=["--edgehub", "1.6"]).start()
    yield gw
    assert gw.stop() == 0, gw.output()


def test_check_names_the_tls_profile_of_an_edgehub_14_gateway(gateway):  # noqa: F811
    r = CliRunner().invoke(main, ["check", f"localhost:{gateway.port}", "--ca", gateway.ca])
    assert r.exit_code == 0, r.output
    assert "[info] TLS profile: TLS 1.2 only: looks like IoT Edge 1.4 (end of life 2024-11-12)" in r.output
    assert "TLS 1.3: refused" in r.output and "other TLS 1.2 suites accepted: none, as edgeHub" in r.output


def test_check_names_15_and_16_together_and_says_why_in_json(gateway16):
    r = CliRunner().invoke(main, ["check", f"localhost:{gateway16.port}", "--ca", gateway16.ca, "--json"])
    assert r.exit_code == 0, r.output
    [profile] = [s for s in json.loads(r.stdout)["steps"] if s["name"] == "profile"]
    assert profile["status"] == "info" and profile["data"]["profile"] == "1.5/1.6"
    assert profile["data"]["tls_versions"] == {"1.2": "accepted", "1.3": "accepted"}
    assert set(profile["data"]["tls12_dotnet_suites"].values()) == {"accepted"}
    assert set(profile["data"]["tls12_other_suites"].values()) == {"refused"}
    assert profile["data"]["dotnet_defaults"] is True
    assert "cannot tell them apart" in profile["summary"]
