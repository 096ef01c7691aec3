"""`bundle` and `certs demo` say what to do on the IoT Edge box: az commands, config.toml, files, ports."""
from click.testing import CliRunner

from edgekit.cli import main

KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="


def _box_lines(output):
    return output[output.index("On the IoT Edge box"):]


def test_certs_demo_and_bundle_print_the_gateway_side(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    demo = CliRunner().invoke(main, ["certs", "demo", "pki", "--gateway-host", "gw.example.com", "--device", "dev1"])
    assert demo.exit_code == 0, demo.output
    box = _box_lines(demo.output)
    for line in ('hostname = "gw.example.com"',
                 'trust_bundle_cert = "file:///var/aziot/certs/azure-iot-test-only.root.ca.cert.pem"',
                 "[edge_ca]", 'cert = "file:///var/aziot/certs/iot-edge-device-ca-gateway-full-chain.cert.pem"',
                 'pk = "file:///var/aziot/secrets/iot-edge-device-ca-gateway.key.pem"',
                 "pki/private/iot-edge-device-ca-gateway.key.pem /var/aziot/secrets/",
                 "--edge-enabled", "8883", "443", "5671", "parent set"):
        assert line in box, line
    cs = f"HostName=myhub.azure-devices.net;DeviceId=dev1;SharedAccessKey={KEY};GatewayHostName=gw.example.com"
    out = CliRunner().invoke(main, ["bundle", "dev1", "-c", cs, "--ca", "pki/certs/azure-iot-test-only.root.ca.cert.pem",
                                    "--no-wifi", "--gateway-device-id", "gw1"])
    assert out.exit_code == 0, out.output
    box = _box_lines(out.output)
    assert "az iot hub device-identity create -n myhub -d gw1 --edge-enabled" in box
    assert "az iot hub device-identity parent set -n myhub -d <device-id> --pd gw1" in box
    assert 'hostname = "gw.example.com"' in box and "trust_bundle_cert" in box and "8883" in box
    assert KEY[:8] not in out.output
