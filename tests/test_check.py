"""`edgekit check` against a real mosquitto with good and bad chains, cross-checked with openssl s_client."""
import base64
import datetime
import errno
import getpass
import json
import os
import re
import socket
import subprocess
import time

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgekit import check
from edgekit.certs import load_certificates, load_private_key, to_der
from edgekit.certs.demo import issue_server_cert, make_demo_pki
from edgekit.cli import main

from device_helpers import MOSQUITTO, free_port

HUB = "hub.azure-devices.net"
KEY = base64.b64encode(b"k" * 32).decode()


def cs(device, host="localhost", key=KEY, x509_auth=False):
    auth = "x509=true" if x509_auth else f"SharedAccessKey={key}"
    return f"HostName={HUB};DeviceId={device};{auth};GatewayHostName={host}"


def server_cert(pki, out, hostname="localhost", shift=None, full_chain=True):
    """A server certificate from the demo edge CA; `shift` builds one outside its validity by hand."""
    chain = pki.edge_ca_chain if full_chain else pki.edge_ca_cert
    if shift is None:
        return tuple(issue_server_cert(chain, pki.edge_ca_key, hostname,
                                       out_cert=str(out / "srv.pem"), out_key=str(out / "srv.key")))
    ca_cert = load_certificates(pki.edge_ca_cert)[0]
    ca_key = load_private_key(pki.edge_ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    start = now + shift
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=20))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    with open(out / "srv.pem", "wb") as f:
        f.write(leaf.public_bytes(serialization.Encoding.PEM) + open(chain, "rb").read())
    with open(os.open(out / "srv.key", os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return str(out / "srv.pem"), str(out / "srv.key")


# Each listener: (server cert kind, extra mosquitto options).
LISTENERS = {
    "good": ({}, ["allow_anonymous true"]),
    "nochain": ({"full_chain": False}, ["allow_anonymous true"]),
    "otherhost": ({"hostname": "localhost.example.com"}, ["allow_anonymous true"]),
    "expired": ({"shift": datetime.timedelta(days=-30)}, ["allow_anonymous true"]),
    "notyet": ({"shift": datetime.timedelta(days=10)}, ["allow_anonymous true"]),
    "password": ({}, ["allow_anonymous false", "password_file {pw}"]),
    "plain": (None, ["allow_anonymous true"]),
    "mtls": ({}, ["allow_anonymous false", "require_certificate true", "cafile {root}",
                  "use_identity_as_username true"]),
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_demo_pki(str(tmp_path_factory.mktemp("pki")), "localhost", devices=["dev1"])


@pytest.fixture(scope="module")
def broker(pki, tmp_path_factory):
    """One mosquitto with a TLS listener per case; yields {case: port} and the log path."""
    base = tmp_path_factory.mktemp("mosquitto")
    pw = base / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pw), f"{HUB}/dev1/?api-version=2021-04-12",
                    "not-the-token"], check=True, capture_output=True)
    # mosquitto as root drops to its own user unless told to stay: keys are 0600.
    conf = [f"user {getpass.getuser()}", "per_listener_settings true", f"log_dest file {base / 'log'}",
            "log_type all"]
    ports = {}
    for case, (kind, options) in LISTENERS.items():
        out = base / case
        out.mkdir()
        ports[case] = free_port()
        conf.append(f"listener {ports[case]} 127.0.0.1")
        if kind is not None:
            cert, key = server_cert(pki, out, **kind)
            conf += [f"certfile {cert}", f"keyfile {key}"]
        conf += [o.format(pw=pw, root=pki.root_cert) for o in options]
    (base / "mosquitto.conf").write_text("\n".join(conf) + "\n")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(base / "mosquitto.conf")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        for port in ports.values():
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        proc.kill()  # still running past the deadline: read() would wait forever
                        log = (base / "log").read_text() if (base / "log").exists() else ""
                        pytest.fail("mosquitto did not start: " + proc.communicate()[0].decode() + log)
                    time.sleep(0.05)
        yield ports, base / "log"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def openssl_verdict(port, host, root):
    """(exit code, verify code) of openssl s_client verifying chain and hostname like a device."""
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", host,
                        "-CAfile", str(root), "-verify_return_error", "-verify_hostname", host],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    out = r.stdout + r.stderr
    m = re.search(r"verify error:num=(\d+)", out) or re.search(r"Verify return code: (\d+)", out)
    assert m, out
    return r.returncode, int(m.group(1))


def tls_step(report):
    return next(s for s in report.steps if s.name == "tls")


# --- TLS verdicts, each cross-checked with openssl ---------------------------------------

@pytest.mark.parametrize("case, problem", [
    ("good", None),
    ("nochain", "unknown issuer"),
    ("otherhost", "name mismatch"),
    ("expired", "expired"),
    ("notyet", "not yet valid"),
])
def test_tls_verdict_matches_openssl(broker, pki, case, problem):
    ports, _ = broker
    report = check.run_check(f"localhost:{ports[case]}", pki.root_cert, timeout=5)
    step = tls_step(report)
    rc, code = openssl_verdict(ports[case], "localhost", pki.root_cert)
    assert step.data["verify_code"] == code
    assert (rc == 0) == (step.status == check.OK) == report.ok == (problem is None)
    if problem:
        assert step.summary.startswith(problem)
        assert step.data["problem"] == problem
    else:
        assert step.summary.startswith("Verification: OK")
    # The served chain is shown whatever the verdict.
    assert step.data["chain"][0]["subject"].startswith("CN=localhost")
    assert any(line.startswith(" 0 s: CN=localhost") for line in step.details)


def test_good_chain_shows_every_certificate(broker, pki):
    ports, _ = broker
    step = tls_step(check.run_check(f"localhost:{ports['good']}", pki.root_cert))
    subjects = [c["subject"] for c in step.data["chain"]]
    served = [c.subject.rfc4514_string() for c in load_certificates(pki.edge_ca_chain)]
    assert subjects == ["CN=localhost"] + served  # leaf, edge CA, intermediate, root
    assert any("test-only" in d for d in step.details)


def test_not_a_full_chain_is_diagnosed(broker, pki):
    ports, _ = broker
    step = tls_step(check.run_check(f"localhost:{ports['nochain']}", pki.root_cert))
    assert len(step.data["chain"]) == 2  # leaf and edge CA, no intermediate
    assert any("full-chain" in f for f in step.fixes)


def test_name_mismatch_shows_names_next_to_name_used(broker, pki):
    ports, _ = broker
    step = tls_step(check.run_check(f"localhost:{ports['otherhost']}", pki.root_cert))
    assert "the name used is 'localhost'; the certificate covers: localhost.example.com" in step.fixes
    assert any("short name of 'localhost.example.com'" in f for f in step.fixes)


def test_expired_and_not_yet_valid_name_the_certificate_and_clock(broker, pki):
    ports, _ = broker
    step = tls_step(check.run_check(f"localhost:{ports['expired']}", pki.root_cert))
    assert "'localhost' (ended " in step.summary
    step = tls_step(check.run_check(f"localhost:{ports['notyet']}", pki.root_cert))
    assert "'localhost' (from " in step.summary
    assert any("this machine's clock" in f for f in step.fixes)


def test_plain_mqtt_port_is_not_tls(broker, pki):
    ports, _ = broker
    step = tls_step(check.run_check(f"localhost:{ports['plain']}", pki.root_cert))
    assert step.status == check.FAIL and step.data["chain"] == []
    assert step.summary == "connection closed during the handshake"
    assert "may not speak TLS" in step.fixes[0]


def test_wrong_root_matches_openssl(broker, pki, tmp_path):
    other = make_demo_pki(str(tmp_path / "other"), "localhost")
    ports, _ = broker
    step = tls_step(check.run_check(f"localhost:{ports['good']}", other.root_cert))
    rc, code = openssl_verdict(ports["good"], "localhost", other.root_cert)
    assert rc != 0 and step.data["verify_code"] == code
    assert step.data["problem"] == "unknown issuer"
    # Both roots are named alike (certGen names): the hint must say it is another key.
    assert any("another (older or regenerated) PKI" in f for f in step.fixes)


def test_root_as_der_file(broker, pki, tmp_path):
    der = tmp_path / "ca.der"
    der.write_bytes(to_der(pki.root_cert))
    ports, _ = broker
    assert check.run_check(f"localhost:{ports['good']}", str(der)).ok


def test_intermediate_given_as_root_is_named(broker, pki):
    ports, _ = broker
    step = tls_step(check.run_check(f"localhost:{ports['good']}", pki.intermediate_cert))
    assert step.status == check.FAIL
    assert any("is not a root" in f for f in step.fixes)


# --- MQTT login ----------------------------------------------------------------------------

def test_sas_login_accepted_and_token_never_printed(broker, pki):
    ports, _ = broker
    r = CliRunner().invoke(main, ["check", f"localhost:{ports['good']}", "--ca", pki.root_cert,
                                  "--connection-string", cs("dev1")])
    assert r.exit_code == 0, r.output
    assert "[  ok] MQTT: CONNACK 0: accepted" in r.output
    assert "All checks passed." in r.output
    assert KEY not in r.output


def test_sas_login_refused_lists_causes(broker, pki):
    ports, _ = broker
    r = CliRunner().invoke(main, ["check", f"localhost:{ports['password']}", "--ca", pki.root_cert,
                                  "--connection-string", cs("dev1"), "--json"])
    assert r.exit_code == 1
    rep = json.loads(r.stdout)
    mqtt = rep["steps"][-1]
    assert rep["ok"] is False and mqtt["name"] == "mqtt" and mqtt["data"]["connack"] == 5
    assert mqtt["data"]["username"] == f"{HUB}/dev1/?api-version=2021-04-12"
    token = mqtt["data"]["password"]
    assert token.startswith("SharedAccessSignature sr=hub.azure-devices.net%2Fdevices%2Fdev1&sig=<hidden>&se=")
    joined = " ".join(mqtt["fixes"])
    for cause in ("no parent", "wrong key", "audience", "clock skew"):
        assert cause in joined


def test_x509_ca_signed_login(broker, pki):
    ports, _ = broker
    dev = pki.devices["dev1"]
    report = check.run_check(f"localhost:{ports['mtls']}", pki.root_cert, cs("dev1", x509_auth=True),
                             cert=dev.chain, key=dev.key)
    assert report.ok, check.render_text(report)
    assert report.steps[-1].data["connack"] == 0 and report.steps[-1].data["password"] is None


def test_x509_certificate_the_gateway_does_not_trust(broker, pki):
    ports, _ = broker
    dev = pki.devices["dev1"]
    report = check.run_check(f"localhost:{ports['mtls']}", pki.root_cert, cs("dev1", x509_auth=True),
                             cert=dev.selfsigned_cert, key=dev.selfsigned_key)
    assert not report.ok
    assert "client certificate" in " ".join(report.steps[-1].fixes + [report.steps[-1].summary])


def test_credentials_not_sent_over_unverified_tls(broker, pki):
    ports, log = broker
    report = check.run_check(f"localhost:{ports['nochain']}", pki.root_cert, cs("never-sent"))
    assert report.steps[-1].name == "mqtt" and report.steps[-1].status == check.SKIP
    time.sleep(0.2)  # let mosquitto flush its log
    text = log.read_text()
    assert "never-sent" not in text
    # The log is live: a verified login does show up in it.
    check.run_check(f"localhost:{ports['good']}", pki.root_cert, cs("was-sent"))
    time.sleep(0.2)
    assert "was-sent" in log.read_text()


def test_connack_4_and_others_are_interpreted():
    ident = check.Identity(client_id="d", username=f"{HUB}/d/?api-version=2021-04-12", password="x")
    assert "bad user name or password format" in check.connack_fixes(4, ident, HUB)[0]
    assert "identifier rejected" in check.connack_fixes(2, ident, HUB)[0]
    assert "iotedge logs edgeHub" in check.connack_fixes(3, ident, HUB)[0]


def test_connect_packet_is_mqtt_311():
    pkt = check.connect_packet("dev1", "u" * 200, "p")
    # remaining length over 127 bytes takes two bytes
    body_len = (pkt[1] & 0x7F) + (pkt[2] << 7)
    assert pkt[0] == 0x10 and pkt[1] & 0x80 and len(pkt) == 3 + body_len
    assert pkt[3:10] == b"\x00\x04MQTT\x04" and pkt[10] == 0xC0  # user name + password, keep session


# --- DNS and TCP ---------------------------------------------------------------------------

def test_unresolvable_host_prints_hosts_line(pki):
    report = check.run_check(None, pki.root_cert, cs("dev1", host="gateway.invalid"), timeout=5)
    dns = report.steps[0]
    assert (report.host, report.port) == ("gateway.invalid", 8883)
    assert dns.name == "dns" and dns.status == check.FAIL
    assert "    <gateway-ip>  gateway.invalid" in dns.fixes
    assert [s.status for s in report.steps[1:]] == [check.SKIP] * 3


def test_closed_port_is_refused(pki):
    port = free_port()
    report = check.run_check(f"localhost:{port}", pki.root_cert)
    tcp = next(s for s in report.steps if s.name == "tcp")
    assert tcp.status == check.FAIL and tcp.summary == f"localhost:{port} refused"
    assert tcp.data["tried"][0]["state"] == "refused"
    assert set(report.steps[2].data) == {"5671", "443"}  # reported, never failing
    assert report.steps[2].status == check.INFO


def test_silent_port_times_out(pki):
    # A listener with a full accept queue drops further SYNs, as a firewall does.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    filler = socket.create_connection(srv.getsockname(), timeout=1)
    try:
        state, _ = check.probe_port("127.0.0.1", srv.getsockname()[1], timeout=0.5)
        assert state == "timed out"
    finally:
        filler.close()
        srv.close()


@pytest.mark.parametrize("code", [errno.EHOSTUNREACH, errno.ENETUNREACH])
def test_unreachable_is_named(code):
    assert check.classify_connect_error(OSError(code, os.strerror(code))) == "unreachable"
    assert check.classify_connect_error(ConnectionRefusedError()) == "refused"
    assert check.classify_connect_error(ConnectionResetError()) == "reset"  # a key of _TCP_FIX


# --- inputs and the CLI --------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["localhost", "--ca", "/nonexistent/root.pem"], "--ca: /nonexistent/root.pem: no such file"),
    (["localhost:99999", "--ca", "{root}"], "port 99999 is out of range"),
    (["--ca", "{root}"], "give HOST[:PORT], or --connection-string"),
    (["localhost", "--ca", "{root}", "--cert", "{cert}", "--key", "{key}"], "--cert/--key need --connection-string"),
    (["--ca", "{root}", "--connection-string", cs("d", x509_auth=True)], "add --cert and --key"),
    (["--ca", "{root}", "--connection-string", "HostName=h;DeviceId=d;SharedAccessKey=" + KEY[:-2]],
     "SharedAccessKey is not valid base64"),
    (["--ca", "{rootkey}"], "holds a private key"),
    (["--ca", "{root}", "--connection-string", cs("dev1", x509_auth=True), "--cert", "{cert}", "--key", "{otherkey}"],
     "cannot use --cert/--key"),
])
def test_bad_input_is_one_line_error(pki, args, message):
    dev = pki.devices["dev1"]
    args = [a.format(root=pki.root_cert, cert=dev.cert, key=dev.key, rootkey=pki.root_key,
                     otherkey=dev.selfsigned_key) for a in args]
    r = CliRunner().invoke(main, ["check"] + args)
    assert r.exit_code == 1
    assert r.stderr.startswith("error: ") and message in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.output
    assert KEY[:-2] not in r.stderr


def test_host_other_than_gateway_host_name_fails(broker, pki):
    ports, _ = broker
    report = check.run_check(f"127.0.0.1:{ports['good']}", pki.root_cert, cs("dev1"))
    assert report.steps[0].name == "config" and report.steps[0].status == check.FAIL
    assert "the device connects to 'localhost'" in report.steps[0].fixes[0]
    assert not report.ok


def test_split_host_port():
    assert check.split_host_port("gw") == ("gw", 8883)
    assert check.split_host_port("gw.contoso.com:443") == ("gw.contoso.com", 443)
    assert check.split_host_port("[::1]:8883") == ("::1", 8883)
    with pytest.raises(check.CheckError, match="not HOST"):
        check.split_host_port("mqtts://gw:8883")


# --- the TLS profile step -------------------------------------------------------------------

def test_profile_flags_a_tls_server_that_is_not_edgehubs_dotnet(broker, pki):
    # mosquitto on OpenSSL's defaults: TLS 1.3 like edgeHub 1.5/1.6, but TLS 1.2 suites that
    # .NET on Linux never offers, so a device using them would fail against a real edgeHub.
    ports, _ = broker
    report = check.run_check(f"localhost:{ports['good']}", pki.root_cert)
    [profile] = [s for s in report.steps if s.name == "profile"]
    assert report.ok and profile.status == check.INFO
    assert profile.data["tls_versions"] == {"1.2": "accepted", "1.3": "accepted"}
    assert profile.data["tls12_other_suites"]["ECDHE-ECDSA-CHACHA20-POLY1305"] == "accepted"
    assert profile.data["dotnet_defaults"] is False
    assert "suites edgeHub's .NET does not offer" in profile.summary
    assert "[info] TLS profile: " in check.render_text(report)


def test_profile_is_not_probed_over_an_unverified_chain(broker, pki):
    ports, _ = broker
    report = check.run_check(f"localhost:{ports['nochain']}", pki.root_cert)
    assert "profile" not in [s.name for s in report.steps]


def test_expiry_is_noted_30_days_ahead_for_the_served_chain_the_roots_and_the_device(tmp_path):
    # A fleet is re-trusted before it is locked out: one note per kind, for the first to end.
    now = datetime.datetime.now(datetime.timezone.utc)
    short = make_demo_pki(str(tmp_path / "short"), "localhost", devices=("d1",), days=20)
    long = make_demo_pki(str(tmp_path / "long"), "localhost", devices=("d1",), days=90)
    served = load_certificates(long.edge_ca_chain)
    expiring = lambda *a: [n for n in check._notes(*a) if "test-only" not in n]  # noqa: E731
    assert expiring(served, load_certificates(long.root_cert), now) == []
    device = load_certificates(short.device_paths("d1")[0])[0]
    notes = expiring(served, load_certificates(short.root_cert), now, device)
    assert len(notes) == 2, notes
    assert notes[0].startswith("note: trusted root certificate '") and "expires in 19 days" in notes[0]
    assert "edgekit/trust:1" in notes[0]
    assert notes[1].startswith("note: device certificate 'd1' expires in 19 days"), notes
    notes = expiring(load_certificates(short.edge_ca_chain), [], now)
    assert len(notes) == 1 and notes[0].startswith("note: served certificate '"), notes
