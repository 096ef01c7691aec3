"""TLS rows of the conformance table (docs/gateway.md): profiles, suites, server certificate, client certificates.

Real `serve` subprocesses on an ECC demo PKI, probed with CPython's ssl client: the default
profile (edgeHub 1.4), `--edgehub 1.5 --trust-bundle root+intermediate` and `--edgehub 1.6`.
"""
import os
import socket
import ssl
import struct

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from edgekit import check
from edgekit.certs.demo import build_certificate, new_key
from edgekit.certs.names import san_names
from edgekit.certs.pem import load_certificates, to_pem
from edgekit.gateway import registry, serve, tls
from gateway_helpers import GatewayProcess, gateway  # noqa: F401  (module-scoped fixture)
from test_edgehub_auth import connack, user, write_cert


def client_ctx(gw, minimum=None, maximum=None, ciphers=None):
    ctx = ssl.create_default_context(cafile=gw.ca)
    if minimum:
        ctx.minimum_version = minimum
    if maximum:
        ctx.maximum_version = maximum
    if ciphers:
        ctx.set_ciphers(ciphers)
    return ctx


def handshake(gw, ctx):
    """(TLS version, cipher name, server leaf) of one verified handshake; ssl.SSLError if refused."""
    raw = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname=gw.hostname) as s:
        return s.version(), s.cipher()[0], x509.load_der_x509_certificate(s.getpeercert(binary_form=True))


@pytest.fixture(scope="module")
def gateway15(tmp_path_factory, gateway):  # noqa: F811
    """serve --edgehub 1.5 with a trust bundle of root and intermediate, on the same PKI."""
    work = tmp_path_factory.mktemp("gw15")
    bundle = work / "bundle.pem"
    bundle.write_bytes(open(gateway.pki.root_cert, "rb").read() + open(gateway.pki.intermediate_cert, "rb").read())
    gw = GatewayProcess(work, pki=gateway.pki)
    gw.extra_args = ["--edgehub", "1.5", "--trust-bundle", str(bundle)]
    gw.start()
    yield gw
    assert gw.stop() == 0, gw.output()


def test_tls_server_certificate_is_rsa2048_from_the_edge_ca_whatever_its_key(gateway):
    edge_ca = load_certificates(gateway.pki.edge_ca_chain)[0]
    assert not isinstance(edge_ca.public_key(), rsa.RSAPublicKey)  # the demo PKI is ECC
    _, cipher, leaf = handshake(gateway, client_ctx(gateway))
    assert isinstance(leaf.public_key(), rsa.RSAPublicKey) and leaf.public_key().key_size == 2048
    leaf.verify_directly_issued_by(edge_ca)
    assert gateway.hostname in san_names(leaf)
    assert cipher.startswith("ECDHE-RSA-")


def test_tls_profile_14_is_tls12_only(gateway):
    version, cipher, _ = handshake(gateway, client_ctx(gateway))
    assert version == "TLSv1.2" and cipher in tls.DOTNET_TLS12_CIPHERS.split(":")
    with pytest.raises(ssl.SSLError):
        handshake(gateway, client_ctx(gateway, minimum=ssl.TLSVersion.TLSv1_3))


@pytest.mark.parametrize("ciphers, ok", [
    ("ECDHE-RSA-AES128-GCM-SHA256", True), ("ECDHE-RSA-AES256-GCM-SHA384", True),
    ("ECDHE-RSA-AES256-SHA384", True), ("ECDHE-RSA-AES128-SHA256", True),
    # .NET's own list has no ChaCha20-Poly1305 for TLS 1.2 (dotnet/runtime pal_ssl.c
    # DOTNET_DEFAULT_CIPHERSTRING; dotnet/docs 5.0 default-cipher-suites-for-tls-on-linux.md)
    ("ECDHE-RSA-CHACHA20-POLY1305", False),
    ("AES128-GCM-SHA256", False),           # RSA key exchange
    ("DHE-RSA-AES128-GCM-SHA256", False),   # finite-field DHE
    ("ECDHE-RSA-AES128-SHA", False),        # SHA-1 CBC: not in .NET's list
])
def test_tls12_offers_only_the_ecdhe_suites_of_dotnet_on_linux(gateway, ciphers, ok):
    ctx = client_ctx(gateway, maximum=ssl.TLSVersion.TLSv1_2, ciphers=ciphers)
    if ok:
        assert handshake(gateway, ctx)[1] == ciphers
    else:
        with pytest.raises(ssl.SSLError):
            handshake(gateway, ctx)


def test_tls_profile_15_adds_tls13(gateway15):
    version, cipher, leaf = handshake(gateway15, client_ctx(gateway15))
    assert version == "TLSv1.3" and cipher.startswith("TLS_")
    assert handshake(gateway15, client_ctx(gateway15, maximum=ssl.TLSVersion.TLSv1_2))[0] == "TLSv1.2"
    assert "edgeHub 1.5 TLS profile" in gateway15.output()


@pytest.fixture(scope="module")
def gateway16(tmp_path_factory, gateway):  # noqa: F811
    """serve --edgehub 1.6 on the same PKI."""
    gw = GatewayProcess(tmp_path_factory.mktemp("gw16"), pki=gateway.pki, extra=["--edgehub", "1.6"])
    gw.start()
    yield gw
    assert gw.stop() == 0, gw.output()


def test_tls_profile_16_is_15s_tls_with_the_same_suites(gateway16):
    version, cipher, _ = handshake(gateway16, client_ctx(gateway16))
    assert version == "TLSv1.3" and cipher.startswith("TLS_")
    version, cipher, _ = handshake(gateway16, client_ctx(gateway16, maximum=ssl.TLSVersion.TLSv1_2))
    assert version == "TLSv1.2" and cipher in tls.DOTNET_TLS12_CIPHERS.split(":")
    with pytest.raises(ssl.SSLError):
        handshake(gateway16, client_ctx(gateway16, maximum=ssl.TLSVersion.TLSv1_2,
                                        ciphers="ECDHE-RSA-CHACHA20-POLY1305"))
    assert "edgeHub 1.6 TLS profile" in gateway16.output()


def test_trust_bundle_with_the_intermediate_accepts_the_leaf_alone(gateway15):
    c = gateway15.pki.devices["x509-c"]
    gateway15.add_device("x509-c", x509_ca=True)
    assert connack(gateway15, "x509-c", user("x509-c"), None, c.cert, c.key) == 0


def test_tls_accepts_any_client_certificate_and_connect_decides(gateway, tmp_path):
    # A certificate nobody knows: the handshake completes, CONNECT answers 5 (not a TLS alert).
    key = new_key("ecc", ca=False)
    cert = build_certificate("stranger", key, None, None, 5, ca=False, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    files = write_cert(tmp_path, "stranger", cert, key)
    gateway.add_device("stranger", x509_ca=True)
    assert connack(gateway, "stranger", user("stranger"), None, *files) == 5
    assert "client certificate chain of 'stranger' is not trusted" in gateway.output()


def test_tls_garbage_reset_and_half_open_are_one_line_each(gateway):
    before = gateway.output()
    s = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    assert not s.recv(100).startswith(b"HTTP")  # an alert or EOF, never an HTTP answer
    s.close()
    # Refused CONNACK, then a TCP reset (the traceback of issue 14).
    ctx = client_ctx(gateway)
    raw = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    t = ctx.wrap_socket(raw, server_hostname=gateway.hostname)
    t.sendall(check.connect_packet("nobody", user("nobody"), "x", 60, clean_session=True))
    assert check.read_connack(t) == 5
    t.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    t.close()
    # Half-open: TLS ClientHello never finished, then reset.
    raw = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    raw.sendall(b"\x16\x03\x01\x00\x50")
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()
    assert connack(gateway, "nobody", user("nobody"), "x") == 5  # the gateway still serves
    new = gateway.output()[len(before):]
    assert "Traceback" not in new and "TLS handshake failed" in new
    assert "closed before the TLS handshake finished" in new


def test_trust_bundle_must_hold_ca_certificates(gateway, tmp_path):
    bad = tmp_path / "leaf.pem"
    bad.write_bytes(to_pem(load_certificates(gateway.pki.devices["x509-a"].cert)[0]))
    pki = serve.find_pki(gateway.pki.outdir)
    with pytest.raises(serve.ServeError, match="not a CA certificate"):
        serve.install_trust_bundle(pki, tmp_path / "data", str(bad))
    assert not os.path.exists(registry.trust_bundle_path(tmp_path / "data"))


def test_tls_seam_gives_the_head_streams_and_the_presented_chain(gateway, tmp_path):
    # The contract with the protocol head: tls.start_server + tls.peer_chain over asyncio streams,
    # in-process; a 1 MiB echo crosses the transport's flow control both ways.
    import asyncio
    import threading

    cert, key = serve.server_certificate(serve.find_pki(gateway.pki.outdir), "localhost", str(tmp_path))
    ctx = tls.server_context(cert, key)
    seen = {}
    ready = threading.Event()

    async def handler(reader, writer):
        seen["chain"] = tls.peer_chain(writer)
        data = await reader.readexactly(1 << 20)
        writer.write(data[::-1])
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await tls.start_server(handler, "127.0.0.1", 0, ctx)
        seen["port"] = server.sockets[0].getsockname()[1]
        ready.set()
        async with server:
            while "done" not in seen:
                await asyncio.sleep(0.02)

    thread = threading.Thread(target=asyncio.run, args=(main(),))
    thread.start()
    try:
        assert ready.wait(10)
        c = gateway.pki.devices["x509-b"]
        ctx_c = ssl.create_default_context(cafile=gateway.ca)
        ctx_c.load_cert_chain(c.chain, c.key)
        payload = bytes(range(256)) * 4096
        with ctx_c.wrap_socket(socket.create_connection(("127.0.0.1", seen["port"]), timeout=10),
                               server_hostname="localhost") as s:
            s.sendall(payload)
            got = b""
            while len(got) < len(payload):
                chunk = s.recv(65536)
                assert chunk, f"closed after {len(got)} bytes"
                got += chunk
        assert got == payload[::-1]
        presented = [x509.load_der_x509_certificate(d).subject for d in seen["chain"]]
        assert presented == [x.subject for x in load_certificates(c.chain)][:len(presented)]
        assert len(presented) >= 2  # leaf and intermediate: what stdlib ssl cannot give
    finally:
        seen["done"] = True
        thread.join(10)
