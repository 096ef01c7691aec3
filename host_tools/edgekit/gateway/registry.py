"""The gateway's identity registry: DATA/registry.json (mode 0600, it holds device keys).

An identity is a device (`dev`) or a module (`dev/mod`). Devices authenticate with a
symmetric key, an X.509 thumbprint or an X.509 certificate chained to the registered CA;
modules behind a gateway use symmetric keys only, as in IoT Edge.
"""
import base64
import contextlib
import difflib
import fcntl
import json
import os
import re
import secrets

from edgekit.certs.pem import CertError, load_certificates, write_atomic
from edgekit.gateway import DEFAULT_HUB, GATEWAY_JSON

REGISTRY = "registry.json"
TRUST_BUNDLE = "trust-bundle.pem"
_LOCK = ".registry.lock"
AUTH_SAS = "sas"
AUTH_THUMBPRINT = "x509_thumbprint"
AUTH_CA = "x509_ca"
_HEX = "0123456789ABCDEF"
# IoT Hub's identity registry ("Device identity properties", iot-hub-devguide-identity-registry):
# ids are up to 128 ASCII letters, digits and - . % _ * ? ! ( ) , : = @ $ '. Checked here with the
# gateway's own rule, not the firmware's connection-string parser, so a bug there shows in tests.
_ID = re.compile(r"[A-Za-z0-9\-.%_*?!(),:=@$']{1,128}")
_NOT_HOST = re.compile(r"[\s/:;]")


class RegistryError(ValueError):
    """A registry operation that cannot be done as asked; the message says what to do."""


class Identity:
    """One registered device or module, as the authenticator needs it."""

    def __init__(self, device_id, module_id, hub, auth, key=None, thumbprint=None, parent=True,
                 secondary_key=None, secondary_thumbprint=None):
        self.device_id = device_id
        self.module_id = module_id
        self.hub = hub
        self.auth = auth
        self.key = key
        self.secondary_key = secondary_key
        self.thumbprint = thumbprint
        self.secondary_thumbprint = secondary_thumbprint
        self.parent = parent

    @property
    def client_id(self):
        """`dev` or `dev/mod`: the MQTT client id and the key of its twin."""
        return self.device_id + "/" + self.module_id if self.module_id else self.device_id

    def __repr__(self):
        # Never show the key.
        return f"<Identity {self.client_id} {self.auth}{'' if self.parent else ' no-parent'}>"


def _path(data_dir):
    return os.path.join(os.fspath(data_dir), REGISTRY)


@contextlib.contextmanager
def _locked(data_dir):
    # device add/remove may run while `serve` reads: serialize writers, readers see whole files.
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    with open(os.path.join(data_dir, _LOCK), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load(data_dir):
    """The registry document ({"gateway_host": ..., "devices": {...}}); empty when none exists."""
    try:
        with open(_path(data_dir)) as f:
            doc = json.load(f)
    except FileNotFoundError:
        return {"gateway_host": None, "devices": {}}
    except (OSError, ValueError) as e:
        raise RegistryError(f"{_path(data_dir)} is unreadable ({e}); restore it or remove it "
                            "and add the devices again")
    doc.setdefault("gateway_host", None)
    doc.setdefault("devices", {})
    return doc


def _save(data_dir, doc):
    write_atomic(_path(data_dir), (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode(),
                 private=True)


def normalize_thumbprint(text):
    """Upper-case hex without separators; RegistryError unless it is a SHA-1 or SHA-256 digest."""
    t = "".join(c for c in str(text) if c not in ": ").upper()
    if len(t) not in (40, 64) or any(c not in _HEX for c in t):
        raise RegistryError("the X.509 thumbprint must be the certificate's SHA-1 (40 hex digits) "
                            "or SHA-256 (64 hex digits) fingerprint, e.g. from "
                            "'openssl x509 -noout -fingerprint -sha256 -in device.cert.pem'")
    return t


def _gateway_host_of(data_dir, doc):
    # A running gateway knows its name best; else the name the last `serve` recorded.
    try:
        with open(os.path.join(data_dir, GATEWAY_JSON)) as f:
            return json.load(f).get("hostname") or doc.get("gateway_host")
    except (OSError, ValueError):
        return doc.get("gateway_host")


def connection_string(hub, device_id, module_id=None, key=None, gateway_host=None):
    """The SDK connection string for an identity (x509=true when it has no key)."""
    cs = f"HostName={hub};DeviceId={device_id}"
    if module_id:
        cs += f";ModuleId={module_id}"
    cs += f";SharedAccessKey={key}" if key else ";x509=true"
    if gateway_host:
        cs += f";GatewayHostName={gateway_host}"
    return cs


def _new_key():
    return base64.b64encode(secrets.token_bytes(32)).decode()


def _new_generation():
    # IoT Hub's generationId: tells a device from an earlier one that had the same id.
    return secrets.token_hex(8)


def generations(doc):
    """{client id: generation} of every identity in a loaded registry (None for older entries)."""
    out = {}
    for device_id, dev in doc["devices"].items():
        out[device_id] = dev.get("generation")
        for module_id, mod in dev.get("modules", {}).items():
            out[device_id + "/" + module_id] = mod.get("generation")
    return out


def _check_names(hub_name, device_id, module_id, gateway_host):
    # What a connection string cannot carry, or IoT Hub would refuse: RegistryError naming it.
    for name, value in (("DeviceId", device_id), ("ModuleId", module_id)):
        if value is None or _ID.fullmatch(value):
            continue
        if not value:
            raise RegistryError(f"{name} is empty")
        if len(value) > 128:
            raise RegistryError(f"{name} is longer than 128 characters")
        bad = next((c for c in value if not _ID.fullmatch(c)), "")
        raise RegistryError(f"{name} contains {bad!r}, which IoT Hub does not allow in ids")
    for name, value in (("HostName", hub_name), ("GatewayHostName", gateway_host)):
        if value is not None and (not value or _NOT_HOST.search(value)):
            raise RegistryError(f"{name} {value[:60]!r} is not a host name (no scheme, port or path)")


def check_key(text, what):
    """The key as given when it is base64 of 16 to 64 bytes (IoT Hub's rule); RegistryError otherwise."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raw = b""
    if not 16 <= len(raw) <= 64:
        raise RegistryError(f"the {what} must be base64 of 16 to 64 bytes (IoT Hub's rule); "
                            "leave it out to get a fresh random one")
    return text


def add_device(data_dir, device_id, module_id=None, x509_thumbprint=None, x509_ca=False, parent=True,
               hub_name=DEFAULT_HUB, gateway_host=None, secondary_thumbprint=None, primary_key=None,
               secondary_key=None, replace=False):
    """Register a device (or a module of a device) and return its connection string.

    Symmetric-key identities get fresh 256-bit primary and secondary keys (the connection
    string carries the primary; primary_key/secondary_key set them instead); a thumbprint
    device may have a secondary thumbprint, as in IoT Hub, and either one opens it. The
    connection string names GatewayHostName when it is given or known from the data folder. Modules need a
    symmetric key (X.509 modules are refused, as IoT Edge does); adding a module of an
    unknown device registers the device too, with its own key. replace: an existing
    identity of that id gets the new credentials (a device keeps its modules).
    """
    data_dir = os.fspath(data_dir)
    if x509_thumbprint and x509_ca:
        raise RegistryError("choose one of --x509-thumbprint and --x509-ca")
    x509 = bool(x509_thumbprint or x509_ca)
    if module_id and x509:
        raise RegistryError("modules behind a gateway authenticate with symmetric keys only; "
                            "drop --x509-thumbprint/--x509-ca for a module")
    if secondary_thumbprint and not x509_thumbprint:
        raise RegistryError("--x509-secondary-thumbprint needs --x509-thumbprint (the primary)")
    thumb = normalize_thumbprint(x509_thumbprint) if x509_thumbprint else None
    thumb2 = normalize_thumbprint(secondary_thumbprint) if secondary_thumbprint else None
    if x509 and (primary_key or secondary_key):
        raise RegistryError("an X.509 identity has no symmetric keys; drop --primary-key/--secondary-key")
    key = None if x509 else check_key(primary_key, "primary key") if primary_key else _new_key()
    key2 = None if x509 else check_key(secondary_key, "secondary key") if secondary_key else _new_key()
    with _locked(data_dir):
        doc = load(data_dir)
        host = gateway_host or _gateway_host_of(data_dir, doc)
        cs = connection_string(hub_name, device_id, module_id, key or None, host)
        _check_names(hub_name, device_id, module_id, host)
        devices = doc["devices"]
        dev = devices.get(device_id)
        if module_id:
            if dev is None:
                dev = {"hub": hub_name, "auth": AUTH_SAS, "parent": parent, "key": _new_key(),
                       "secondary_key": _new_key(), "thumbprint": None, "modules": {},
                       "generation": _new_generation()}
                devices[device_id] = dev
            if dev["hub"] != hub_name:
                raise RegistryError(f"device '{device_id}' belongs to hub {dev['hub']}; "
                                    f"add its module with --hub {dev['hub']}")
            if module_id in dev["modules"] and not replace:
                raise RegistryError(f"module '{device_id}/{module_id}' already exists; "
                                    "remove it first to get a new key")
            old = dev["modules"].get(module_id) or {}
            dev["modules"][module_id] = {"key": key, "secondary_key": key2,
                                         "generation": old.get("generation") or _new_generation()}
        else:
            if dev is not None and not replace:
                raise RegistryError(f"device '{device_id}' already exists; remove it first "
                                    "('edgekit gateway device remove') to change its credentials")
            devices[device_id] = {"hub": hub_name, "parent": bool(parent), "key": key, "secondary_key": key2,
                                  "auth": AUTH_THUMBPRINT if thumb else AUTH_CA if x509_ca else AUTH_SAS,
                                  "thumbprint": thumb, "secondary_thumbprint": thumb2,
                                  "modules": dev["modules"] if dev else {},
                                  # --force updates the identity: the same registration, its state kept
                                  "generation": (dev or {}).get("generation") or _new_generation()}
        _save(data_dir, doc)
    return cs


def remove_device(data_dir, device_id, module_id=None):
    """Remove a device (with its modules) or one module; RegistryError when it does not exist."""
    data_dir = os.fspath(data_dir)
    with _locked(data_dir):
        doc = load(data_dir)
        dev = doc["devices"].get(device_id)
        if dev is None:
            raise RegistryError(f"no device '{device_id}' in {data_dir}{did_you_mean(doc, device_id)}; "
                                "'edgekit gateway device list' shows the registered ones")
        if module_id:
            if module_id not in dev["modules"]:
                raise RegistryError(f"device '{device_id}' has no module '{module_id}'")
            del dev["modules"][module_id]
        else:
            del doc["devices"][device_id]
        _save(data_dir, doc)


def show_connection_string(data_dir, device_id, module_id=None):
    """The connection string of a registered identity, as `add_device` printed it; None when unknown."""
    data_dir = os.fspath(data_dir)
    doc = load(data_dir)
    ident = lookup(doc, device_id, module_id)
    if ident is None:
        return None
    return connection_string(ident.hub, device_id, module_id, ident.key, _gateway_host_of(data_dir, doc))


def list_devices(data_dir):
    """Registered identities as dicts (id, module, auth, parent, hub); keys are never included."""
    out = []
    for device_id, dev in sorted(load(os.fspath(data_dir))["devices"].items()):
        out.append({"device": device_id, "module": None, "auth": dev["auth"],
                    "parent": dev["parent"], "hub": dev["hub"], "thumbprint": dev.get("thumbprint")})
        for module_id in sorted(dev["modules"]):
            out.append({"device": device_id, "module": module_id, "auth": AUTH_SAS,
                        "parent": dev["parent"], "hub": dev["hub"], "thumbprint": None})
    return out


def set_gateway_host(data_dir, hostname):
    """Record the name `serve` answers to, for connection strings made while it is stopped."""
    data_dir = os.fspath(data_dir)
    with _locked(data_dir):
        doc = load(data_dir)
        if doc.get("gateway_host") != hostname:
            doc["gateway_host"] = hostname
            _save(data_dir, doc)


def did_you_mean(doc, device_id, module_id=None):
    """" (did you mean 'sensor1'?)" for an unknown id close to a registered one, else "".

    Close means difflib's ratio of 0.6 or more, case ignored: one or two typed characters wrong
    in a short id, the slips users make, without offering an unrelated name.
    """
    if module_id and device_id in doc["devices"]:
        known, typed, prefix = doc["devices"][device_id]["modules"], module_id, device_id + "/"
    else:
        known, typed, prefix = doc["devices"], device_id, ""
    lowered = {k.lower(): k for k in known}
    close = difflib.get_close_matches(typed.lower(), list(lowered), n=1, cutoff=0.6)
    if not close:
        return ""
    name = prefix + lowered[close[0]] + ("/" + module_id if module_id and not prefix else "")
    return f" (did you mean '{name}'?)"


def unknown(data_dir, device_id, module_id=None, doc=None):
    """The one-line message for an identity not in DATA's registry, with a suggestion when one is close."""
    doc = load(data_dir) if doc is None else doc
    name = device_id + ("/" + module_id if module_id else "")
    return (f"no identity '{name}' in {os.fspath(data_dir)}{did_you_mean(doc, device_id, module_id)}; "
            "'edgekit gateway device list' shows the registered ones")


def lookup(doc, device_id, module_id=None):
    """The Identity for a client id's parts in a loaded registry, or None."""
    dev = doc["devices"].get(device_id)
    if dev is None:
        return None
    if module_id:
        mod = dev["modules"].get(module_id)
        if mod is None:
            return None
        return Identity(device_id, module_id, dev["hub"], AUTH_SAS, key=mod["key"], parent=dev["parent"],
                        secondary_key=mod.get("secondary_key"))
    return Identity(device_id, None, dev["hub"], dev["auth"], key=dev.get("key"),
                    thumbprint=dev.get("thumbprint"), parent=dev["parent"],
                    secondary_key=dev.get("secondary_key"), secondary_thumbprint=dev.get("secondary_thumbprint"))


def trust_bundle_path(data_dir):
    """DATA/tls/trust-bundle.pem: the CA certificates `serve` trusts for CA-signed devices."""
    return os.path.join(os.fspath(data_dir), "tls", TRUST_BUNDLE)


def _stamp(path):
    try:
        st = os.stat(path)
        return (st.st_ino, st.st_mtime_ns, st.st_size)
    except FileNotFoundError:
        return None


def _load_bundle(path):
    if not os.path.exists(path):
        return []
    try:
        return load_certificates(path)
    except CertError as e:
        raise RegistryError(f"{path}: {e}")


class Watcher:
    """A registry that reloads itself when the file changes (device add while serving).

    Its document also carries "trust_bundle", the certificates of DATA/tls/trust-bundle.pem,
    for auth.check_connect's CA-signed devices.
    """

    def __init__(self, data_dir):
        self.data_dir = os.fspath(data_dir)
        self._stamp = None
        self._doc = {"gateway_host": None, "devices": {}, "trust_bundle": []}

    def current(self):
        """The registry document as the files hold it now."""
        bundle = trust_bundle_path(self.data_dir)
        stamp = (_stamp(_path(self.data_dir)), _stamp(bundle))
        if stamp != self._stamp:
            doc = load(self.data_dir)
            doc["trust_bundle"] = _load_bundle(bundle)
            self._doc, self._stamp = doc, stamp
        return self._doc
