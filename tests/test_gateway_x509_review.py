"""Issue 25, the gateway's X.509 and connection findings: each test is an attack or a boundary.

- a CA-signed device cannot be impersonated with public certificates: the chain is built from
  the certificate the TLS handshake proved, never from one picked out of the presented list;
- a client that presents many certificates is refused by count, and the chain check runs off
  the event loop, so other devices keep being served meanwhile;
- a client certificate that is not valid yet is refused like an expired one;
- the MQTT packet limit is exact at its boundary.
"""
import asyncio
import datetime
import socket
import ssl
import threading
import time
import types

from cryptography.x509.oid import ExtendedKeyUsageOID

from edgekit.certs.demo import build_certificate, new_key
from edgekit.certs.pem import key_to_pem, load_certificates, load_private_key, thumbprints, to_pem
from edgekit.gateway import auth, clientchain, registry, tls
from edgekit.gateway.core import Gateway
from edgekit.gateway.protocol import MAX_PACKET, ProtocolHead
from gateway_helpers import RawDevice, _fixed, _str, connect, gateway, sas_password  # noqa: F401
from azure_edge import topics  # noqa: E402

API = "?api-version=2021-04-12"
PINGREQ = b"\xc0\x00"


def user(device):
    return f"{registry.DEFAULT_HUB}/{device}/{API}"


def pem_files(tmp_path, name, certs, key):
    """certs (leaf first, as sent) and key as PEM files; returns (cert path, key path)."""
    c, k = tmp_path / f"{name}.cert.pem", tmp_path / f"{name}.key.pem"
    c.write_bytes(b"".join(to_pem(x) for x in certs))
    k.write_bytes(key_to_pem(key))
    k.chmod(0o600)
    return str(c), str(k)


class CertDevice(RawDevice):
    """A raw MQTT device over TLS that presents the client certificates of certfile."""

    def __init__(self, gw, certfile, keyfile, timeout=10):
        ctx = ssl.create_default_context(cafile=gw.ca)
        ctx.load_cert_chain(certfile, keyfile)
        self.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", gw.port), timeout=timeout),
                                    server_hostname=gw.hostname)
        self._buf = b""
        self._next_id = 0


def x509_connack(gw, device_id, certfile, keyfile):
    dev = CertDevice(gw, certfile, keyfile)
    try:
        dev.send(connect(device_id, user(device_id), None))
        return dev.connack()[1]
    finally:
        dev.sock.close()


def ping_rtt(dev):
    t0 = time.monotonic()
    dev.send(PINGREQ)
    dev.expect(13)
    return time.monotonic() - t0


# --- 1. the chain starts at the certificate TLS proved ------------------------------------------

def test_public_ca_certificates_do_not_make_an_impersonation(gateway, tmp_path):
    # The attacker holds no key of the PKI: X is its own self-signed CA:FALSE certificate with the
    # victim's id as CN (the handshake proves X's key), then public CA certificates, then a
    # certificate X signed, so that a "leaf" picked from the list is the trust anchor, not X.
    gateway.add_device("victim", x509_ca=True)
    root = load_certificates(gateway.pki.root_cert)[0]
    inter = load_certificates(gateway.pki.intermediate_cert)[0]
    x_key = new_key("ecc", ca=False)
    x = build_certificate("victim", x_key, None, None, 5, ca=False, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    y_key = new_key("ecc", ca=True)
    y = build_certificate("made-by-x", y_key, x, x_key, 5, ca=True)
    for name, anchor in (("root", root), ("intermediate", inter)):
        files = pem_files(tmp_path, f"forged-{name}", [x, anchor, y], x_key)
        assert x509_connack(gateway, "victim", *files) == 5, name
    assert "client certificate chain of 'victim' is not trusted" in gateway.output()
    # The genuine device still gets in: leaf and intermediate, in either order after the leaf.
    b = gateway.pki.devices["x509-a"]
    gateway.add_device("x509-a", x509_ca=True)
    leaf = load_certificates(b.cert)[0]
    files = pem_files(tmp_path, "genuine", [leaf, root, inter], load_private_key(b.key))
    assert x509_connack(gateway, "x509-a", *files) == 0


def test_check_connect_builds_the_chain_from_the_tls_leaf_not_the_first_listed(gateway):
    # The pure function: peer_der is what TLS proved; a presented list that starts elsewhere
    # (the trust anchor first) does not move the chain's start.
    from cryptography.hazmat.primitives.serialization import Encoding
    gateway.add_device("victim-2", x509_ca=True)
    doc = registry.Watcher(gateway.data).current()
    root = load_certificates(gateway.pki.root_cert)[0]
    x_key = new_key("ecc", ca=False)
    x = build_certificate("victim-2", x_key, None, None, 5, ca=False)
    der = [c.public_bytes(Encoding.DER) for c in (root, x)]
    verdict = auth.check_connect(doc, "victim-2", user("victim-2"), None, der[1], time.time(), peer_chain=der)
    assert verdict.code == 5 and "not trusted" in verdict.reason


# --- 2. many certificates: a bound, linear work, and the loop keeps serving ---------------------

def test_hundreds_of_presented_certificates_are_refused_by_count(gateway, tmp_path):
    # 250 self-signed certificates with one name (about 92 KB: OpenSSL's 100 KiB certificate list
    # ends the handshake above that): once a pairwise search that held the gateway's loop for
    # seconds. Now: refused by count, and other links are served meanwhile.
    b = gateway.pki.devices["x509-b"]
    gateway.add_device("x509-b", x509_ca=True)
    junk = []
    for _ in range(250):
        k = new_key("ecc", ca=True)
        junk.append(build_certificate("same-name", k, None, None, 5, ca=True))
    files = pem_files(tmp_path, "many", load_certificates(b.chain) + junk, load_private_key(b.key))
    cs = gateway.add_device("bystander")
    other, ack = RawDevice.connect_as(gateway, cs)
    assert ack == (0, 0)
    attacker = CertDevice(gateway, *files)
    t0 = time.monotonic()
    attacker.send(connect("x509-b", user("x509-b"), None))
    rtts = [ping_rtt(other)]
    assert attacker.connack()[1] == 5
    attacker_rtt = time.monotonic() - t0
    rtts.append(ping_rtt(other))
    attacker.sock.close()
    other.sock.close()
    assert f"more than the {clientchain.MAX_PRESENTED} this gateway reads" in gateway.output()
    assert max(rtts) <= attacker_rtt + 1  # sanity: the bystander was answered throughout


def _in_process_gateway(gw, data):
    """A real core.Gateway and ProtocolHead on a loop in a thread (so the test can slow its auth)."""
    loop = asyncio.new_event_loop()
    lines = []
    core = Gateway(data, gw.hostname, out=lines.append, reauth_interval=300)
    ctx = tls.server_context(str(gw.data / "tls" / "server.cert.pem"), str(gw.data / "tls" / "server.key.pem"))
    head = ProtocolHead(core, ctx)
    port = loop.run_until_complete(head.start("127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def stop():
        asyncio.run_coroutine_threadsafe(head.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
        core.close()
    return types.SimpleNamespace(ca=gw.ca, port=port, hostname=gw.hostname, lines=lines), stop


def test_a_slow_connect_check_does_not_hold_up_other_links(gateway, tmp_path, monkeypatch):
    # Whatever a CONNECT's check costs (a chain a client chose), it runs beside the loop: another
    # device's PINGREQ is answered long before the slow CONNECT is.
    real = auth.check_connect

    def slow(doc, client_id, *args, **kwargs):
        if client_id == "slow-one":
            time.sleep(1.5)
        return real(doc, client_id, *args, **kwargs)
    monkeypatch.setattr(auth, "check_connect", slow)
    data = tmp_path / "data"
    fast_cs = registry.add_device(data, "fast-one")
    slow_cs = registry.add_device(data, "slow-one")
    gw, stop = _in_process_gateway(gateway, data)
    try:
        other, ack = RawDevice.connect_as(gw, fast_cs)
        assert ack == (0, 0)
        attacker = RawDevice(gw)
        t0 = time.monotonic()
        attacker.send(connect("slow-one", user("slow-one"), sas_password(slow_cs)))
        time.sleep(0.3)  # the CONNECT is being checked now
        rtt = ping_rtt(other)
        assert attacker.connack()[1] == 0
        attacker_rtt = time.monotonic() - t0
        assert rtt < attacker_rtt / 5, (rtt, attacker_rtt)
        attacker.sock.close()
        other.sock.close()
    finally:
        stop()


# --- 6b. a certificate not valid yet ------------------------------------------------------------

def test_a_client_certificate_not_yet_valid_is_refused(gateway, tmp_path):
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=2)
    # Thumbprint: only the validity check stands between this certificate and a login.
    key = new_key("ecc", ca=False)
    cert = build_certificate("tp-future", key, None, None, 30, ca=False, now=soon)
    gateway.add_device("tp-future", x509_thumbprint=thumbprints(cert)[1])
    assert x509_connack(gateway, "tp-future", *pem_files(tmp_path, "tp-future", [cert], key)) == 5
    assert "client certificate of 'tp-future' is not valid now" in gateway.output()
    # CA-signed, with its intermediate: the same.
    inter, inter_key = load_certificates(gateway.pki.intermediate_cert)[0], load_private_key(
        gateway.pki.intermediate_key)
    key = new_key("ecc", ca=False)
    cert = build_certificate("ca-future", key, inter, inter_key, 30, ca=False, now=soon)
    gateway.add_device("ca-future", x509_ca=True)
    assert x509_connack(gateway, "ca-future", *pem_files(tmp_path, "ca-future", [cert, inter], key)) == 5
    assert "client certificate of 'ca-future' is not valid now" in gateway.output()


# --- 6a. the packet limit at its boundary -------------------------------------------------------

def _publish_of_size(topic, total, pid):
    # A QoS 1 PUBLISH whose whole packet, fixed header included, is `total` bytes.
    head = _str(topic) + pid.to_bytes(2, "big")
    for header_len in (4, 5):  # 1 type byte + 3 or 4 length bytes
        payload = b"x" * (total - header_len - len(head))
        packet = _fixed(0x32, head + payload)
        if len(packet) == total:
            return packet
    raise AssertionError(f"no PUBLISH of exactly {total} bytes")


def test_packet_limit_is_exact_whole_packet_262144_accepted_one_more_closes(gateway):
    assert MAX_PACKET == 262_144
    cs = gateway.add_device("edge-of-limit")
    topic = topics.telemetry("edge-of-limit")
    dev, ack = RawDevice.connect_as(gateway, cs)
    assert ack == (0, 0)
    dev.send(_publish_of_size(topic, 262_144, 7))
    kind, _, body = dev.expect(4)
    assert int.from_bytes(body[:2], "big") == 7  # PUBACK: read and handled
    dev.sock.close()
    for total in (262_145, 262_146, 262_148):
        dev, ack = RawDevice.connect_as(gateway, cs)
        assert ack == (0, 0)
        try:
            dev.send(_publish_of_size(topic, total, 1))
        except (ssl.SSLError, OSError):
            pass  # closed while the body was still being sent: refused from the fixed header
        assert dev.closed(timeout=5), total
        dev.sock.close()
    assert f"packet of 262145 bytes is over edgeHub's {MAX_PACKET}" in gateway.output()
