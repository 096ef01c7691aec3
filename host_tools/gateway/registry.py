"""The gateway's identity registry: DATA/registry.json (mode 0600, it holds device keys).

An identity is a device (`dev`) or a module (`dev/mod`). Devices authenticate with a
symmetric key, an X.509 thumbprint or an X.509 certificate chained to the registered CA;
modules behind a gateway use symmetric keys only, as in IoT Edge.
"""
import base64
import contextlib
import fcntl
import json
import os
import secrets

from azure_edge import connstr

from edgekit.certs.pem import write_atomic
from edgekit.gateway import DEFAULT_HUB, GATEWAY_JSON

REGISTRY = "registry.json"
_LOCK = ".registry.lock"
AUTH_SAS = "sas"
AUTH_THUMBPRINT = "x509_thumbprint"
AUTH_CA = "x509_ca"
_HEX = "0123456789ABCDEF"


class RegistryError(ValueError):
    """A registry operation that cannot be done as asked; the message says what to do."""


class Identity:
    """One registered device or module, as the authenticator needs it."""

    def __init__(self, device_id, module_id, hub, auth, key=None, thumbprint=None, parent=True):
        self.device_id = device_id
        self.module_id = module_id
        self.hub = hub
        self.auth = auth
        self.key = key
        self.thumbprint = thumbprint
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


def add_device(data_dir, device_id, module_id=None, x509_thumbprint=None, x509_ca=False, parent=True,
               hub_name=DEFAULT_HUB, gateway_host=None, replace=False):
    """Register a device (or a module of a device) and return its connection string.

    Symmetric-key identities get a fresh 256-bit key. The connection string names
    GatewayHostName when it is given or known from the data folder. Modules need a
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
    thumb = normalize_thumbprint(x509_thumbprint) if x509_thumbprint else None
    key = None if x509 else base64.b64encode(secrets.token_bytes(32)).decode()
    with _locked(data_dir):
        doc = load(data_dir)
        host = gateway_host or _gateway_host_of(data_dir, doc)
        cs = connection_string(hub_name, device_id, module_id, key or None, host)
        try:
            connstr.parse(cs)  # the firmware's own parser checks ids and host names
        except ValueError as e:
            raise RegistryError(str(e))
        devices = doc["devices"]
        dev = devices.get(device_id)
        if module_id:
            if dev is None:
                dev = {"hub": hub_name, "auth": AUTH_SAS, "parent": parent,
                       "key": base64.b64encode(secrets.token_bytes(32)).decode(),
                       "thumbprint": None, "modules": {}}
                devices[device_id] = dev
            if dev["hub"] != hub_name:
                raise RegistryError(f"device '{device_id}' belongs to hub {dev['hub']}; "
                                    f"add its module with --hub {dev['hub']}")
            if module_id in dev["modules"] and not replace:
                raise RegistryError(f"module '{device_id}/{module_id}' already exists; "
                                    "remove it first to get a new key")
            dev["modules"][module_id] = {"key": key}
        else:
            if dev is not None and not replace:
                raise RegistryError(f"device '{device_id}' already exists; remove it first "
                                    "('edgekit gateway device remove') to change its credentials")
            devices[device_id] = {"hub": hub_name, "parent": bool(parent), "key": key,
                                  "auth": AUTH_THUMBPRINT if thumb else AUTH_CA if x509_ca else AUTH_SAS,
                                  "thumbprint": thumb, "modules": dev["modules"] if dev else {}}
        _save(data_dir, doc)
    return cs


def remove_device(data_dir, device_id, module_id=None):
    """Remove a device (with its modules) or one module; RegistryError when it does not exist."""
    data_dir = os.fspath(data_dir)
    with _locked(data_dir):
        doc = load(data_dir)
        dev = doc["devices"].get(device_id)
        if dev is None:
            raise RegistryError(f"no device '{device_id}' in {data_dir}; "
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


def lookup(doc, device_id, module_id=None):
    """The Identity for a client id's parts in a loaded registry, or None."""
    dev = doc["devices"].get(device_id)
    if dev is None:
        return None
    if module_id:
        mod = dev["modules"].get(module_id)
        if mod is None:
            return None
        return Identity(device_id, module_id, dev["hub"], AUTH_SAS, key=mod["key"], parent=dev["parent"])
    return Identity(device_id, None, dev["hub"], dev["auth"], key=dev.get("key"),
                    thumbprint=dev.get("thumbprint"), parent=dev["parent"])


class Watcher:
    """A registry that reloads itself when the file changes (device add while serving)."""

    def __init__(self, data_dir):
        self.data_dir = os.fspath(data_dir)
        self._stamp = None
        self._doc = {"gateway_host": None, "devices": {}}

    def current(self):
        """The registry document as the file holds it now."""
        try:
            st = os.stat(_path(self.data_dir))
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            self._doc = load(self.data_dir)
            self._stamp = stamp
        return self._doc
