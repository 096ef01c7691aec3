"""Find files in a certGen.sh output folder by their conventional names.

Accepts the PKI folder (holding certs/ and private/) or its certs/ folder itself.
"""
import glob
import os
import re

from edgekit.certs.pem import CertError

ROOT = "azure-iot-test-only.root.ca.cert.pem"
INTERMEDIATE = "azure-iot-test-only.intermediate.cert.pem"
ROOT_KEY = "azure-iot-test-only.root.ca.key.pem"  # under private/, like every key
INTERMEDIATE_KEY = "azure-iot-test-only.intermediate.key.pem"
_EDGE_CHAIN = re.compile(r"^iot-edge-device-ca-(.+)-full-chain\.cert\.pem$")
_EDGE = re.compile(r"^iot-edge-device-ca-(.+)\.cert\.pem$")
_DEVICE_CHAIN = re.compile(r"^iot-device-(.+)-full-chain\.cert\.pem$")
_DEVICE_SELF = re.compile(r"^iot-device-(.+)-selfsigned\.cert\.pem$")
_DEVICE = re.compile(r"^iot-device-(.+)\.cert\.pem$")


class CertGenFolder:
    """What a certGen folder holds: paths (str) or None, and dicts keyed by edge CA name / device ID."""

    def __init__(self, certs_dir):
        self.certs_dir = certs_dir
        self.private_dir = os.path.join(os.path.dirname(certs_dir), "private")
        self.root = None
        self.intermediate = None
        self.edge_chains = {}   # name -> full-chain path
        self.edge_cas = {}      # name -> edge CA cert path
        self.devices = {}       # id -> {"cert", "chain", "selfsigned", "key", "selfsigned_key"} (present ones)

    def chains(self):
        """Every chain worth verifying against the root: edge CA full chains, then device chains."""
        out = [self.edge_chains[n] for n in sorted(self.edge_chains)]
        for d in sorted(self.devices):
            files = self.devices[d]
            if "chain" in files:
                out.append(files["chain"])
            elif "cert" in files:
                out.append(files["cert"])
        return out

    def all_certificates(self):
        """Every certificate file found, root first."""
        out = [p for p in (self.root, self.intermediate) if p]
        out += [self.edge_cas[n] for n in sorted(self.edge_cas)]
        out += [self.edge_chains[n] for n in sorted(self.edge_chains)]
        for d in sorted(self.devices):
            out += [self.devices[d][k] for k in ("cert", "chain", "selfsigned") if k in self.devices[d]]
        return out


def is_certgen_folder(path):
    """True when path is a folder that holds certGen-named files (directly or under certs/)."""
    return os.path.isdir(path) and _certs_dir(path) is not None


def _certs_dir(path):
    for candidate in (os.path.join(path, "certs"), path):
        if os.path.isdir(candidate) and (glob.glob(os.path.join(candidate, "azure-iot-test-only.*.pem"))
                                         or glob.glob(os.path.join(candidate, "iot-*.cert.pem"))):
            return candidate
    return None


def scan(path):
    """Read a certGen folder; CertError when it holds no certGen-named certificate."""
    certs_dir = _certs_dir(path)
    if certs_dir is None:
        raise CertError(f"{path} is a folder without certGen files (certs/azure-iot-test-only.root.ca.cert.pem, "
                        "iot-edge-device-ca-*.cert.pem, ...); give a certificate file instead")
    found = CertGenFolder(os.path.abspath(certs_dir))
    for name in sorted(os.listdir(certs_dir)):
        full = os.path.join(found.certs_dir, name)
        if name == ROOT:
            found.root = full
        elif name == INTERMEDIATE:
            found.intermediate = full
        elif _EDGE_CHAIN.match(name):
            found.edge_chains[_EDGE_CHAIN.match(name).group(1)] = full
        elif _EDGE.match(name):
            found.edge_cas[_EDGE.match(name).group(1)] = full
        elif _DEVICE_CHAIN.match(name):
            _device(found, _DEVICE_CHAIN.match(name).group(1))["chain"] = full
        elif _DEVICE_SELF.match(name):
            dev = _device(found, _DEVICE_SELF.match(name).group(1))
            dev["selfsigned"] = full
            _add_key(found, dev, "selfsigned_key", _DEVICE_SELF.match(name).group(1) + "-selfsigned")
        elif _DEVICE.match(name):
            dev = _device(found, _DEVICE.match(name).group(1))
            dev["cert"] = full
            _add_key(found, dev, "key", _DEVICE.match(name).group(1))
    return found


def _device(found, device_id):
    return found.devices.setdefault(device_id, {})


def _add_key(found, dev, slot, stem):
    key = os.path.join(found.private_dir, f"iot-device-{stem}.key.pem")
    if os.path.isfile(key):
        dev[slot] = key


def find_root(path):
    """The root CA file of a certGen folder; CertError when it is missing."""
    found = scan(path)
    if not found.root:
        raise CertError(f"{found.certs_dir} has no {ROOT}; give the root CA file with --ca")
    return found.root


def role(path):
    """certGen role of a file, from its name ('root CA', 'edge CA full chain', ...), or None."""
    name = os.path.basename(os.fspath(path))
    if name == ROOT:
        return "test-only root CA"
    if name == INTERMEDIATE:
        return "test-only intermediate CA"
    for pattern, what in ((_EDGE_CHAIN, "edge CA full chain '{}' (gateway config [edge_ca] cert)"),
                          (_EDGE, "edge CA '{}'"),
                          (_DEVICE_CHAIN, "device '{}' full chain (X.509 CA-signed)"),
                          (_DEVICE_SELF, "device '{}' self-signed (X.509 thumbprint)"),
                          (_DEVICE, "device '{}' certificate (X.509 CA-signed)")):
        m = pattern.match(name)
        if m:
            return what.format(m.group(1))
    return None
