"""edgekit bundle: the files docs/bundle.md promises, per runtime, read back by the real firmware reader."""
import base64
import json
import os
import pty
import select
import ssl
import stat
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edgekit.boards import load_board
from edgekit.bundle import BundleError, azure_commands, make_bundle, make_fleet, plan_bundle, write_bundle
from edgekit.certs.demo import make_demo_pki
from edgekit.cli import main

KEY = base64.b64encode(b"edgekit-test-device-key-32-bytes").decode()
GW = "gw.example.local"


def sas_cs(device, gateway=True):
    return (f"HostName=myhub.azure-devices.net;DeviceId={device};SharedAccessKey={KEY}"
            + (f";GatewayHostName={GW}" if gateway else ""))


def x509_cs(device):
    return f"HostName=myhub.azure-devices.net;DeviceId={device};x509=true;GatewayHostName={GW}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_demo_pki(tmp_path_factory.mktemp("pki"), GW, devices=["dev1", "dev2", "dev3"])


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def listing(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_micropython_sas_bundle(tmp_path, pki):
    folder, b = make_bundle("dev1", sas_cs("dev1"), pki.root_cert, out_dir=tmp_path, wifi_ssid="net",
                            wifi_password="pw", interval=5)
    assert folder == tmp_path / "dev1" and listing(tmp_path) == ["dev1"]  # no temp folder left
    assert listing(folder) == ["ca.der", "config.json"]
    assert (mode(folder), mode(folder / "config.json"), mode(folder / "ca.der")) == (0o700, 0o600, 0o644)
    root = x509.load_pem_x509_certificate(open(pki.root_cert, "rb").read())
    assert (folder / "ca.der").read_bytes() == root.public_bytes(serialization.Encoding.DER)
    config = json.loads((folder / "config.json").read_text())
    assert config == {"connection_string": sas_cs("dev1"), "wifi_ssid": "net", "wifi_password": "pw",
                      "ca": "ca.der", "cert": None, "key": None, "port": 8883, "interval": 5, "sas_ttl": 3600,
                      "sas_margin": 120, "keepalive": 60, "outbox_bytes": 65536, "queue_qos0": False,
                      "ntp_host": "pool.ntp.org", "set_aside_after": 3}
    assert b.auth == "shared_private_key" and KEY not in repr(b)
    assert any("test-only" in w for w in b.warnings)


def test_micropython_x509_bundle_is_der_with_the_leaf_and_intermediate(tmp_path, pki):
    dev = pki.devices["dev2"]
    folder, b = make_bundle("dev2", x509_cs("dev2"), pki.root_cert, out_dir=tmp_path, cert=dev.chain, key=dev.key,
                            board=load_board("esp32-devkitc"))
    assert listing(folder) == ["ca.der", "config.json", "device.cert.der", "device.key.der"]
    assert mode(folder / "device.key.der") == 0o600 and mode(folder / "device.cert.der") == 0o644
    # Leaf then intermediate, DER back to back (no root): what a root-only gateway needs.
    blob = (folder / "device.cert.der").read_bytes()
    leaf = x509.load_der_x509_certificate(blob[:4 + int.from_bytes(blob[2:4], "big")])
    inter = x509.load_der_x509_certificate(blob[len(leaf.public_bytes(serialization.Encoding.DER)):])
    assert inter.subject == leaf.issuer and inter.subject != inter.issuer
    key = serialization.load_der_private_key((folder / "device.key.der").read_bytes(), None)
    assert leaf.subject.rfc4514_string() == "CN=dev2"
    assert leaf.public_key().public_numbers() == key.public_key().public_numbers()
    config = json.loads((folder / "config.json").read_text())
    assert (config["cert"], config["key"], config["board"], config["led_pin"]) == \
        ("device.cert.der", "device.key.der", "esp32-devkitc", None)
    assert b.auth == "x509_ca"


def test_circuitpython_bundle_is_pem_with_settings_toml(tmp_path, pki):
    dev = pki.devices["dev3"]
    folder, b = make_bundle("dev3", x509_cs("dev3"), pki.root_cert, out_dir=tmp_path, cert=dev.selfsigned_cert,
                            key=dev.selfsigned_key, runtime="circuitpython", wifi_ssid='my "home" net',
                            wifi_password="p\\w")
    assert listing(folder) == ["ca.pem", "config.json", "device.cert.pem", "device.key.pem", "settings.toml"]
    assert {n: mode(folder / n) for n in listing(folder)} == {
        "ca.pem": 0o644, "config.json": 0o600, "device.cert.pem": 0o644, "device.key.pem": 0o600,
        "settings.toml": 0o600}
    ca_pem = (folder / "ca.pem").read_text()
    assert ca_pem.count("BEGIN CERTIFICATE") == 1 and ca_pem == open(pki.root_cert).read()
    assert (folder / "settings.toml").read_text() == \
        'CIRCUITPY_WIFI_SSID = "my \\"home\\" net"\nCIRCUITPY_WIFI_PASSWORD = "p\\\\w"\n'
    import tomllib
    assert tomllib.loads((folder / "settings.toml").read_text()) == {
        "CIRCUITPY_WIFI_SSID": 'my "home" net', "CIRCUITPY_WIFI_PASSWORD": "p\\w"}
    # The PEM pair and CA load into a real TLS context (what CircuitPython's ssl is handed).
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=ca_pem)
    ctx.load_cert_chain(folder / "device.cert.pem", folder / "device.key.pem")
    config = json.loads((folder / "config.json").read_text())
    assert (config["ca"], config["cert"], config["key"]) == ("ca.pem", "device.cert.pem", "device.key.pem")
    assert b.auth == "x509_thb" and b.thumbprint_sha1 == dev.thumbprint_sha1


READ_BACK = """
import ssl, sys
from azure_edge import bundle
cfg, cs = bundle.load(%r, %r)
chain = False
# CPython's ssl takes DER bytes and PEM text as cadata; MicroPython's mbedTLS is handed
# only MicroPython bundles (CircuitPython's ssl is a different module).
if sys.implementation.name != "micropython" or %r == "micropython":
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=cfg["ca"])
    if sys.implementation.name == "micropython" and cfg["cert"]:
        for cert in cfg["cert"]:  # the leaf, then the intermediate: one DER each
            ctx.load_cert_chain(cert, cfg["key"])
        chain = len(cfg["cert"]) == 2
result = [cs.device_id, cs.x509, cfg["interval"], cfg["cert"] is not None, chain]
"""


@pytest.mark.parametrize("runtime", ["micropython", "circuitpython"])
def test_the_firmware_reads_the_bundle(fw, tmp_path, pki, runtime):
    dev = pki.devices["dev2"]
    folder, _ = make_bundle("dev2", x509_cs("dev2"), pki.root_cert, out_dir=tmp_path, cert=dev.chain, key=dev.key,
                            runtime=runtime, wifi_ssid="n", wifi_password="p", interval=7)
    got = fw.run(READ_BACK % (str(folder), runtime, runtime))
    mbedtls = fw.name == "micropython" and runtime == "micropython"
    assert got == ["dev2", True, 7, True, mbedtls]
    folder, _ = make_bundle("dev1", sas_cs("dev1"), pki.root_cert, out_dir=tmp_path, runtime=runtime)
    assert fw.run(READ_BACK % (str(folder), runtime, runtime)) == ["dev1", False, 10, False, False]


def run_cli(args):
    result = CliRunner().invoke(main, ["bundle"] + args)
    return result.exit_code, result.output


def bad_inputs(pki):
    d1, d2 = pki.devices["dev1"], pki.devices["dev2"]
    ca = ["--ca", pki.root_cert]
    return {
        "no key": (["dev1", "-c", "HostName=myhub.azure-devices.net;DeviceId=dev1"] + ca,
                   "connection string: connection string has neither SharedAccessKey nor x509=true"),
        "bad base64": (["dev1", "-c", sas_cs("dev1").replace(KEY, "not!base64")] + ca, "not valid base64"),
        "other device": (["dev9", "-c", sas_cs("dev1")] + ca, "is for device 'dev1', not 'dev9'"),
        "key as CA": (["dev1", "-c", sas_cs("dev1"), "--ca", d1.key], "private key, not a certificate"),
        "leaf as CA": (["dev1", "-c", sas_cs("dev1"), "--ca", d1.cert], "is not a CA certificate"),
        "chain as CA": (["dev1", "-c", sas_cs("dev1"), "--ca", pki.edge_ca_chain], "holds 3 certificates"),
        "mismatched key": (["dev1", "-c", x509_cs("dev1"), "--cert", d1.cert, "--key", d2.key] + ca,
                           "does not belong to the certificate"),
        "cert of another device": (["dev1", "-c", x509_cs("dev1"), "--cert", d2.cert, "--key", d2.key] + ca,
                                   "has CN 'dev2' but the device is 'dev1'"),
        "x509 without cert": (["dev1", "-c", x509_cs("dev1")] + ca, "x509=true: give the device certificate"),
        "cert with a SAS string": (["dev1", "-c", sas_cs("dev1"), "--cert", d1.cert, "--key", d1.key] + ca,
                                   "only used with an x509=true"),
        "module with x509": (["dev1", "-c", x509_cs("dev1") + ";ModuleId=m1", "--cert", d1.cert, "--key", d1.key]
                             + ca, "modules behind a gateway"),
        "cert without key": (["dev1", "-c", x509_cs("dev1"), "--cert", d1.cert] + ca, "both --cert and --key"),
        "unknown board": (["dev1", "-c", sas_cs("dev1"), "--board", "esp99"] + ca, "unknown board 'esp99'"),
    }


CASES = ["no key", "bad base64", "other device", "key as CA", "leaf as CA", "chain as CA", "mismatched key",
         "cert of another device", "x509 without cert", "cert with a SAS string", "module with x509",
         "cert without key", "unknown board"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, pki, case):
    args, words = bad_inputs(pki)[case]
    out = tmp_path / "bundles"
    code, output = run_cli(args + ["--out", str(out), "--wifi-ssid", "n", "--wifi-password", "p"])
    assert code == 1
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], output
    assert KEY not in output
    assert listing(out) == []


def test_cli_bundle_prints_the_azure_side_and_never_the_key(tmp_path, pki):
    code, output = run_cli(["dev1", "-c", sas_cs("dev1"), "--ca", pki.root_cert, "--out", str(tmp_path),
                            "--no-wifi", "--gateway-device-id", "edge-gw-1"])
    assert code == 0, output
    assert "az iot hub device-identity create -n myhub -d dev1 --am shared_private_key" in output
    assert "az iot hub device-identity parent set -n myhub -d dev1 --pd edge-gw-1" in output
    assert KEY not in output and KEY[:4] + "..." in output
    assert "config.json" in output and "0600" in output
    assert listing(tmp_path / "dev1") == ["ca.der", "config.json"]
    code, output = run_cli(["dev1", "-c", sas_cs("dev1"), "--ca", pki.root_cert, "--out", str(tmp_path),
                            "--no-wifi"])
    assert code == 1 and "exists; pass --force" in output


def test_azure_commands_per_auth(pki):
    d3 = pki.devices["dev3"]
    thb = plan_bundle("dev3", x509_cs("dev3"), pki.root_cert, cert=d3.selfsigned_cert, key=d3.selfsigned_key)
    assert f"--am x509_thb --ptp {d3.thumbprint_sha1} --stp {d3.thumbprint_sha1}" in azure_commands(thb, "gw")[0]
    ca = plan_bundle("dev3", x509_cs("dev3"), pki.root_cert, cert=d3.cert, key=d3.key)
    cmds = azure_commands(ca)
    assert cmds[0].endswith("-d dev3 --am x509_ca") and "certificate create" in cmds[-1]
    assert cmds[1].endswith("-d dev3 --pd <gateway-device-id>") and " parent set " in cmds[1]
    module = plan_bundle("dev1", sas_cs("dev1") + ";ModuleId=temp", pki.root_cert)
    assert any("module-identity create -n myhub -d dev1 -m temp" in c for c in azure_commands(module))
    assert not any(KEY in c for c in azure_commands(module))


def test_missing_gateway_hostname_is_refused_unless_direct(tmp_path, pki):
    args = ["dev1", "-c", sas_cs("dev1", gateway=False), "--ca", pki.root_cert, "--out", str(tmp_path), "--no-wifi"]
    code, output = run_cli(args)
    assert code == 1
    assert "error: the connection string has no GatewayHostName" in output and "--direct" in output
    assert not (tmp_path / "dev1").exists()
    code, output = run_cli(args + ["--direct"])
    assert code == 0
    assert "warning: the connection string has no GatewayHostName" in output


def test_force_replaces_a_bundle_whole(tmp_path, pki):
    d2 = pki.devices["dev2"]
    make_bundle("dev2", x509_cs("dev2"), pki.root_cert, out_dir=tmp_path, cert=d2.cert, key=d2.key)
    with pytest.raises(BundleError, match="exists"):
        make_bundle("dev2", sas_cs("dev2"), pki.root_cert, out_dir=tmp_path)
    folder, _ = make_bundle("dev2", sas_cs("dev2"), pki.root_cert, out_dir=tmp_path, force=True)
    assert listing(folder) == ["ca.der", "config.json"] and listing(tmp_path) == ["dev2"]


def test_a_failed_write_leaves_nothing(tmp_path, pki):
    b = plan_bundle("dev1", sas_cs("dev1"), pki.root_cert)
    b.files["zz-broken"] = ("not bytes", False)  # the write of the last file fails
    with pytest.raises(TypeError):
        write_bundle(b, tmp_path)
    assert listing(tmp_path) == []


def test_fleet_csv_is_all_or_nothing(tmp_path, pki):
    d2 = pki.devices["dev2"]
    (tmp_path / "creds").mkdir()
    for src, name in ((d2.cert, "dev2.pem"), (d2.key, "dev2.key.pem")):
        (tmp_path / "creds" / name).write_bytes(open(src, "rb").read())
    good = (f"device,connection_string,cert,key\n"
            f"dev1,{sas_cs('dev1')},,\n"
            f"dev2,{x509_cs('dev2')},creds/dev2.pem,creds/dev2.key.pem\n")
    (tmp_path / "fleet.csv").write_text(good)
    out = tmp_path / "bundles"
    done = make_fleet(tmp_path / "fleet.csv", pki.root_cert, out_dir=out, runtime="circuitpython",
                      wifi_ssid="n", wifi_password="p")
    assert [b.device for _, b in done] == ["dev1", "dev2"] and listing(out) == ["dev1", "dev2"]
    assert "device.key.pem" in listing(out / "dev2") and "settings.toml" in listing(out / "dev1")

    (tmp_path / "bad.csv").write_text(f"device,connection_string,cert,key\n"
                                      f"dev5,{sas_cs('dev5')},,\ndev6,{sas_cs('dev6')},,\n"
                                      f"dev7,{sas_cs('dev8')},,\n")
    code, output = run_cli(["--csv", str(tmp_path / "bad.csv"), "--ca", pki.root_cert, "--out", str(out),
                            "--no-wifi"])
    assert code == 1 and output.startswith("error: bad.csv line 4 (dev7): the connection string is for device 'dev8'")
    assert listing(out) == ["dev1", "dev2"]  # dev5 and dev6 were valid, but nothing of this run was written


def test_wifi_is_prompted_with_a_hidden_password(tmp_path, pki):
    # A real terminal: click only prompts (and hides the password) when stdin is a tty.
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "bundle", "dev1", "-c", sas_cs("dev1"),
                             "--ca", pki.root_cert, "--out", str(tmp_path)],
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    seen = b""

    def read_until(marker, timeout=20):
        nonlocal seen
        end = time.monotonic() + timeout
        while marker not in seen and time.monotonic() < end:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    seen += os.read(master, 4096)
                except OSError:
                    break
        assert marker in seen, seen

    try:
        read_until(b"Wi-Fi SSID:")
        os.write(master, b"office-net\n")
        read_until(b"Wi-Fi password:")
        os.write(master, b"s3cret-pass\n")
        read_until(b"Still to do in Azure")
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert b"s3cret-pass" not in seen
    config = json.loads((tmp_path / "dev1" / "config.json").read_text())
    assert (config["wifi_ssid"], config["wifi_password"]) == ("office-net", "s3cret-pass")


def test_connection_string_from_the_environment(tmp_path, pki):
    result = CliRunner().invoke(main, ["bundle", "dev1", "--ca", pki.root_cert, "--out", str(tmp_path), "--no-wifi"],
                                env={"EDGEKIT_CONNECTION_STRING": sas_cs("dev1")})
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "dev1" / "config.json").read_text())["connection_string"] == sas_cs("dev1")


def test_cli_port_goes_into_config(tmp_path, pki):
    import json
    code, output = run_cli(["dev1", "-c", sas_cs("dev1"), "--ca", pki.root_cert, "--out", str(tmp_path),
                            "--no-wifi", "--port", "18883"])
    assert code == 0, output
    assert json.loads((tmp_path / "dev1" / "config.json").read_text())["port"] == 18883
    assert json.loads(plan_bundle("dev1", sas_cs("dev1"), pki.root_cert).files["config.json"][0])["port"] == 8883
