"""Real parts: an RSA certGen-like chain made with the openssl CLI, verdicts of `certs verify`
cross-checked with `openssl verify`, and the DER files from `certs convert` used by the real
MicroPython interpreter (mbedTLS) against a CPython ssl server."""
import datetime
import json
import socket
import ssl
import subprocess
import threading

import pytest
from click.testing import CliRunner
from cryptography import x509

from conftest import tool
from edgekit.certs.cli import certs_group
from edgekit.certs.convert import convert
from edgekit.certs.demo import build_certificate, make_demo_pki, new_key
from edgekit.certs.pem import key_to_pem, load_certificates, to_pem, write_atomic
from edgekit.certs.verify import hostname_matches, verify_chain

EXT = """
[ca]
basicConstraints = critical, CA:true
keyUsage = critical, digitalSignature, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[edge]
basicConstraints = critical, CA:true, pathlen:0
keyUsage = critical, digitalSignature, keyCertSign, cRLSign
[badca]
basicConstraints = critical, CA:true
keyUsage = critical, digitalSignature
[notca]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature, keyEncipherment
[server]
basicConstraints = CA:false
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:gw.test
[client]
basicConstraints = CA:false
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
"""


def sh(*argv, cwd):
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True)


class OpenSSLPKI:
    """certGen-like RSA chain made with the openssl CLI only (independent of our code)."""

    def __init__(self, d):
        self.d = d
        (d / "ext.cnf").write_text(EXT)

    def root(self, name, bits=4096, days=30):
        sh("openssl", "req", "-x509", "-newkey", f"rsa:{bits}", "-nodes", "-keyout", f"{name}.key",
           "-out", f"{name}.pem", "-subj", f"/CN={name}", "-days", str(days), "-sha256",
           "-config", "ext.cnf", "-extensions", "ca", cwd=self.d)
        return self.d / f"{name}.pem"

    def issue(self, name, parent, ext, bits=2048, days=30):
        sh("openssl", "req", "-new", "-newkey", f"rsa:{bits}", "-nodes", "-keyout", f"{name}.key",
           "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=self.d)
        sh("openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", f"{parent}.pem", "-CAkey", f"{parent}.key",
           "-CAcreateserial", "-days", str(days), "-sha256", "-extfile", "ext.cnf", "-extensions", ext,
           "-out", f"{name}.pem", cwd=self.d)
        return self.d / f"{name}.pem"

    def cat(self, out, *names):
        (self.d / out).write_bytes(b"".join((self.d / f"{n}.pem").read_bytes() for n in names))
        return self.d / out


@pytest.fixture(scope="module")
def rsa_pki(tmp_path_factory):
    p = OpenSSLPKI(tmp_path_factory.mktemp("openssl"))
    p.root("root")
    p.issue("inter", "root", "ca", bits=4096)
    p.issue("edge", "inter", "edge", bits=4096)
    p.issue("server", "edge", "server")
    p.issue("device", "inter", "client")
    p.root("other", bits=2048)
    p.root("shortroot", bits=2048, days=1)
    p.issue("shortleaf", "shortroot", "server", days=30)
    p.issue("nosign", "root", "badca", bits=2048)
    p.issue("nosignleaf", "nosign", "server")
    p.issue("leafca", "root", "notca", bits=2048)
    p.issue("underleaf", "leafca", "server")
    p.cat("served.pem", "server", "edge", "inter", "root")
    p.cat("unsorted.pem", "inter", "server", "edge")
    p.cat("nointer.pem", "server", "edge")
    p.cat("short.pem", "shortleaf")
    p.cat("nosign-chain.pem", "nosignleaf", "nosign")
    p.cat("leafca-chain.pem", "underleaf", "leafca")
    p.cat("device-chain.pem", "device", "inter")
    return p


def openssl_ok(root, chain, hostname=None, purpose="sslserver", attime=None):
    leaf = load_certificates(chain)
    argv = ["openssl", "verify", "-CAfile", str(root), "-untrusted", str(chain), "-purpose", purpose]
    if hostname:
        argv += ["-verify_hostname", hostname]
    if attime:
        argv += ["-attime", str(int(attime.timestamp()))]
    # openssl verify takes the leaf as its own file: the first certificate that is not a CA.
    from edgekit.certs.verify import find_leaf
    leaf_pem = to_pem(find_leaf(leaf))
    r = subprocess.run(argv, input=leaf_pem, capture_output=True)
    return r.returncode == 0


IN_3_DAYS = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=3)
CASES = [  # (root, chain, hostname, purpose, at, expected)
    ("root", "served.pem", "gw.test", "server", None, True),
    ("root", "unsorted.pem", "gw.test", "server", None, True),
    ("other", "served.pem", "gw.test", "server", None, False),
    ("root", "served.pem", "gw", "server", None, False),
    ("root", "nointer.pem", "gw.test", "server", None, False),
    ("shortroot", "short.pem", "gw.test", "server", None, True),
    ("shortroot", "short.pem", "gw.test", "server", IN_3_DAYS, False),
    ("root", "device-chain.pem", None, "server", None, False),
    ("root", "device-chain.pem", None, "client", None, True),
    ("root", "nosign-chain.pem", "gw.test", "server", None, False),
    ("root", "leafca-chain.pem", "gw.test", "server", None, False),
]


@pytest.mark.parametrize("root, chain, host, purpose, at, expected", CASES)
def test_verify_agrees_with_openssl(rsa_pki, root, chain, host, purpose, at, expected):
    d = rsa_pki.d
    result = verify_chain(load_certificates(d / f"{root}.pem"), load_certificates(d / chain),
                          hostname=host, at=at, purpose=purpose)
    assert result.ok == expected, result.problems
    assert openssl_ok(d / f"{root}.pem", d / chain, host, "ssl" + purpose, at) == expected
    if not expected:
        assert result.problems and all(len(p.splitlines()) == 1 for p in result.problems)


def test_verify_problem_names_the_fix(rsa_pki):
    d = rsa_pki.d
    problems = {
        ("other", "served.pem", "gw.test", None): "does not lead to the given root",
        ("root", "served.pem", "gw", None): "hostname 'gw' is not covered",
        ("shortroot", "short.pem", None, IN_3_DAYS): "root 'shortroot' expired",
        ("root", "nosign-chain.pem", None, None): "keyCertSign",
        ("root", "leafca-chain.pem", None, None): "is not a CA",
        ("root", "nointer.pem", None, None): "add the missing intermediate",
    }
    for (root, chain, host, at), text in problems.items():
        r = verify_chain(load_certificates(d / f"{root}.pem"), load_certificates(d / chain), hostname=host, at=at)
        assert any(text in p for p in r.problems), (chain, r.problems)


# --- MicroPython (mbedTLS) against a CPython ssl server ---

MP_CLIENT = r"""
import socket, ssl, sys
port = int(sys.argv[1])
ca = open(sys.argv[2], 'rb').read()
cert = key = None
if len(sys.argv) > 5:
    cert = open(sys.argv[4], 'rb').read()
    key = open(sys.argv[5], 'rb').read()
for host in sys.argv[3].split(','):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    s = socket.socket()
    s.connect(socket.getaddrinfo('127.0.0.1', port)[0][-1])
    try:
        t = ctx.wrap_socket(s, server_hostname=host)
        t.write(b'ping')
        reply = t.read(64)
        t.close()
        print(host, 'ok', reply.decode())
    except Exception as e:
        s.close()
        print(host, 'fail', repr(e))
"""


class TLSServer:
    """CPython ssl server on 127.0.0.1:0 in a thread; answers 'pong:<client CN>' after the handshake."""

    def __init__(self, certfile, keyfile, client_ca=None):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(certfile, keyfile)
        if client_ca:
            self.ctx.verify_mode = ssl.CERT_REQUIRED
            self.ctx.load_verify_locations(client_ca)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.errors = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            conn.settimeout(10)
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as t:
                    t.recv(64)
                    peer = t.getpeercert()
                    cn = dict(x[0] for x in peer["subject"])["commonName"] if peer else "-"
                    t.sendall(b"pong:" + cn.encode())
            except (ssl.SSLError, OSError) as e:
                self.errors.append(e)
                conn.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def micropython_connect(tmp_path, port, ca_der, hosts, cert=None, key=None):
    script = tmp_path / "client.py"
    script.write_text(MP_CLIENT)
    argv = [tool("micropython"), str(script), str(port), str(ca_der), ",".join(hosts)]
    if cert:
        argv += [str(cert), str(key)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    return {h: lines[h] for h in hosts}


def test_micropython_handshake_with_converted_root(rsa_pki, tmp_path):
    d = rsa_pki.d
    r = CliRunner().invoke(certs_group, ["convert", str(d / "served.pem"), str(tmp_path / "ca.der"), "--root"])
    assert r.exit_code == 0, r.output
    convert(d / "other.pem", tmp_path / "other.der")
    with TLSServer(d / "served.pem", d / "server.key") as srv:
        good = micropython_connect(tmp_path, srv.port, tmp_path / "ca.der", ["gw.test", "gw", "GW.TEST"])
        wrong_root = micropython_connect(tmp_path, srv.port, tmp_path / "other.der", ["gw.test"])
    assert good["gw.test"].startswith("ok pong")
    assert good["GW.TEST"].startswith("ok pong")
    assert good["gw"].startswith("fail")
    assert wrong_root["gw.test"].startswith("fail")
    # verify gives the same verdicts on the same files
    runner = CliRunner()
    for ca, host, code in (("ca.der", "gw.test", 0), ("ca.der", "gw", 1), ("other.der", "gw.test", 1)):
        res = runner.invoke(certs_group, ["verify", "--ca", str(tmp_path / ca), str(d / "served.pem"),
                                          "--hostname", host])
        assert res.exit_code == code, res.output
        assert ("Verification: OK" in res.output) == (code == 0)


def test_micropython_client_certificate_from_converted_files(rsa_pki, tmp_path):
    d = rsa_pki.d
    # The device key as users bring it: encrypted traditional PEM. convert makes unencrypted DER.
    sh("openssl", "rsa", "-in", "device.key", "-aes256", "-traditional", "-passout", "pass:s3cret",
       "-out", str(tmp_path / "device.enc.pem"), cwd=d)
    convert(d / "served.pem", tmp_path / "ca.der", root=True)
    convert(d / "device.pem", tmp_path / "device.cert.der")
    convert(tmp_path / "device.enc.pem", tmp_path / "device.key.der", password="s3cret",
            match=d / "device.pem")
    # The device sends its leaf only, so the server holds the intermediate next to the root.
    (d / "client-ca.pem").write_bytes((d / "root.pem").read_bytes() + (d / "inter.pem").read_bytes())
    with TLSServer(d / "served.pem", d / "server.key", client_ca=d / "client-ca.pem") as srv:
        with_cert = micropython_connect(tmp_path, srv.port, tmp_path / "ca.der", ["gw.test"],
                                        tmp_path / "device.cert.der", tmp_path / "device.key.der")
        without = micropython_connect(tmp_path, srv.port, tmp_path / "ca.der", ["gw.test"])
    print(with_cert, without)
    assert with_cert["gw.test"] == "ok pong:device"
    assert not without["gw.test"].startswith("ok pong:device")


def _server_with_san(pki, tmp_path, name, san, cn="cn.test"):
    ca_key = pki.edge_ca_key
    from edgekit.certs.pem import load_private_key
    edge = load_certificates(pki.edge_ca_cert)[0]
    key = new_key("ecc", ca=False)
    from cryptography.x509.oid import ExtendedKeyUsageOID
    leaf = build_certificate(cn, key, edge, load_private_key(ca_key), 2, ca=False,
                  eku=[ExtendedKeyUsageOID.SERVER_AUTH], san=san)
    chain = [leaf] + load_certificates(pki.edge_ca_chain)
    write_atomic(tmp_path / f"{name}.pem", b"".join(to_pem(c) for c in chain))
    write_atomic(tmp_path / f"{name}.key", key_to_pem(key), private=True)
    return tmp_path / f"{name}.pem", tmp_path / f"{name}.key", chain


@pytest.mark.parametrize("name, san, hosts", [
    ("wild", [x509.DNSName("*.wild.test"), x509.DNSName("gw*.part.test"), x509.DNSName("Exact.Test"),
              x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))],
     ["a.wild.test", "wild.test", "a.b.wild.test", "gw1.part.test", "exact.test", "127.0.0.1",
      "127.0.0.2", "cn.test"]),
    ("nosan", None, ["cn.test", "other.test"]),
])
def test_hostname_rules_match_micropython(tmp_path, name, san, hosts):
    pki = make_demo_pki(tmp_path / "pki", "gw.test")
    cert, key, chain = _server_with_san(pki, tmp_path, name, san)
    convert(pki.root_cert, tmp_path / "ca.der")
    with TLSServer(cert, key) as srv:
        seen = micropython_connect(tmp_path, srv.port, tmp_path / "ca.der", hosts)
    ours = {h: hostname_matches(chain[0], h) for h in hosts}
    board = {h: seen[h].startswith("ok pong") for h in hosts}
    print(json.dumps(seen, indent=1))
    assert ours == board, json.dumps(seen, indent=1)
    assert any(ours.values()) and not all(ours.values())
    roots = load_certificates(pki.root_cert)
    for h in hosts:
        assert verify_chain(roots, chain, hostname=h).ok == board[h]
