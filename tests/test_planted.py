"""Small bugs that the end-to-end tests let through (issue 18, item 4): each test here fails
with its bug planted. The device-side ones run the firmware in this process (CPython) or
through the firmware runner under both interpreters; the reconnect ones are in
test_hostile_hub.py (a raw hub sees every SUBSCRIBE and twin GET of every connection)."""
import os
import stat
import sys

import pytest

from conftest import FIRMWARE

KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="


@pytest.fixture
def firmware(monkeypatch):
    monkeypatch.syspath_prepend(str(FIRMWARE))
    # net.install() puts itself in sys.modules for MiniMQTT: undone after the test.
    monkeypatch.setitem(sys.modules, "adafruit_connection_manager",
                        sys.modules.get("adafruit_connection_manager"))
    from azure_edge import client, net
    return client, net


class Ident:
    host_name, device_id, module_id = "hub.azure-devices.net", "planted", None
    shared_access_key, shared_access_key_name, x509 = KEY, None, False
    gateway_host_name = connect_host = "localhost"


def test_reconnect_delay_grows_while_the_gateway_stays_away(firmware):
    # Bug: a constant delay, a reconnect storm against a restarting gateway.
    client, net = firmware
    lines = []
    c = client.Client(Ident(), None, net, port=1, log=lines.append, backoff_cap=60)

    def refused():
        raise OSError(111, "ECONNREFUSED")
    c.connect = refused
    for _ in range(5):
        c._retry_at = client.ticks_ms()
        c._try_connect()
    delays = [float(line.split()[2]) for line in lines if line.startswith("retrying in")]
    assert len(delays) == 5
    # Jitter is 0.75x to 1.25x of 1, 2, 4, 8, 16 s: each one at least 1.2 times the last.
    assert all(b > a * 1.2 for a, b in zip(delays, delays[1:])), delays


def test_sas_token_is_renewed_a_margin_before_it_expires(firmware):
    # Bug: renewed at expiry, a gap of refused publishes every hour.
    client, net = firmware
    from azure_edge import clock
    c = client.Client(Ident(), None, net, sas_ttl=3600, sas_margin=120)
    now = clock.unix_time()
    token = c._password()
    expiry = int(token.rsplit("se=", 1)[1])
    assert expiry - 3600 - 1 <= now <= expiry - 3600
    assert c._renew_at == expiry - 120


def test_policy_key_token_names_its_policy(fw):
    # Bug: sas.token_for drops the policy name (skn) of a policy-key connection string.
    token = fw.run("cs = connstr.parse('HostName=h.azure-devices.net;DeviceId=d;SharedAccessKeyName=gw-pol;"
                   "SharedAccessKey=%s')\nresult = sas.token_for(cs, 1700000000)" % KEY)
    assert token.endswith("&skn=gw-pol") and "&se=1700000000" in token


@pytest.mark.parametrize("spelling", ["true", "True", "TRUE"])
def test_x509_flag_is_case_insensitive(fw, spelling):
    # Bug: x509=True compared case-sensitively (Azure tools write either).
    cs = fw.call("connstr.parse", "HostName=h.azure-devices.net;DeviceId=d;x509=%s" % spelling)
    assert cs["x509"] is True


def test_outbox_append_syncs_the_segment_before_returning(firmware, tmp_path, monkeypatch):
    # Bug: the sync call removed, so a reading is 'queued' but lost at a power cut.
    from azure_edge import outbox
    synced = []

    def fsync(fd):
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            synced.append(st.st_ino)
        os.fsync(fd)
    monkeypatch.setattr(outbox, "_fsync", fsync)
    box = outbox.Outbox(str(tmp_path / "box"))
    for i in range(3):
        box.append(b"reading %d" % i)
        seg = tmp_path / "box" / ("%08d.seg" % box._tseq)
        assert synced and synced[-1] == seg.stat().st_ino, i


def test_certs_convert_takes_the_root_wherever_it_is_in_the_chain(tmp_path):
    # Bug: picks the last certificate of a chain file instead of the self-signed root.
    from cryptography import x509
    from click.testing import CliRunner

    from edgekit.certs import demo
    from edgekit.cli import main
    pki = demo.make_demo_pki(tmp_path / "pki", "localhost")
    root = open(pki.root_cert, "rb").read()
    inter = open(pki.intermediate_cert, "rb").read()
    chain = tmp_path / "root-first.pem"
    chain.write_bytes(root + inter)
    out = tmp_path / "ca.der"
    result = CliRunner().invoke(main, ["certs", "convert", str(chain), str(out), "--to", "der", "--root"])
    assert result.exit_code == 0, result.output
    got = x509.load_der_x509_certificate(out.read_bytes())
    assert got == x509.load_pem_x509_certificate(root)
