"""Test PKIs with IoT Edge certGen.sh's roles and file names, and gateway server certificates.

Layout (names are a contract: other tools and tests hard-code them):
  OUTDIR/certs/azure-iot-test-only.root.ca.cert.pem      OUTDIR/private/azure-iot-test-only.root.ca.key.pem
  OUTDIR/certs/azure-iot-test-only.intermediate.cert.pem OUTDIR/private/azure-iot-test-only.intermediate.key.pem
  OUTDIR/certs/iot-edge-device-ca-<name>.cert.pem        OUTDIR/private/iot-edge-device-ca-<name>.key.pem
  OUTDIR/certs/iot-edge-device-ca-<name>-full-chain.cert.pem
  OUTDIR/certs/iot-device-<id>.cert.pem, iot-device-<id>-full-chain.cert.pem, private/iot-device-<id>.key.pem
  OUTDIR/certs/iot-device-<id>-selfsigned.cert.pem, private/iot-device-<id>-selfsigned.key.pem
"""
import datetime
import os
import re

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgekit.certs import certgen
from edgekit.certs.names import parse_ip
from edgekit.certs.pem import (CertError, is_ca, key_matches, key_to_pem, load_certificates,
                                  load_private_key, thumbprints, to_pem, write_atomic)

ALGOS = ("ecc", "rsa")
ROOT_CN = "Azure_IoT_Hub_CA_Cert_Test_Only"
INTERMEDIATE_CN = "Azure_IoT_Hub_Intermediate_Cert_Test_Only"
# Device IDs: IoT Hub allows these characters; anything else would also break file names.
_ID = re.compile(r"^[A-Za-z0-9\-.%_*?!(),:=@$']{1,128}$")
_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$")
_SKEW = datetime.timedelta(hours=1)  # not_before in the past, for boards whose clock lags


class DeviceFiles:
    """Paths and thumbprints of one device's demo credentials."""

    def __init__(self, device_id, cert, chain, key, selfsigned_cert, selfsigned_key,
                 thumbprint_sha1, thumbprint_sha256):
        self.device_id = device_id
        self.cert = cert
        self.chain = chain
        self.key = key
        self.selfsigned_cert = selfsigned_cert
        self.selfsigned_key = selfsigned_key
        self.thumbprint_sha1 = thumbprint_sha1
        self.thumbprint_sha256 = thumbprint_sha256


class DemoPKI:
    """Paths of a demo PKI made by make_demo_pki (attributes are absolute path strings)."""

    def __init__(self, outdir, edge_ca_name, gateway_host, algo):
        certs = os.path.join(outdir, "certs")
        private = os.path.join(outdir, "private")
        self.outdir = outdir
        self.gateway_host = gateway_host
        self.algo = algo
        self.edge_ca_name = edge_ca_name
        self.root_cert = os.path.join(certs, certgen.ROOT)
        self.root_key = os.path.join(private, certgen.ROOT_KEY)
        self.intermediate_cert = os.path.join(certs, certgen.INTERMEDIATE)
        self.intermediate_key = os.path.join(private, certgen.INTERMEDIATE_KEY)
        self.edge_ca_cert = os.path.join(certs, f"iot-edge-device-ca-{edge_ca_name}.cert.pem")
        self.edge_ca_key = os.path.join(private, f"iot-edge-device-ca-{edge_ca_name}.key.pem")
        self.edge_ca_chain = os.path.join(certs, f"iot-edge-device-ca-{edge_ca_name}-full-chain.cert.pem")
        self.devices = {}

    def device_paths(self, device_id):
        """(cert, chain, key, selfsigned_cert, selfsigned_key) paths for a device ID."""
        certs = os.path.join(self.outdir, "certs")
        private = os.path.join(self.outdir, "private")
        return (os.path.join(certs, f"iot-device-{device_id}.cert.pem"),
                os.path.join(certs, f"iot-device-{device_id}-full-chain.cert.pem"),
                os.path.join(private, f"iot-device-{device_id}.key.pem"),
                os.path.join(certs, f"iot-device-{device_id}-selfsigned.cert.pem"),
                os.path.join(private, f"iot-device-{device_id}-selfsigned.key.pem"))


def new_key(algo, ca):
    """A fresh private key: P-256 for ecc; RSA 4096 (CA) or 2048 (leaf) like certGen for rsa."""
    if algo == "ecc":
        return ec.generate_private_key(ec.SECP256R1())
    if algo == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=4096 if ca else 2048)
    raise CertError(f"unknown key algorithm '{algo}'; use one of: {', '.join(ALGOS)}")


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def build_certificate(subject_cn, key, issuer_cert, issuer_key, days, ca, path_length=None, eku=None, san=None,
           now=None):
    """Sign one certificate (SHA-256) for `key`; issuer_cert/issuer_key None means self-signed.

    CAs get keyCertSign and cRLSign; leaves digitalSignature (plus keyEncipherment for RSA).
    not_before is an hour before `now` (default: the current UTC time), not_after `days` after it.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    issuer_name = issuer_cert.subject if issuer_cert is not None else _name(subject_cn)
    signer = issuer_key if issuer_key is not None else key
    rsa_leaf = isinstance(key, rsa.RSAPrivateKey) and not ca
    b = (x509.CertificateBuilder()
         .subject_name(_name(subject_cn))
         .issuer_name(issuer_name)
         .public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - _SKEW)
         .not_valid_after(now + datetime.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                      key_encipherment=rsa_leaf, data_encipherment=False,
                                      key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                                      encipher_only=False, decipher_only=False), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if issuer_cert is not None:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                            critical=False)
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return b.sign(signer, hashes.SHA256())


def _check_days(days):
    if not isinstance(days, int) or days < 1 or days > 3650:
        raise CertError(f"--days must be a whole number from 1 to 3650, not {days!r}")


def _check_label(value, what):
    if not _ID.match(value or ""):
        raise CertError(f"{what} '{value}' is not usable: use 1-128 letters, digits or -._ "
                        "(no spaces or slashes)")


def make_demo_pki(outdir, gateway_host, devices=(), algo="ecc", days=30, edge_ca_name="gateway", now=None):
    """Make a certGen-style test PKI in OUTDIR/certs and OUTDIR/private; return its DemoPKI.

    Refuses to overwrite an existing PKI file. Everything is generated in memory first,
    so bad arguments write nothing. now: the moment it is made (default the current UTC time);
    one in the past makes a real, already expired chain for tests of what refuses it.
    """
    if algo not in ALGOS:
        raise CertError(f"unknown key algorithm '{algo}'; use one of: {', '.join(ALGOS)}")
    _check_days(days)
    _check_label(edge_ca_name, "edge CA name")
    _san_for(gateway_host)
    devices = list(devices)
    for d in devices:
        _check_label(d, "device ID")
    if len(set(devices)) != len(devices):
        raise CertError("a device ID is given twice; give each --device once")
    outdir = os.path.abspath(os.fspath(outdir))
    pki = DemoPKI(outdir, edge_ca_name, gateway_host, algo)

    files = []  # (path, bytes, private)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    root_key = new_key(algo, ca=True)
    root = build_certificate(ROOT_CN, root_key, None, None, days, ca=True, now=now)
    int_key = new_key(algo, ca=True)
    inter = build_certificate(INTERMEDIATE_CN, int_key, root, root_key, days, ca=True, now=now)
    edge_key = new_key(algo, ca=True)
    # pathlen 0: the edge CA signs only the workload/server certificates IoT Edge makes.
    edge = build_certificate(edge_ca_name, edge_key, inter, int_key, days, ca=True, path_length=0, now=now)
    files += [(pki.root_cert, to_pem(root), False), (pki.root_key, key_to_pem(root_key), True),
              (pki.intermediate_cert, to_pem(inter), False),
              (pki.intermediate_key, key_to_pem(int_key), True),
              (pki.edge_ca_cert, to_pem(edge), False), (pki.edge_ca_key, key_to_pem(edge_key), True),
              (pki.edge_ca_chain, to_pem(edge) + to_pem(inter) + to_pem(root), False)]

    for device_id in devices:
        cert_p, chain_p, key_p, ss_cert_p, ss_key_p = pki.device_paths(device_id)
        dkey = new_key(algo, ca=False)
        dcert = build_certificate(device_id, dkey, inter, int_key, days, ca=False,
                       eku=[ExtendedKeyUsageOID.CLIENT_AUTH], now=now)
        skey = new_key(algo, ca=False)
        scert = build_certificate(device_id, skey, None, None, days, ca=False,
                       eku=[ExtendedKeyUsageOID.CLIENT_AUTH], now=now)
        files += [(cert_p, to_pem(dcert), False),
                  (chain_p, to_pem(dcert) + to_pem(inter) + to_pem(root), False),
                  (key_p, key_to_pem(dkey), True),
                  (ss_cert_p, to_pem(scert), False), (ss_key_p, key_to_pem(skey), True)]
        sha1, sha256 = thumbprints(scert)
        pki.devices[device_id] = DeviceFiles(device_id, cert_p, chain_p, key_p, ss_cert_p, ss_key_p,
                                             sha1, sha256)

    existing = [p for p, _, _ in files if os.path.exists(p)]
    if existing:
        raise CertError(f"{existing[0]} already exists; choose an empty OUTDIR "
                        "(a demo PKI never overwrites keys)")
    for sub, mode in (("certs", 0o755), ("private", 0o700)):
        os.makedirs(os.path.join(outdir, sub), mode=mode, exist_ok=True)
    for path, data, private in files:
        write_atomic(path, data, private=private)
    return pki


def _san_for(hostname):
    """SAN entries for a server name: an IP SAN for an IP address, else one DNS name."""
    ip = parse_ip(hostname)
    if ip is not None:
        return [x509.IPAddress(ip)]
    if not isinstance(hostname, str) or not _HOST.match(hostname):
        raise CertError(f"gateway hostname {hostname!r} is not a host name or IP address; "
                        "give it exactly as in the gateway's config.toml 'hostname'")
    return [x509.DNSName(hostname)]


class ServerCert:
    """Paths of an issued server certificate: cert (leaf + CA chain, PEM) and key (PEM, 0600)."""

    def __init__(self, cert, key, leaf):
        self.cert = cert
        self.key = key
        self.leaf = leaf

    def __iter__(self):
        return iter((self.cert, self.key))


def issue_server_cert(ca_cert_path, ca_key_path, hostname, days=30, out_cert=None, out_key=None,
                      chain_paths=(), algo=None):
    """Issue a serverAuth certificate for `hostname` signed by the edge CA, like IoT Edge at start.

    ca_cert_path may be the edge CA alone or its -full-chain file: the signer is the certificate
    whose public key matches ca_key_path. The written cert file is the chain as served: the leaf,
    then every certificate of ca_cert_path and chain_paths (duplicates dropped). The SAN is an
    IP address for an IP hostname, else a DNS name. Defaults: out_cert
    `<ca cert dir>/iot-edge-server-<hostname>.cert.pem`, out_key `<ca key dir>/iot-edge-server-<hostname>.key.pem`.
    The key follows the CA's type unless algo ("rsa", "ecc") says otherwise.
    """
    _check_days(days)
    san = _san_for(hostname)
    ca_certs = load_certificates(ca_cert_path)
    ca_key = load_private_key(ca_key_path)
    signers = [c for c in ca_certs if key_matches(c, ca_key)]
    if not signers:
        raise CertError(f"{ca_key_path} does not match any certificate in {ca_cert_path}; "
                        "give the edge CA certificate and its own key")
    signer = signers[0]
    if not is_ca(signer):
        raise CertError(f"{ca_cert_path} is not a CA certificate (basicConstraints CA:FALSE); "
                        "sign with the edge CA (iot-edge-device-ca-<name>.cert.pem)")
    served = [c for c in ca_certs]
    for p in chain_paths:
        served += load_certificates(p)
    chain, seen = [], set()
    for c in served:
        fp = c.fingerprint(hashes.SHA256())
        if fp not in seen:
            seen.add(fp)
            chain.append(c)
    if out_cert is None:
        out_cert = os.path.join(os.path.dirname(os.path.abspath(ca_cert_path)),
                                f"iot-edge-server-{hostname}.cert.pem")
    if out_key is None:
        out_key = os.path.join(os.path.dirname(os.path.abspath(ca_key_path)),
                               f"iot-edge-server-{hostname}.key.pem")
    algo = algo or ("rsa" if isinstance(ca_key, rsa.RSAPrivateKey) else "ecc")
    key = new_key(algo, ca=False)
    leaf = build_certificate(hostname, key, signer, ca_key, days, ca=False,
                  eku=[ExtendedKeyUsageOID.SERVER_AUTH], san=san)
    write_atomic(out_key, key_to_pem(key), private=True)
    write_atomic(out_cert, to_pem(leaf) + b"".join(to_pem(c) for c in chain))
    return ServerCert(os.path.abspath(out_cert), os.path.abspath(out_key), leaf)
