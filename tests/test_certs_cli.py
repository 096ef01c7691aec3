"""`edgekit certs` from the command line: conversions, inspect, certGen folders, and every
bad input of issue 3 giving one `error:` line on stderr, a non-zero exit and no file written."""
import datetime
import os
import stat
import subprocess

import pytest
from click.testing import CliRunner
from cryptography.x509.oid import ExtendedKeyUsageOID

from edgekit.certs.demo import build_certificate, issue_server_cert, make_demo_pki, new_key
from edgekit.certs.pem import load_certificates, thumbprints, to_der, to_pem
from edgekit.cli import main


def run(*args, env=None):
    return CliRunner().invoke(main, ["certs"] + [str(a) for a in args], env=env)


def files_in(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def assert_one_line_error(result, text, folder=None, before=None):
    assert result.exit_code != 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and text in lines[0], lines[0]
    assert "Traceback" not in result.output
    if folder is not None:
        assert files_in(folder) == before


def openssl(*argv, cwd, input=None):
    return subprocess.run(["openssl"] + [str(a) for a in argv], cwd=cwd, check=True, capture_output=True,
                          input=input).stdout


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_demo_pki(tmp_path_factory.mktemp("pki"), "gw.test", devices=["dev1"])


@pytest.fixture(scope="module")
def bad(tmp_path_factory, pki):
    """A folder of bad inputs, made once."""
    d = tmp_path_factory.mktemp("bad")
    (d / "junk.txt").write_text("this is not a certificate\n")
    chain = open(pki.edge_ca_chain, "rb").read()
    first_end = chain.index(b"-----END CERTIFICATE-----") + len(b"-----END CERTIFICATE-----\n")
    (d / "second-block-line").write_text(str(chain[:first_end].count(b"\n") + 1))
    (d / "truncated.pem").write_bytes(chain[:first_end + 300])
    (d / "garbage-bundle.pem").write_bytes(chain[:first_end] + b"oops, pasted text\n" + chain[first_end:])
    openssl("pkcs8", "-topk8", "-in", pki.devices["dev1"].key, "-passout", "pass:right", "-out", "enc.pem", cwd=d)
    other = make_demo_pki(d / "other", "gw.test")
    # A root that expired five days ago which signed a leaf that is still valid.
    now = datetime.datetime.now(datetime.timezone.utc)
    rkey = new_key("ecc", ca=True)
    root = build_certificate("Expired Root", rkey, None, None, 5, ca=True, now=now - datetime.timedelta(days=10))
    lkey = new_key("ecc", ca=False)
    leaf = build_certificate("gw.test", lkey, root, rkey, 30, ca=False, eku=[ExtendedKeyUsageOID.SERVER_AUTH], now=now)
    (d / "expired-root.pem").write_bytes(to_pem(root))
    (d / "leaf-of-expired.pem").write_bytes(to_pem(leaf))
    (d / "other-root.pem").write_bytes(open(other.root_cert, "rb").read())
    issue_server_cert(pki.edge_ca_chain, pki.edge_ca_key, "gw.test", out_cert=d / "server.pem",
                      out_key=d / "server.key")
    return d


def test_convert_cert_pem_der_roundtrip_matches_openssl(pki, tmp_path):
    r = run("convert", pki.root_cert, tmp_path / "ca.der")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "ca.der").read_bytes() == openssl("x509", "-in", pki.root_cert, "-outform", "DER", cwd=tmp_path)
    r = run("convert", tmp_path / "ca.der", tmp_path / "ca.pem")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "ca.pem").read_bytes() == open(pki.root_cert, "rb").read()
    r = run("convert", tmp_path / "ca.der", tmp_path / "ca.out", "--to", "der")
    assert (tmp_path / "ca.out").read_bytes() == (tmp_path / "ca.der").read_bytes()


def test_convert_bundle_root_or_split(pki, tmp_path):
    r = run("convert", pki.edge_ca_chain, tmp_path / "root.der", "--root")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "root.der").read_bytes() == to_der(pki.root_cert)
    r = run("convert", pki.edge_ca_chain, tmp_path / "part.der")
    assert r.exit_code == 0, r.output
    chain = load_certificates(pki.edge_ca_chain)
    assert [(tmp_path / f"part-{i}.der").read_bytes() for i in (1, 2, 3)] == [to_der(c) for c in chain]
    assert not (tmp_path / "part.der").exists()


@pytest.mark.parametrize("form, args", [
    ("pkcs1", ["rsa", "-traditional"]), ("sec1", ["ec"]), ("pkcs8", ["pkcs8", "-topk8", "-nocrypt"]),
    ("pkcs8-encrypted", ["pkcs8", "-topk8", "-passout", "pass:pw"]),
    ("pkcs1-encrypted", ["rsa", "-traditional", "-aes256", "-passout", "pass:pw"]),
])
def test_convert_keys_to_unencrypted_der(tmp_path, form, args):
    if args[0] == "rsa":
        openssl("genrsa", "-out", "plain.pem", "2048", cwd=tmp_path)
    else:
        openssl("ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", "plain.pem", cwd=tmp_path)
    openssl(*args, "-in", "plain.pem", "-out", "src.pem", cwd=tmp_path)
    env = {"EDGEKIT_KEY_PASSWORD": "pw"} if "encrypted" in form else None
    r = run("convert", tmp_path / "src.pem", tmp_path / "k.der", env=env)
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE(os.stat(tmp_path / "k.der").st_mode) == 0o600
    # openssl reads it as unencrypted PKCS#8 DER, and it is the same key as the source.
    same = openssl("pkcs8", "-nocrypt", "-inform", "DER", "-in", "k.der", cwd=tmp_path)
    assert openssl("pkey", "-in", "plain.pem", cwd=tmp_path) == openssl("pkey", cwd=tmp_path, input=same)
    assert "pw" not in r.output


def test_inspect_shows_thumbprints_and_warnings(pki, bad):
    r = run("inspect", pki.devices["dev1"].selfsigned_cert)
    assert r.exit_code == 0, r.output
    assert pki.devices["dev1"].thumbprint_sha1 in r.output
    assert pki.devices["dev1"].thumbprint_sha256 in r.output
    sha1 = openssl("x509", "-noout", "-fingerprint", "-sha1", "-in", pki.devices["dev1"].selfsigned_cert,
                   cwd=bad).decode().split("=")[1].strip().replace(":", "")
    assert sha1 in r.output
    assert "clientAuth" in r.output and "EC P-256" in r.output and "CA:       no" in r.output
    r = run("inspect", pki.root_cert)
    assert "test-only" in r.output and "CA:       yes" in r.output and "self-signed" in r.output
    r = run("inspect", bad / "expired-root.pem")
    assert r.exit_code == 0 and "EXPIRED" in r.output and "test-only" not in r.output
    r = run("inspect", bad / "leaf-of-expired.pem", "--at",
            (datetime.date.today() + datetime.timedelta(days=27)).isoformat())
    assert "within 7 days" in r.output and "CN=Expired Root" in r.output
    r = run("inspect", bad / "leaf-of-expired.pem", "--at", "2001-01-01")
    assert "NOT YET VALID" in r.output


def test_certgen_folder_everywhere(pki, tmp_path):
    r = run("convert", pki.outdir, tmp_path / "ca.der")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "ca.der").read_bytes() == to_der(pki.root_cert)
    r = run("verify", os.path.join(pki.outdir, "certs"))
    assert r.exit_code == 0, r.output
    assert r.output.count("Verification: OK") == 2  # edge CA chain and the device chain
    r = run("inspect", pki.outdir)
    assert r.exit_code == 0
    for path in (pki.root_cert, pki.intermediate_cert, pki.edge_ca_chain, pki.devices["dev1"].selfsigned_cert):
        assert path in r.output
    assert "device 'dev1' self-signed (X.509 thumbprint)" in r.output


def test_verify_ok_and_key_match(pki, tmp_path):
    s = issue_server_cert(pki.edge_ca_chain, pki.edge_ca_key, "gw.test",
                          out_cert=tmp_path / "s.pem", out_key=tmp_path / "s.key")
    r = run("verify", "--ca", pki.root_cert, s.cert, "--hostname", "gw.test", "--key", s.key)
    assert r.exit_code == 0 and r.stdout.strip() == "Verification: OK", r.output
    r = run("verify", "--ca", pki.outdir, pki.devices["dev1"].chain, "--key", pki.devices["dev1"].key)
    assert r.exit_code == 0, r.output


def test_demo_cli_prints_next_steps(tmp_path):
    r = run("demo", tmp_path / "pki", "--gateway-host", "gw.test", "--device", "d1", "--days", "5")
    assert r.exit_code == 0, r.output
    assert 'hostname = "gw.test"' in r.output and "iot-edge-device-ca-gateway-full-chain.cert.pem" in r.output
    selfsigned = load_certificates(tmp_path / "pki/certs/iot-device-d1-selfsigned.cert.pem")[0]
    assert thumbprints(selfsigned)[0] in r.output
    assert "PRIVATE KEY" not in r.output
    assert load_certificates(tmp_path / "pki/certs/azure-iot-test-only.root.ca.cert.pem")[0] \
        .not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc) < datetime.timedelta(days=5, minutes=1)


# --- Bad input: one line on stderr, non-zero exit, nothing written ---

BAD_CONVERT = [
    (["junk.txt"], "is not a certificate"),
    (["garbage-bundle.pem", "--root"], "unexpected text at line {line}"),
    (["truncated.pem"], "at line {line} has no matching -----END line"),
    (["enc.pem"], "is encrypted; give its password with --password"),
    (["enc.pem", "--password", "wrong"], "wrong password"),
    (["KEY", "--match", "other-root.pem"], "does not match the certificate"),
    (["KEY", "--root"], "is a private key"),
]


@pytest.mark.parametrize("args, text", BAD_CONVERT)
def test_convert_bad_input(pki, bad, tmp_path, args, text):
    args = [pki.devices["dev1"].key if a == "KEY" else (bad / a if a.endswith((".txt", ".pem")) else a)
            for a in args]
    before = files_in(tmp_path)
    r = run("convert", args[0], tmp_path / "out.der", *args[1:])
    assert_one_line_error(r, text.format(line=(bad / "second-block-line").read_text()), tmp_path, before)


def test_convert_wrong_password_does_not_echo_it(bad, tmp_path):
    r = run("convert", bad / "enc.pem", tmp_path / "k.der", "--password", "hunter2")
    assert "hunter2" not in r.output and not (tmp_path / "k.der").exists()


@pytest.mark.parametrize("case, text", [
    ("not-a-cert", "is not a certificate"),
    ("key-as-ca", "holds a private key, not a certificate"),
    ("key-as-chain", "holds a private key, not a certificate"),
    ("garbage", "unexpected text at line"),
    ("expired-root", "root 'Expired Root' expired"),
    ("wrong-root", "does not lead to the given root"),
    ("hostname", "hostname 'other.test' is not covered"),
    ("key-mismatch", "private key does not match"),
    ("bad-date", "--at 'yesterday' is not a date"),
    ("no-ca", "no root CA"),
])
def test_verify_bad_input(pki, bad, case, text):
    args = {
        "not-a-cert": ["--ca", bad / "junk.txt", pki.edge_ca_chain],
        "key-as-ca": ["--ca", pki.root_key, pki.edge_ca_chain],
        "key-as-chain": ["--ca", pki.root_cert, pki.edge_ca_key],
        "garbage": ["--ca", pki.root_cert, bad / "garbage-bundle.pem"],
        "expired-root": ["--ca", bad / "expired-root.pem", bad / "leaf-of-expired.pem", "--hostname", "gw.test"],
        "wrong-root": ["--ca", bad / "other-root.pem", pki.edge_ca_chain],
        "hostname": ["--ca", pki.root_cert, bad / "server.pem", "--hostname", "other.test"],
        "key-mismatch": ["--ca", pki.root_cert, pki.devices["dev1"].chain, "--key", pki.root_key],
        "bad-date": ["--ca", pki.root_cert, pki.edge_ca_chain, "--at", "yesterday"],
        "no-ca": [pki.edge_ca_chain],
    }[case]
    before = files_in(bad)
    assert_one_line_error(run("verify", *args), text, bad, before)


def test_inspect_and_demo_bad_input(pki, bad, tmp_path):
    assert_one_line_error(run("inspect", bad / "junk.txt"), "is not a certificate")
    assert_one_line_error(run("inspect", pki.root_key), "private key, not a certificate")
    assert_one_line_error(run("inspect", tmp_path), "without certGen files")
    assert_one_line_error(run("inspect", tmp_path / "missing.pem"), "no such file")
    assert_one_line_error(run("demo", tmp_path / "x", "--gateway-host", "gw.test", "--days", "0"),
                          "--days", tmp_path, [])
    assert_one_line_error(run("demo", tmp_path / "x", "--gateway-host", "bad host"), "not a host name",
                          tmp_path, [])
    root_before = open(pki.root_key, "rb").read()
    before = files_in(type(tmp_path)(pki.outdir))
    assert_one_line_error(run("demo", pki.outdir, "--gateway-host", "gw.test"), "already exists",
                          type(tmp_path)(pki.outdir), before)
    assert open(pki.root_key, "rb").read() == root_before
    assert_one_line_error(run("convert", pki.root_cert, tmp_path / "nofolder" / "ca.der"), "does not exist")
    assert_one_line_error(run("convert", pki.root_cert, tmp_path / "ca.bin"), "add --to der")
    assert files_in(tmp_path) == []


def test_subprocess_has_no_traceback(bad, tmp_path):
    import sys
    r = subprocess.run([sys.executable, "-m", "edgekit", "certs", "convert", str(bad / "junk.txt"),
                        str(tmp_path / "x.der")], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")
    assert not (tmp_path / "x.der").exists()
