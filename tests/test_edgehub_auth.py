"""Authentication rows of the conformance table (docs/gateway.md): username, SAS, X.509, trust bundle.

Each end-to-end test opens real TLS to a real `serve` subprocess and sends a raw MQTT CONNECT,
so no client library decides anything for us. Tokens are signed here with CPython's hmac, not
with the firmware's azure_edge.sas; certificates come from edgekit.certs.demo.
"""
import base64
import datetime
import hashlib
import hmac
import socket
import ssl
import time
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from edgekit import check
from edgekit.certs.demo import build_certificate, new_key
from edgekit.certs.pem import key_to_pem, load_certificates, load_private_key, thumbprints, to_pem
from edgekit.gateway import auth, registry
from gateway_helpers import gateway  # noqa: F401  (module-scoped fixture)

HUB = registry.DEFAULT_HUB
API = "?api-version=2021-04-12"
KEY_A = base64.b64encode(b"A" * 32).decode()
KEY_B = base64.b64encode(b"B" * 32).decode()


def token(sr_as_sent, key, expiry):
    """A SAS token signed over exactly `sr_as_sent\\nexpiry` (hmac here, not the firmware's code)."""
    digest = hmac.new(base64.b64decode(key), f"{sr_as_sent}\n{expiry}".encode(), hashlib.sha256).digest()
    return f"SharedAccessSignature sr={sr_as_sent}&sig={quote(base64.b64encode(digest).decode(), safe='')}&se={expiry}"


def sr(host, device, module=None):
    uri = f"{host}/devices/{device}" + (f"/modules/{module}" if module else "")
    return quote(uri, safe="")


def later(seconds=600):
    return int(time.time()) + seconds


def connack(gw, client_id, username, password=None, certfile=None, keyfile=None):
    """CONNACK code for one raw CONNECT over verified TLS, with an optional client certificate."""
    ctx = ssl.create_default_context(cafile=gw.ca)
    if certfile:
        ctx.load_cert_chain(certfile, keyfile)
    raw = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname=gw.hostname) as s:
        s.sendall(check.connect_packet(client_id, username, password, 60, clean_session=True))
        return check.read_connack(s)


def user(device, module=None, hub=HUB, query=API):
    return f"{hub}/{device}/" + (f"{module}/" if module else "") + query


def write_cert(tmp_path, name, cert, key, *chain):
    """cert (+ chain) and key as PEM files; returns (cert path, key path)."""
    c, k = tmp_path / f"{name}.cert.pem", tmp_path / f"{name}.key.pem"
    c.write_bytes(to_pem(cert) + b"".join(to_pem(x) for x in chain))
    k.write_bytes(key_to_pem(key))
    k.chmod(0o600)
    return str(c), str(k)


def selfsigned(tmp_path, cn, ca=False, days=30, now=None):
    key = new_key("ecc", ca=False)
    cert = build_certificate(cn, key, None, None, days, ca=ca, eku=[ExtendedKeyUsageOID.CLIENT_AUTH], now=now)
    return cert, key


def intermediate_of(gw):
    pki = gw.pki
    return load_certificates(pki.intermediate_cert)[0], load_private_key(pki.intermediate_key)


# --- username (MqttUsernameParser.cs) -------------------------------------------------------

@pytest.mark.parametrize("username, device, module", [
    ("h/d/?api-version=1", "d", None),
    ("h/d/m/?api-version=1", "d", "m"),
    ("h/d/api-version=1&DeviceClientType=x", "d", None),        # the form without '?'
    ("h/d/m/api-version=1", "d", "m"),
    ("h/d/?foo=1&api-version=1&api-version=", "d", None),       # first occurrence wins, others ignored
])
def test_username_forms_edgehub_accepts(username, device, module):
    info = auth.parse_username(username)
    assert (info.device_id, info.module_id, info.api_version) == (device, module, "1")


@pytest.mark.parametrize("username", [
    "h/d/", "h/d/?api-version=", "h/d/?api-version= ", "h/d/?DeviceClientType=x", "h/d/m/x/?api-version=1",
    "h/?api-version=1", "h/ /?api-version=1", "", "  ",
])
def test_malformed_username_is_refused_with_connack_3(username):
    with pytest.raises(ValueError):
        auth.parse_username(username)
    doc = {"devices": {}}
    assert auth.check_connect(doc, "d", username, "x", None, 0).code == auth.MALFORMED_USERNAME == 3


def test_username_model_id_and_device_client_type_ride_on_the_verdict(gateway, tmp_path):
    gateway.add_device("pnp", primary_key=KEY_A)
    doc = registry.Watcher(gateway.data).current()
    name = user("pnp", query="?api-version=2021-04-12&DeviceClientType=edgekit%2F1.0"
                             "&model-id=dtmi%3Acom%3Aexample%3Bx%3B1&z=9")
    verdict = auth.check_connect(doc, "pnp", name, token(sr(HUB, "pnp"), KEY_A, later()), None, time.time())
    assert verdict.ok, verdict.reason
    assert verdict.model_id == "dtmi:com:example;x;1" and verdict.device_client_type == "edgekit/1.0"
    assert connack(gateway, "pnp", name, token(sr(HUB, "pnp"), KEY_A, later())) == 0


def test_username_hub_segment_is_not_checked_but_warned(gateway):
    gateway.add_device("other-hub", primary_key=KEY_A)
    name = user("other-hub", hub="not-my-hub.azure-devices.net")
    assert connack(gateway, "other-hub", name, token(sr(HUB, "other-hub"), KEY_A, later())) == 0
    assert "other-hub: username names hub 'not-my-hub.azure-devices.net'" in gateway.output()


def test_client_id_that_differs_from_the_username_gets_connack_5(gateway):
    gateway.add_device("cid-a", primary_key=KEY_A)
    assert connack(gateway, "cid-b", user("cid-a"), token(sr(HUB, "cid-a"), KEY_A, later())) == 5
    assert connack(gateway, "CID-A", user("cid-a"), token(sr(HUB, "cid-a"), KEY_A, later())) == 5


def test_malformed_username_end_to_end_gets_connack_3(gateway):
    gateway.add_device("no-api", primary_key=KEY_A)
    assert connack(gateway, "no-api", f"{HUB}/no-api/", token(sr(HUB, "no-api"), KEY_A, later())) == 3


# --- SAS (DeviceScopeTokenAuthenticator.cs, SharedAccessSignature.cs) -----------------------

def test_sas_primary_or_secondary_key(gateway):
    cs = gateway.add_device("two-keys", primary_key=KEY_A, secondary_key=KEY_B)
    assert f"SharedAccessKey={KEY_A}" in cs
    for key in (KEY_A, KEY_B):
        assert connack(gateway, "two-keys", user("two-keys"), token(sr(HUB, "two-keys"), key, later())) == 0
    other = base64.b64encode(b"C" * 32).decode()
    assert connack(gateway, "two-keys", user("two-keys"), token(sr(HUB, "two-keys"), other, later())) == 5


def test_sas_audience_may_name_the_hub_or_the_gateway_only(gateway):
    gateway.add_device("aud", primary_key=KEY_A)
    assert connack(gateway, "aud", user("aud"), token(sr(gateway.hostname, "aud"), KEY_A, later())) == 0
    assert connack(gateway, "aud", user("aud"), token(sr("elsewhere.example", "aud"), KEY_A, later())) == 5


def test_sas_audience_ids_are_compared_case_sensitively(gateway):
    # The source compares ids with != (ordinal), not case-insensitively.
    gateway.add_device("case-dev", primary_key=KEY_A)
    assert connack(gateway, "case-dev", user("case-dev"), token(sr(HUB, "CASE-DEV"), KEY_A, later())) == 5
    assert "ids are case-sensitive" in gateway.output()


def test_sas_module_may_sign_with_its_devices_key(gateway):
    gateway.add_device("mod-dev", primary_key=KEY_A)
    gateway.add_device("mod-dev", module_id="m", primary_key=KEY_B)
    name = user("mod-dev", "m")
    assert connack(gateway, "mod-dev/m", name, token(sr(HUB, "mod-dev", "m"), KEY_B, later())) == 0
    assert connack(gateway, "mod-dev/m", name, token(sr(HUB, "mod-dev"), KEY_A, later())) == 0
    # The device's audience with the module's key, or another device's audience: refused.
    assert connack(gateway, "mod-dev/m", name, token(sr(HUB, "mod-dev"), KEY_B, later())) == 5
    gateway.add_device("mod-other", primary_key=KEY_A)
    assert connack(gateway, "mod-dev/m", name, token(sr(HUB, "mod-other"), KEY_A, later())) == 5


@pytest.mark.parametrize("case", ["signed unquoted", "sig not quoted", "expired", "not a token", "sr twice",
                                  "registered x509"])
def test_sas_signature_is_checked_independently_of_the_firmware(gateway, case):
    device = "sas-" + case.replace(" ", "-")
    if case == "registered x509":
        gateway.add_device(device, x509_ca=True)
    else:
        gateway.add_device(device, primary_key=KEY_A)
    good = sr(HUB, device)
    password = {
        "signed unquoted": None,
        "sig not quoted": None,
        "expired": token(good, KEY_A, int(time.time()) - 2),
        "not a token": KEY_A,
        "sr twice": token(good, KEY_A, later()) + "&sr=" + good,
        "registered x509": token(good, KEY_A, later()),
    }[case]
    if case == "signed unquoted":
        # A firmware that signs the unquoted URI but sends the quoted one: edgeHub signs sr as sent.
        digest = hmac.new(base64.b64decode(KEY_A), f"{HUB}/devices/{device}\n{later()}".encode(), hashlib.sha256)
        sig = quote(base64.b64encode(digest.digest()).decode(), safe="")
        password = f"SharedAccessSignature sr={good}&sig={sig}&se={later()}"
    if case == "sig not quoted":
        # '+', '/' and '=' left raw in sig: URL-decoding turns '+' into a space, as in .NET.
        key, expiry = KEY_A, later()
        while True:
            digest = hmac.new(base64.b64decode(key), f"{good}\n{expiry}".encode(), hashlib.sha256).digest()
            raw = base64.b64encode(digest).decode()
            if "+" in raw:
                break
            expiry += 1
        password = f"SharedAccessSignature sr={good}&sig={raw}&se={expiry}"
    assert connack(gateway, device, user(device), password) == 5


def test_sas_token_from_the_firmware_signer_still_passes(gateway):
    # The firmware's own signer must agree with the independent check (the other half of issue 18.4).
    from azure_edge import sas
    gateway.add_device("fw-signer", primary_key=KEY_A)
    password = sas.generate(sas.resource_uri(HUB, "fw-signer"), KEY_A, later())
    assert connack(gateway, "fw-signer", user("fw-signer"), password) == 0


# --- X.509 (DeviceScopeCertificateAuthenticator.cs) -----------------------------------------

def test_x509_thumbprint_sha1_or_sha256_primary_or_secondary_without_restart(gateway, tmp_path):
    # Made and registered after serve started: TLS must not need to know the certificate.
    certs = {n: selfsigned(tmp_path, "tp-dev") for n in ("one", "two", "three")}
    files = {n: write_cert(tmp_path, n, *certs[n]) for n in certs}
    sha1_one = thumbprints(certs["one"][0])[0]
    sha256_two = thumbprints(certs["two"][0])[1]
    gateway.add_device("tp-dev", x509_thumbprint=sha1_one, secondary_thumbprint=sha256_two)
    assert connack(gateway, "tp-dev", user("tp-dev"), None, *files["one"]) == 0
    assert connack(gateway, "tp-dev", user("tp-dev"), None, *files["two"]) == 0
    assert connack(gateway, "tp-dev", user("tp-dev"), None, *files["three"]) == 5
    assert connack(gateway, "tp-dev", user("tp-dev"), None) == 5  # no certificate, no password


def test_x509_thumbprint_certificate_must_be_valid_now(gateway, tmp_path):
    old = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=10)
    cert, key = selfsigned(tmp_path, "tp-old", days=2, now=old)
    gateway.add_device("tp-old", x509_thumbprint=thumbprints(cert)[1])
    assert connack(gateway, "tp-old", user("tp-old"), None, *write_cert(tmp_path, "old", cert, key)) == 5
    assert "is not valid now" in gateway.output()


def test_x509_ca_signed_needs_the_chain_to_the_trust_bundle(gateway):
    # certGen's chain: root -> intermediate -> device. The trust bundle holds the root only.
    b = gateway.pki.devices["x509-c"]
    gateway.add_device("x509-c", x509_ca=True)
    assert connack(gateway, "x509-c", user("x509-c"), None, b.cert, b.key) == 5  # leaf alone
    assert "present the intermediate CA too" in gateway.output()
    assert connack(gateway, "x509-c", user("x509-c"), None, b.chain, b.key) == 0  # leaf + intermediate


def test_x509_ca_signed_cn_must_be_exactly_the_device_id(gateway, tmp_path):
    inter, inter_key = intermediate_of(gateway)
    gateway.add_device("cn-dev", x509_ca=True)
    for cn, expected in (("cn-dev", 0), ("CN-DEV", 5), ("cn-dev2", 5)):
        key = new_key("ecc", ca=False)
        cert = build_certificate(cn, key, inter, inter_key, 5, ca=False, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
        files = write_cert(tmp_path, f"cn-{cn}", cert, key, inter)
        assert connack(gateway, "cn-dev", user("cn-dev"), None, *files) == expected, cn


def test_x509_ca_certificate_is_refused_as_a_device_certificate(gateway, tmp_path):
    inter, inter_key = intermediate_of(gateway)
    key = new_key("ecc", ca=True)
    cert = build_certificate("ca-dev", key, inter, inter_key, 5, ca=True)
    gateway.add_device("ca-dev", x509_ca=True)
    assert connack(gateway, "ca-dev", user("ca-dev"), None, *write_cert(tmp_path, "cadev", cert, key, inter)) == 5
    assert "basicConstraints CA:TRUE" in gateway.output()


def test_x509_thumbprint_device_cannot_act_as_a_ca(gateway, tmp_path):
    # Security row: a thumbprint device's self-signed CA:TRUE certificate signs CN=victim-ca.
    thief_cert, thief_key = selfsigned(tmp_path, "thief", ca=True)
    gateway.add_device("thief", x509_thumbprint=thumbprints(thief_cert)[1])
    thief_files = write_cert(tmp_path, "thief", thief_cert, thief_key)
    assert connack(gateway, "thief", user("thief"), None, *thief_files) == 0  # its own login works
    gateway.add_device("victim-ca", x509_ca=True)
    key = new_key("ecc", ca=False)
    forged = build_certificate("victim-ca", key, thief_cert, thief_key, 5, ca=False,
                               eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    for chain in ((), (thief_cert,)):
        files = write_cert(tmp_path, f"forged{len(chain)}", forged, key, *chain)
        assert connack(gateway, "victim-ca", user("victim-ca"), None, *files) == 5


def test_x509_module_and_symmetric_key_device_are_refused(gateway, tmp_path):
    a = gateway.pki.devices["x509-a"]
    gateway.add_device("sym-dev", primary_key=KEY_A)
    gateway.add_device("sym-dev", module_id="m", primary_key=KEY_B)
    assert connack(gateway, "sym-dev", user("sym-dev"), None, a.selfsigned_cert, a.selfsigned_key) == 5
    assert connack(gateway, "sym-dev/m", user("sym-dev", "m"), None, a.selfsigned_cert, a.selfsigned_key) == 5
    # A certificate and a password: the password decides (DeviceIdentityProvider), so this works.
    good = token(sr(HUB, "sym-dev"), KEY_A, later())
    assert connack(gateway, "sym-dev", user("sym-dev"), good, a.selfsigned_cert, a.selfsigned_key) == 0


def test_x509_check_connect_takes_the_presented_chain(gateway):
    # The pure function, as the protocol head calls it: leaf in peer_der, intermediates in peer_chain.
    from cryptography.hazmat.primitives.serialization import Encoding
    b = gateway.pki.devices["x509-b"]
    gateway.add_device("x509-b", x509_ca=True)
    doc = registry.Watcher(gateway.data).current()
    ders = [c.public_bytes(Encoding.DER) for c in load_certificates(b.chain)]
    assert [c.subject for c in doc["trust_bundle"]] == [load_certificates(gateway.pki.root_cert)[0].subject]
    assert auth.check_connect(doc, "x509-b", user("x509-b"), None, ders[0], time.time()).code == 5
    verdict = auth.check_connect(doc, "x509-b", user("x509-b"), None, ders[0], time.time(), peer_chain=ders)
    assert verdict.ok and verdict.method == "x509_ca"
    assert isinstance(x509.load_der_x509_certificate(ders[1]), x509.Certificate)


def test_device_add_takes_both_keys_and_both_thumbprints_with_one_line_errors(tmp_path):
    from click.testing import CliRunner
    from edgekit.cli import main

    def run(*args):
        r = CliRunner().invoke(main, ["gateway", "device", "add", *args, "--data", str(tmp_path),
                                      "--gateway-host", "gw.local"])
        assert "Traceback" not in r.output, r.output
        return r

    r = run("k-dev", "--primary-key", KEY_A, "--secondary-key", KEY_B)
    last = r.output.strip().splitlines()[-1]
    assert r.exit_code == 0 and last.endswith(f"SharedAccessKey={KEY_A};GatewayHostName=gw.local")
    ident = registry.lookup(registry.load(tmp_path), "k-dev")
    assert (ident.key, ident.secondary_key) == (KEY_A, KEY_B)
    assert oct((tmp_path / registry.REGISTRY).stat().st_mode & 0o777) == "0o600"
    r = run("t-dev", "--x509-thumbprint", "ab" * 20, "--x509-secondary-thumbprint", "CD" * 32)
    assert r.exit_code == 0, r.output
    ident = registry.lookup(registry.load(tmp_path), "t-dev")
    assert (ident.thumbprint, ident.secondary_thumbprint) == ("AB" * 20, "CD" * 32)
    for args, fragment in ((("bad-key", "--primary-key", "c2hvcnQ="), "base64 of 16 to 64 bytes"),
                           (("bad-tp", "--x509-secondary-thumbprint", "AB" * 20), "needs --x509-thumbprint"),
                           (("bad-x", "--x509-ca", "--secondary-key", KEY_B), "no symmetric keys")):
        r = run(*args)
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert r.exit_code == 1 and len(lines) == 1 and fragment in lines[0], r.output
    assert "bad-key" not in registry.load(tmp_path)["devices"]
