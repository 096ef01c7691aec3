# Reads the device bundle (docs/bundle.md): config.json, the root CA and an optional client cert.
# Every problem becomes a BundleError whose message says what to fix.
import json
import os

from azure_edge import connstr

DEFAULTS = {
    "wifi_ssid": None, "wifi_password": None, "ca": "ca.der", "cert": None, "key": None,
    "port": 8883, "interval": 10, "sas_ttl": 3600, "sas_margin": 120, "keepalive": 60,
    "outbox_bytes": 65536, "queue_qos0": False, "ntp_host": "pool.ntp.org", "board": None,
    "backoff_cap": 60, "led_pin": None, "log_level": "info", "model_id": None, "status_every": 60,
    "set_aside_after": 3, "set_aside_retry": 86400, "adu": None,
}


class BundleError(Exception):
    pass


def find(path=None):
    """The bundle folder: `path`, $EDGEKIT_BUNDLE, /edgekit on a board, or ./edgekit."""
    if path:
        return path
    env = os.getenv("EDGEKIT_BUNDLE") if hasattr(os, "getenv") else None
    if env:
        return env
    for p in ("/edgekit", "edgekit"):
        if _exists(p + "/config.json"):
            return p
    raise BundleError("no device bundle: deploy one with 'edgekit deploy', or set EDGEKIT_BUNDLE")


def load(path, runtime):
    """Return (config dict, parsed connection string). Credentials are read per runtime:
    bytes (DER) for MicroPython and CPython, a PEM str and file paths for CircuitPython."""
    try:
        with open(path + "/config.json") as f:
            raw = json.load(f)
    except OSError:
        raise BundleError("no config.json in bundle %s: run 'edgekit bundle'" % path)
    except ValueError:
        raise BundleError("config.json in bundle %s is not valid JSON" % path)
    cfg = dict(DEFAULTS)
    cfg.update(raw)
    if not cfg.get("connection_string"):
        raise BundleError("config.json has no connection_string")
    try:
        cs = connstr.parse(cfg["connection_string"])
    except ValueError as e:
        raise BundleError("connection string: %s" % e)
    cfg["connection_string"] = None  # keep the secret in one place only
    if cfg["log_level"] not in ("quiet", "info", "debug"):
        raise BundleError("log_level in config.json must be quiet, info or debug")
    if cfg["model_id"] and not str(cfg["model_id"]).startswith("dtmi:"):
        raise BundleError("model_id in config.json must be a Plug and Play id (dtmi:...;1)")
    if not cfg["ca"] or not _exists(path + "/" + cfg["ca"]):
        raise BundleError("no CA in the bundle: 'edgekit bundle --ca <gateway root CA>' adds it")
    pem = runtime == "circuitpython"
    cfg["ca"] = _read(path + "/" + cfg["ca"], text=pem)
    _check_ca(cfg["ca"], pem)
    if cs.x509:
        if not (cfg["cert"] and cfg["key"]):
            raise BundleError("x509=true needs 'cert' and 'key' in config.json")
        for k in ("cert", "key"):
            p = path + "/" + cfg[k]
            if not _exists(p):
                raise BundleError("%s file %s is missing from the bundle" % (k, cfg[k]))
            cfg[k] = p if pem else _read(p)
        if not pem:
            cfg["cert"] = der_certs(cfg["cert"])
    else:
        cfg["cert"] = cfg["key"] = None
    return cfg, cs


def der_certs(blob):
    """The DER certificates of a blob that holds them back to back (leaf first), as a list."""
    out = []
    i = 0
    while i + 4 <= len(blob) and blob[i] == 0x30:
        n = blob[i + 1]
        size, head = n, 2
        if n & 0x80:  # long form: the next n & 0x7F bytes are the length
            head = 2 + (n & 0x7F)
            size = 0
            for b in blob[i + 2:i + head]:
                size = size << 8 | b
        out.append(blob[i:i + head + size])
        i += head + size
    if i != len(blob) or not out:
        raise BundleError("the device certificate is not DER certificates: run 'edgekit bundle'")
    return out


def _check_ca(ca, pem):
    if pem:
        if "-----BEGIN CERTIFICATE-----" not in ca:
            raise BundleError("CircuitPython needs the CA as PEM text: run 'edgekit bundle"
                              " --runtime circuitpython'")
        return
    if ca[:5] == b"-----":
        raise BundleError("the CA is PEM but MicroPython needs DER: run 'edgekit certs convert"
                          " ROOT.pem ca.der --to der' (or 'edgekit bundle', which converts)")
    if ca[:1] != b"\x30":
        raise BundleError("the CA file is not a DER certificate: run 'edgekit certs convert'")


def _read(path, text=False):
    with open(path, "r" if text else "rb") as f:
        return f.read()


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False
