"""The demo PKI (certGen names and roles), server certificates and the readers others call."""
import os
import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from edgekit.certs import CertError, key_to_der, load_certificates, load_private_key, thumbprints, to_der
from edgekit.certs.demo import issue_server_cert, make_demo_pki
from edgekit.certs.pem import key_matches


def openssl_verify(root, untrusted, leaf, *extra):
    argv = ["openssl", "verify", "-CAfile", str(root)]
    if untrusted:
        argv += ["-untrusted", str(untrusted)]
    r = subprocess.run(argv + list(extra) + [str(leaf)], capture_output=True, text=True)
    return r.returncode == 0, r.stdout + r.stderr


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_demo_pki(tmp_path_factory.mktemp("pki"), "gw.example.com", devices=["dev-1", "dev2"])


def test_certgen_names_and_modes(pki):
    out = pki.outdir
    names = ["certs/azure-iot-test-only.root.ca.cert.pem", "private/azure-iot-test-only.root.ca.key.pem",
             "certs/azure-iot-test-only.intermediate.cert.pem",
             "private/azure-iot-test-only.intermediate.key.pem",
             "certs/iot-edge-device-ca-gateway.cert.pem", "private/iot-edge-device-ca-gateway.key.pem",
             "certs/iot-edge-device-ca-gateway-full-chain.cert.pem",
             "certs/iot-device-dev-1.cert.pem", "certs/iot-device-dev-1-full-chain.cert.pem",
             "private/iot-device-dev-1.key.pem", "certs/iot-device-dev-1-selfsigned.cert.pem",
             "private/iot-device-dev-1-selfsigned.key.pem"]
    for n in names:
        assert os.path.isfile(os.path.join(out, n)), n
    for n in os.listdir(os.path.join(out, "private")):
        assert stat.S_IMODE(os.stat(os.path.join(out, "private", n)).st_mode) == 0o600, n
    assert pki.root_cert == os.path.join(out, names[0])
    assert pki.devices["dev-1"].key == os.path.join(out, names[9])


def test_roles_verify_with_openssl(pki):
    ok, msg = openssl_verify(pki.root_cert, pki.intermediate_cert, pki.edge_ca_cert)
    assert ok, msg
    chain = load_certificates(pki.edge_ca_chain)
    assert [c.subject for c in chain] == [load_certificates(p)[0].subject
                                          for p in (pki.edge_ca_cert, pki.intermediate_cert, pki.root_cert)]
    dev = pki.devices["dev-1"]
    ok, msg = openssl_verify(pki.root_cert, pki.intermediate_cert, dev.cert, "-purpose", "sslclient")
    assert ok, msg
    ok, msg = openssl_verify(pki.root_cert, pki.intermediate_cert, dev.cert, "-purpose", "sslserver")
    assert not ok  # clientAuth only
    cert = load_certificates(dev.cert)[0]
    assert cert.subject.rfc4514_string() == "CN=dev-1"
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == \
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    assert key_matches(cert, load_private_key(dev.key))
    assert isinstance(load_private_key(dev.key), ec.EllipticCurvePrivateKey)


def test_selfsigned_thumbprints_match_openssl(pki):
    dev = pki.devices["dev2"]
    cert = load_certificates(dev.selfsigned_cert)[0]
    assert cert.issuer == cert.subject
    for algo, value in (("-sha1", dev.thumbprint_sha1), ("-sha256", dev.thumbprint_sha256)):
        out = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", algo, "-in", dev.selfsigned_cert],
                             capture_output=True, text=True, check=True).stdout
        assert out.strip().split("=", 1)[1].replace(":", "") == value
    assert thumbprints(cert) == (dev.thumbprint_sha1, dev.thumbprint_sha256)


@pytest.mark.parametrize("host, dns, ip", [("gw.example.com", ["gw.example.com"], []),
                                            ("127.0.0.1", [], ["127.0.0.1"]),
                                            ("localhost", ["localhost"], [])])
def test_issue_server_cert(pki, tmp_path, host, dns, ip):
    s = issue_server_cert(pki.edge_ca_cert, pki.edge_ca_key, host, days=2,
                          out_cert=tmp_path / "srv.pem", out_key=tmp_path / "srv.key",
                          chain_paths=[pki.intermediate_cert, pki.root_cert])
    served = load_certificates(s.cert)
    assert len(served) == 4
    san = served[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == dns
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ip
    assert stat.S_IMODE(os.stat(s.key).st_mode) == 0o600
    flag = ["-verify_ip", host] if ip else ["-verify_hostname", host]
    ok, msg = openssl_verify(pki.root_cert, s.cert, s.cert, "-purpose", "sslserver", *flag)
    assert ok, msg
    ok, _ = openssl_verify(pki.root_cert, s.cert, s.cert, "-verify_hostname", "other.example.com")
    assert not ok


def test_issue_server_cert_from_full_chain_file(pki, tmp_path):
    s = issue_server_cert(pki.edge_ca_chain, pki.edge_ca_key, "gw.example.com",
                          out_cert=tmp_path / "c.pem", out_key=tmp_path / "k.pem")
    assert len(load_certificates(s.cert)) == 4
    with pytest.raises(CertError, match="does not match"):
        issue_server_cert(pki.edge_ca_chain, pki.devices["dev2"].key, "gw.example.com",
                          out_cert=tmp_path / "x.pem", out_key=tmp_path / "x.key")
    with pytest.raises(CertError, match="not a CA"):
        issue_server_cert(pki.devices["dev2"].cert, pki.devices["dev2"].key, "gw.example.com",
                          out_cert=tmp_path / "x.pem", out_key=tmp_path / "x.key")
    assert not (tmp_path / "x.pem").exists() and not (tmp_path / "x.key").exists()


def test_demo_refuses_to_overwrite_and_bad_arguments(pki, tmp_path):
    with pytest.raises(CertError, match="already exists"):
        make_demo_pki(pki.outdir, "gw.example.com")
    for kwargs, msg in (({"algo": "dsa"}, "unknown key algorithm"), ({"days": 0}, "days"),
                        ({"devices": ["a b"]}, "device ID"), ({"devices": ["a", "a"]}, "twice")):
        with pytest.raises(CertError, match=msg):
            make_demo_pki(tmp_path / "x", "gw", **kwargs)
    with pytest.raises(CertError, match="hostname"):
        make_demo_pki(tmp_path / "x", "gw/bad")
    assert not (tmp_path / "x").exists()


def test_rsa_sizes(tmp_path):
    pki = make_demo_pki(tmp_path, "gw", devices=["d"], algo="rsa", days=3)
    assert load_private_key(pki.root_key).key_size == 4096
    assert load_private_key(pki.edge_ca_key).key_size == 4096
    key = load_private_key(pki.devices["d"].key)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    ok, msg = openssl_verify(pki.root_cert, pki.intermediate_cert, pki.devices["d"].cert)
    assert ok, msg


def test_readers(pki, tmp_path):
    der = to_der(pki.root_cert)
    (tmp_path / "r.der").write_bytes(der)
    assert load_certificates(tmp_path / "r.der")[0] == load_certificates(pki.root_cert)[0]
    assert len(load_certificates(pki.edge_ca_chain)) == 3
    kder = key_to_der(load_private_key(pki.root_key))
    (tmp_path / "k.der").write_bytes(kder)
    assert key_matches(load_certificates(pki.root_cert)[0], load_private_key(tmp_path / "k.der"))
    with pytest.raises(CertError, match="private key, not a certificate"):
        load_certificates(pki.root_key)
    with pytest.raises(CertError, match="private key, not a certificate"):
        load_certificates(tmp_path / "k.der")
    with pytest.raises(CertError, match="certificate, not a private key"):
        load_private_key(pki.root_cert)
    (tmp_path / "junk").write_bytes(b"hello")
    with pytest.raises(CertError, match="not a certificate"):
        load_certificates(tmp_path / "junk")
