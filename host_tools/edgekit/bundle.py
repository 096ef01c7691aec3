"""Per-device bundles (docs/bundle.md): credentials converted for the runtime, written atomically.

`plan_bundle` checks everything and builds the files in memory; `write_bundle` writes
them into a temporary folder beside the target and renames it into place, so a
failure leaves nothing behind.
"""
import base64
import csv
import datetime
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import click

from edgekit import BUNDLES_DIR as DEFAULT_OUT, use_firmware
from edgekit import ports
from edgekit.boards import RUNTIMES, boards_option
from edgekit.errors import UserError
from edgekit.gateway import DEFAULT_HUB
from edgekit.certs.names import common_name, is_test_only
from edgekit.certs.pem import is_ca, CertError, key_matches, key_to_der, key_to_pem, load_certificates, \
    load_private_key, thumbprints, to_der, to_pem


def _firmware_defaults(keys):
    # The firmware's own defaults (azure_edge/bundle.py), read from there rather than copied.
    use_firmware()
    from azure_edge.bundle import DEFAULTS as firmware

    return {k: firmware[k] for k in keys}


# config.json keys after the credentials, written out with their values so a user sees what
# can be changed (docs/bundle.md documents them).
DEFAULTS = _firmware_defaults(("port", "interval", "sas_ttl", "sas_margin", "keepalive", "outbox_bytes",
                               "queue_qos0", "ntp_host", "set_aside_after"))
LOG_LEVELS = ("quiet", "info", "debug")
# The Digital Twins Definition Language's id syntax (DTDL v2/v3): segments, then ;version.
DTMI = re.compile(r"^dtmi:[A-Za-z](?:[A-Za-z0-9_]*[A-Za-z0-9])?(?::[A-Za-z](?:[A-Za-z0-9_]*[A-Za-z0-9])?)*"
                  r";[1-9][0-9]{0,8}$")
CSV_COLUMNS = ("device", "connection_string", "cert", "key")
# The update agent's deviceProperties when the bundle names none (as firmware azure_edge/adu_boot.py
# defaults them), and the bundle file with the ADU root keys trusted beside Microsoft's
# (azure_edge/adu_roots.py FILE).
ADU_MANUFACTURER, ADU_MODEL = "edgekit", "esp32"
ADU_ROOTS = "adu_roots.json"


class BundleError(ValueError):
    """Input that cannot make a working bundle; the message says what to fix."""


def _connstr():
    # The firmware's own parser: the bundle is checked by the code that will read it.
    use_firmware()
    from azure_edge import connstr

    return connstr


@dataclass
class Bundle:
    """A checked bundle, in memory: file name -> (bytes, private), plus what the user must do in Azure."""

    device: str
    runtime: str
    files: dict = field(repr=False)
    auth: str                      # shared_private_key, x509_thb or x509_ca
    hub_name: str
    gateway_host: str | None
    module_id: str | None
    sas_key: str | None = field(default=None, repr=False)
    thumbprint_sha1: str | None = None
    warnings: list = field(default_factory=list)


def _expired(cert, now):
    return cert.not_valid_after_utc < now


def _flag(option, loader, *args):
    # The readers name the file; the user also needs to know which option it came from.
    try:
        return loader(*args)
    except CertError as e:
        raise BundleError(f"{option} {e}".replace("--password", "--key-password")) from None


def _read_ca(path, now, warnings):
    certs = _flag("--ca", load_certificates, path)
    if len(certs) != 1:
        raise BundleError(f"--ca {path} holds {len(certs)} certificates; give the gateway's root CA alone"
                          " (e.g. certs/azure-iot-test-only.root.ca.cert.pem)")
    ca = certs[0]
    if not is_ca(ca):
        raise BundleError(f"--ca {path} is not a CA certificate ('{ca.subject.rfc4514_string()}' has no"
                          " basicConstraints CA:TRUE); give the root CA that signed the gateway's chain")
    if _expired(ca, now):
        raise BundleError(f"--ca {path} expired on {ca.not_valid_after_utc:%Y-%m-%d}; make a new CA")
    if ca.subject != ca.issuer:
        warnings.append(f"--ca {path} is not self-signed; the board will trust it as the anchor,"
                        " which works only if the gateway's chain stops at it")
    if is_test_only(os.path.basename(str(path)), ca.subject.rfc4514_string()):
        warnings.append(f"--ca {path} is an IoT Edge test-only CA: for development only, never in production")
    return ca


def _read_client(device_id, cert_path, key_path, key_password, now):
    certs = _flag("--cert", load_certificates, cert_path)
    key = _flag("--key", load_private_key, key_path, key_password)
    leaf = next((c for c in certs if key_matches(c, key)), None)
    if leaf is None:
        raise BundleError(f"--key {key_path} does not belong to the certificate in --cert {cert_path};"
                          " give the key that was made with that certificate")
    if is_ca(leaf):
        raise BundleError(f"--cert {cert_path} is a CA certificate; give the device's own certificate")
    cn = common_name(leaf.subject)
    if cn != device_id:
        raise BundleError(f"--cert {cert_path} has CN '{cn}' but the device is '{device_id}';"
                          " IoT Hub requires the certificate CN to be the device id")
    if _expired(leaf, now):
        raise BundleError(f"--cert {cert_path} expired on {leaf.not_valid_after_utc:%Y-%m-%d}; issue a new one")
    # Intermediates travel with the PEM leaf so the gateway can build the chain; the root never does.
    chain = [leaf] + [c for c in certs if c is not leaf and c.subject != c.issuer]
    return leaf, chain, key


def _toml_string(value, what):
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise BundleError(f"{what} contains a control character; settings.toml cannot hold it")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def plan_bundle(device, connection_string, ca, cert=None, key=None, runtime="micropython",
                wifi_ssid=None, wifi_password=None, interval=10, key_password=None, board=None, now=None,
                port=DEFAULTS["port"], require_gateway=False, log_level="info", model_id=None, adu_dev_root=None,
                adu=None):
    """Check the inputs and return a Bundle (nothing written); raise BundleError naming the problem.

    ca, cert and key are file paths (PEM or DER; cert may be a chain file). board is an
    optional edgekit.boards.Board: it fixes the runtime and adds board/led_pin to config.json.
    log_level: the board's console (quiet, info, debug). model_id: an IoT Plug and Play DTMI
    (dtmi:com:example:Thermostat;1) the device announces in its MQTT username. adu_dev_root: the data
    folder of a local gateway (`edgekit gateway serve --data`) whose dev root the board is to trust for
    updates (the bundle's adu_roots.json); only for a device of that gateway. adu: the update agent's
    config.json "adu" entry, {"manufacturer", "model"} (defaults: edgekit and the board's name); a dev
    root implies it.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if board is not None:
        runtime = board.runtime
    if runtime not in RUNTIMES:
        raise BundleError(f"unknown runtime '{runtime}'; use micropython or circuitpython")
    try:
        cs = _connstr().parse(connection_string)
    except ValueError as e:
        raise BundleError(f"connection string: {e}") from None
    if cs.device_id != device:
        raise BundleError(f"the connection string is for device '{cs.device_id}', not '{device}';"
                          " give the matching connection string or device name")
    if cs.module_id and cs.x509:
        raise BundleError("modules behind a gateway authenticate with a SharedAccessKey only;"
                          " use the module's key connection string")
    if bool(cert) != bool(key):
        raise BundleError("give both --cert and --key, or neither")
    if log_level not in LOG_LEVELS:
        raise BundleError(f"unknown log level '{log_level}'; use one of {', '.join(LOG_LEVELS)}")
    if model_id and not DTMI.match(model_id):
        raise BundleError(f"'{model_id}' is not a Plug and Play model id: it looks like"
                          " dtmi:com:example:Thermostat;1 (dtmi:<path>;<version>)")
    if cs.x509 and not cert:
        raise BundleError("the connection string says x509=true: give the device certificate and key"
                          " with --cert and --key")
    if cert and not cs.x509:
        raise BundleError("--cert/--key are only used with an x509=true connection string; this one has a"
                          " SharedAccessKey (drop --cert/--key, or use the x509=true string)")
    warnings = []
    if not cs.gateway_host_name and require_gateway:
        raise BundleError("the connection string has no GatewayHostName: the device would bypass the gateway;"
                          " add ;GatewayHostName=<the gateway's hostname from its config.toml>, or pass"
                          " --direct for a device that talks to IoT Hub itself")
    if not cs.gateway_host_name:
        warnings.append("the connection string has no GatewayHostName: the device will bypass the gateway and"
                        " go straight to the hub; add ;GatewayHostName=<the gateway's hostname from its config.toml>")
    try:
        ca_cert = _read_ca(ca, now, warnings)
        client = _read_client(device, cert, key, key_password, now) if cert else None
    except CertError as e:
        raise BundleError(str(e)) from None
    pem = runtime == "circuitpython"
    files = {}
    config = {"connection_string": connection_string.strip(), "wifi_ssid": wifi_ssid,
              "wifi_password": wifi_password, "ca": "ca.pem" if pem else "ca.der", "cert": None, "key": None}
    config.update(DEFAULTS)
    config["interval"] = interval
    config["port"] = port
    if log_level != "info":  # the firmware's default
        config["log_level"] = log_level
    if model_id:
        config["model_id"] = model_id
    if board is not None:
        config["board"] = board.name
        config["led_pin"] = board.led_pin
    files[config["ca"]] = (to_pem(ca_cert) if pem else to_der(ca_cert), False)
    auth, sha1 = "shared_private_key", None
    if client:
        leaf, chain, pkey = client
        ext = "pem" if pem else "der"
        config["cert"], config["key"] = f"device.cert.{ext}", f"device.key.{ext}"
        # Leaf first, then the intermediates, so a gateway trusting only the root can build the
        # chain: PEM blocks for CircuitPython, DER certificates back to back for MicroPython and
        # the host (this MicroPython's mbedTLS takes no PEM; azure_edge.net.der_certs splits them).
        files[config["cert"]] = (b"".join((to_pem if pem else to_der)(c) for c in chain), False)
        files[config["key"]] = (key_to_pem(pkey) if pem else key_to_der(pkey), True)
        self_signed = leaf.subject == leaf.issuer
        auth = "x509_thb" if self_signed else "x509_ca"
        sha1 = thumbprints(leaf)[0]
    if pem:
        if not wifi_ssid:
            warnings.append("no Wi-Fi SSID: settings.toml gets none, so the board will not join a network")
        else:
            toml = (f"CIRCUITPY_WIFI_SSID = {_toml_string(wifi_ssid, 'the Wi-Fi SSID')}\n"
                    f"CIRCUITPY_WIFI_PASSWORD = {_toml_string(wifi_password or '', 'the Wi-Fi password')}\n")
            files["settings.toml"] = (toml.encode(), True)
    if adu_dev_root and adu is None:
        adu = {}
    if adu is not None:
        # The agent's settings (firmware azure_edge/adu_boot.py): what it reports in deviceProperties,
        # and what an update's compatibility must name (docs/updates.md).
        config["adu"] = {"manufacturer": adu.get("manufacturer") or ADU_MANUFACTURER,
                         "model": adu.get("model") or (board.name if board is not None else ADU_MODEL)}
    if adu_dev_root:
        # adu_roots.json: the ADU root keys the board trusts beside Microsoft's, in the shape of a
        # root-key package's protected part (firmware azure_edge/adu_roots.py), read per deployment.
        files[ADU_ROOTS] = (adu_roots_json([_emulator_adu_root(adu_dev_root, device, cs)]), False)
    files["config.json"] = ((json.dumps(config, indent=2) + "\n").encode(), True)
    return Bundle(device=device, runtime=runtime, files=files, auth=auth,
                  hub_name=cs.host_name.split(".")[0], gateway_host=cs.gateway_host_name,
                  module_id=cs.module_id, sas_key=cs.shared_access_key, thumbprint_sha1=sha1,
                  warnings=warnings)


def adu_roots_json(roots):
    """The bundle's adu_roots.json for ADU root keys [{"kid", "n", "e"}] (n and e base64url, as
    edgekit.gateway.adu.dev_root gives them): the shape of a root-key package's protected part
    (rootKeys by kid: keyType, n, e as a number), which the firmware's adu_roots.load reads beside
    Microsoft's own roots for each deployment."""
    def number(text):
        return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")

    doc = {"rootKeys": {r["kid"]: {"keyType": "RSA", "n": r["n"], "e": number(r["e"])} for r in roots},
           "disabledRootKeys": [], "disabledSigningKeys": []}
    return (json.dumps(doc, indent=2) + "\n").encode()


def _emulator_adu_root(data_dir, device, cs):
    """The local gateway's ADU dev root, as {"kid", "n", "e"} (base64url), for a device of that gateway only.

    The dev root signs whatever `edgekit gateway update deploy` sends; a board of a real gateway that
    trusted it would take updates from anyone holding a laptop's key, so it is refused there.
    """
    from edgekit.gateway import adu, registry

    try:
        doc = registry.load(data_dir)
    except registry.RegistryError as e:
        raise BundleError(f"--adu-dev-root: {e}") from None
    host = doc.get("gateway_host")
    try:
        with open(os.path.join(data_dir, "gateway.json")) as f:
            host = json.load(f).get("hostname") or host
    except (OSError, ValueError):
        pass
    if device not in doc["devices"] or not host or cs.gateway_host_name != host:
        raise BundleError(f"--adu-dev-root {data_dir}: '{device}' (GatewayHostName={cs.gateway_host_name}) is not a "
                          f"device of that local gateway ({host or 'never served'}); the dev root goes only into "
                          "bundles for the emulator, never for a real gateway (which uses Microsoft's ADU roots)")
    return adu.dev_root(data_dir)


def write_bundle(bundle, out_dir=None, force=False):
    """Write bundle into OUT_DIR/<device>/ via a temporary folder and a rename; return the folder.

    An existing bundle is replaced only with force=True. Secrets (config.json, keys,
    settings.toml) are 0600, the folder 0700.
    """
    out_dir = Path(out_dir or DEFAULT_OUT)
    target = out_dir / bundle.device
    if target.exists() and not force:
        raise BundleError(f"{target} exists; pass --force to replace it")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{bundle.device}.", suffix=".tmp", dir=out_dir))
    old = None
    try:
        for name, (data, private) in bundle.files.items():
            fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp / name, 0o600 if private else 0o644)  # the umask must not widen or narrow these
        if target.exists():
            old = target.with_name(tmp.name + ".old")
            os.rename(target, old)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not target.exists():
            os.rename(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def make_bundle(device, connection_string, ca, out_dir=None, force=False, **options):
    """plan_bundle then write_bundle; return (folder, Bundle)."""
    bundle = plan_bundle(device, connection_string, ca, **options)
    return write_bundle(bundle, out_dir, force), bundle


def _masked(secret):
    return secret[:4] + "..." if secret else ""


def azure_commands(bundle, gateway_device_id=None):
    """The az CLI lines that register the device behind its gateway (keys never in full)."""
    hub = bundle.hub_name
    parent = gateway_device_id or "<gateway-device-id>"
    d = bundle.device
    if bundle.module_id:
        return [f"az iot hub device-identity create -n {hub} -d {d}   # skip if it exists",
                f"az iot hub device-identity parent set -n {hub} -d {d} --pd {parent}",
                f"DEVICE_KEY='<the SharedAccessKey of the connection string, starting {_masked(bundle.sas_key)}>'",
                f"az iot hub module-identity create -n {hub} -d {d} -m {bundle.module_id}"
                f' --am shared_private_key --pk "$DEVICE_KEY" --sk "$DEVICE_KEY"']
    lines = []
    if bundle.auth == "shared_private_key":
        lines.append(f"DEVICE_KEY='<the SharedAccessKey of the connection string, starting {_masked(bundle.sas_key)}>'")
        tail = ' --am shared_private_key --pk "$DEVICE_KEY" --sk "$DEVICE_KEY"'
    elif bundle.auth == "x509_thb":
        tail = f" --am x509_thb --ptp {bundle.thumbprint_sha1} --stp {bundle.thumbprint_sha1}"
    else:
        tail = " --am x509_ca"
    # The azure-iot extension's create takes no parent (azext_iot/operations/hub.py
    # iot_device_create): the parent is its own step, and the same one for an existing device.
    lines.append(f"az iot hub device-identity create -n {hub} -d {d}{tail}")
    lines.append(f"az iot hub device-identity parent set -n {hub} -d {d} --pd {parent}")
    if bundle.auth == "x509_ca":
        lines.append(f"az iot hub certificate create --hub-name {hub} -n <ca-name> -p <the CA that signed"
                     f" {d}'s certificate> --verified   # once per CA")
    return lines


def read_fleet(csv_path):
    """Rows of a fleet CSV (device,connection_string,cert,key) as dicts, paths resolved beside the CSV."""
    csv_path = Path(csv_path)
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise BundleError(f"cannot read {csv_path}: {e.strerror}") from None
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in CSV_COLUMNS[:2] if c not in header]
    if missing:
        raise BundleError(f"{csv_path} needs a header line with columns {','.join(CSV_COLUMNS)}"
                          f" (missing {', '.join(missing)})")
    rows, seen = [], set()
    for n, raw in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        if not any(row.values()):
            continue
        if not row["device"]:
            raise BundleError(f"{csv_path} line {n}: no device")
        if row["device"] in seen:
            raise BundleError(f"{csv_path} line {n}: device '{row['device']}' appears twice")
        seen.add(row["device"])
        for k in ("cert", "key"):
            row[k] = str(csv_path.parent / row[k]) if row.get(k) else None
        row["line"] = n
        rows.append(row)
    if not rows:
        raise BundleError(f"{csv_path} lists no devices")
    return rows


def make_fleet(csv_path, ca, out_dir=None, force=False, **options):
    """One bundle per CSV row; every row is checked before any is written. Return [(folder, Bundle)]."""
    planned = []
    for row in read_fleet(csv_path):
        try:
            planned.append(plan_bundle(row["device"], row["connection_string"], ca, cert=row["cert"],
                                       key=row["key"], **options))
        except BundleError as e:
            raise BundleError(f"{Path(csv_path).name} line {row['line']} ({row['device']}): {e}") from None
    out = Path(out_dir or DEFAULT_OUT)
    clash = [b.device for b in planned if (out / b.device).exists()]
    if clash and not force:
        raise BundleError(f"{out / clash[0]} exists; pass --force to replace it")
    written = []
    try:
        for b in planned:
            written.append((write_bundle(b, out, force), b))
    except BaseException:
        # A fleet is all or nothing: remove the bundles this run created (replaced ones are gone already).
        for folder, b in written:
            if b.device not in clash:
                shutil.rmtree(folder, ignore_errors=True)
        raise
    return written


def check_inputs(device, bundles_dir=None):
    """What `edgekit check --device D` takes from D's bundle: a dict of connection_string, ca,
    port and, for x509=true, cert and key (file paths in the bundle); BundleError if unreadable."""
    from edgekit.certs.pem import read_input

    folder = Path(bundles_dir or DEFAULT_OUT) / device
    try:
        config = json.loads(read_input(folder / "config.json"))
    except CertError as e:
        raise BundleError(f"no readable bundle for '{device}' ({e}); make it with edgekit bundle {device}") from None
    except ValueError:
        raise BundleError(f"{folder / 'config.json'} is not valid JSON; make the bundle again (edgekit bundle --force)") from None
    if not isinstance(config, dict) or not config.get("connection_string") or not config.get("ca"):
        raise BundleError(f"{folder / 'config.json'} has no connection_string or ca; make the bundle again")
    found = {"connection_string": config["connection_string"], "ca": str(folder / config["ca"]),
             "port": int(config.get("port") or DEFAULTS["port"]), "cert": None, "key": None}
    for k in ("cert", "key"):
        if config.get(k):
            found[k] = str(folder / config[k])
    return found


# --- CLI ---

def _encrypted(key_path):
    """True when the key file needs a password (any other problem is reported by the bundle)."""
    try:
        load_private_key(key_path, None)
    except CertError as e:
        return "is encrypted" in str(e)
    return False


def _report(folder, bundle):
    for w in bundle.warnings:
        click.echo(f"warning: {w}", err=True)
    click.echo(f"bundle for {bundle.device} ({bundle.runtime}, {bundle.auth}) in {folder}:")
    for name, (data, private) in sorted(bundle.files.items()):
        click.echo(f"  {name:<18} {len(data):6d} bytes  {'0600' if private else '0644'}")


@click.command("bundle")
@click.argument("device", required=False)
@boards_option
@click.option("--connection-string", "-c", envvar="EDGEKIT_CONNECTION_STRING",
              help="the device's connection string (with GatewayHostName=...); or set EDGEKIT_CONNECTION_STRING"
                   " to keep the key out of shell history")
@click.option("--ca", type=click.Path(), help="the gateway's root CA certificate (PEM or DER), or a certGen.sh"
                                             " output folder (its root CA)")
@click.option("--cert", type=click.Path(dir_okay=False), help="device certificate (x509=true only)")
@click.option("--key", type=click.Path(dir_okay=False), help="device private key (x509=true only)")
@click.option("--key-password", envvar="EDGEKIT_KEY_PASSWORD",
              help="password of an encrypted --key, or set EDGEKIT_KEY_PASSWORD; prompted (hidden) on a terminal"
                   " [the bundle key is written unencrypted]")
@click.option("--wifi-ssid", help="Wi-Fi network name (prompted when missing)")
@click.option("--wifi-password", help="Wi-Fi password (prompted, hidden, when missing)")
@click.option("--no-wifi", is_flag=True, help="no Wi-Fi settings (the simulated board and the host need none)")
@click.option("--runtime", type=click.Choice(RUNTIMES), default=None, help="[default: micropython]")
@click.option("--board", "board_name", help="board name (sets the runtime, adds board and led_pin to config.json)")
@click.option("--interval", type=click.IntRange(1), default=10, show_default=True, help="seconds between telemetry")
@click.option("--gateway-port", "port", type=click.IntRange(1, 65535), default=8883, show_default=True,
              help="the gateway's MQTT over TLS port")
@ports.old_spelling("--port", "old_port", type=click.IntRange(1, 65535))
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default="info", show_default=True,
              help="the board's console: quiet (problems only), info (a line per message), debug")
@click.option("--model-id", help="IoT Plug and Play model id (dtmi:...;N) the device announces")
@click.option("--gateway-device-id", help="the IoT Edge device's id, for the printed az commands")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False),
              help="make one bundle per row of device,connection_string,cert,key")
@click.option("--out", "--bundles", "out", type=click.Path(file_okay=False),
              help="where bundles go [bundles/ in the working folder, or $EDGEKIT_HOME/bundles]")
@click.option("--force", is_flag=True, help="replace an existing bundle")
@click.option("--direct", is_flag=True, help="allow a connection string without GatewayHostName (no gateway)")
@click.option("--adu-dev-root", "adu_dev_root", type=click.Path(file_okay=False, exists=True), default=None,
              metavar="DATA", help="the local gateway's data folder: the board trusts its ADU dev root for "
                                   "updates (emulator devices only; implies --adu; docs/updates.md)")
@click.option("--adu", "adu_on", is_flag=True, help="turn on the update agent (Device Update for IoT Hub)")
@click.option("--adu-manufacturer", help=f"the manufacturer the agent reports and updates must name "
                                         f"[default: {ADU_MANUFACTURER}; implies --adu]")
@click.option("--adu-model", help=f"the model the agent reports and updates must name "
                                  f"[default: the board's name, else {ADU_MODEL}; implies --adu]")
def bundle_cmd(device, connection_string, ca, cert, key, key_password, wifi_ssid, wifi_password, no_wifi,
               runtime, board_name, interval, port, old_port, log_level, model_id, gateway_device_id, csv_path,
               out, force, direct, adu_dev_root, adu_on, adu_manufacturer, adu_model):
    """Write DEVICE's bundle (config.json, CA, optional X.509 credentials) into bundles/DEVICE/."""
    from edgekit.boards import BoardError, load_board

    from click.core import ParameterSource

    port = ports.renamed(port, old_port, "--port", "--gateway-port")

    if csv_path and click.get_current_context().get_parameter_source("connection_string") \
            is ParameterSource.ENVIRONMENT:
        connection_string = None  # the CSV has one per device
    if csv_path and (device or connection_string or cert or key):
        raise UserError("--csv takes device, connection string, cert and key from the file; drop DEVICE,"
                        " --connection-string, --cert and --key")
    if not csv_path and not (device and connection_string):
        raise UserError("give DEVICE and --connection-string (or --csv devices.csv)")
    if not ca:
        raise UserError("--ca is required: the gateway's root CA (e.g. certs/azure-iot-test-only.root.ca.cert.pem)")
    if os.path.isdir(ca):
        from edgekit.certs import certgen  # a certGen.sh folder, as every certs command takes
        try:
            ca = certgen.find_root(ca)
        except CertError as e:
            raise UserError(str(e)) from None
    board = None
    if board_name:
        try:
            board = load_board(board_name)
        except BoardError as e:
            raise UserError(str(e)) from None
        if runtime and runtime != board.runtime:
            raise UserError(f"board {board.name} runs {board.runtime}, not {runtime}; drop --runtime")
    if no_wifi:
        wifi_ssid = wifi_password = None
    else:
        if not sys.stdin.isatty() and (wifi_ssid is None or wifi_password is None):
            raise UserError("give --wifi-ssid and --wifi-password (or --no-wifi for the simulated board)")
        if wifi_ssid is None:
            wifi_ssid = click.prompt("Wi-Fi SSID")
        if wifi_password is None:
            wifi_password = click.prompt("Wi-Fi password", hide_input=True, default="", show_default=False)
    if key and key_password is None and _encrypted(key) and sys.stdin.isatty():
        key_password = click.prompt(f"password of {key}", hide_input=True)
    options = dict(runtime=runtime or "micropython", wifi_ssid=wifi_ssid, wifi_password=wifi_password,
                   interval=interval, key_password=key_password, board=board, port=port,
                   require_gateway=not direct, log_level=log_level, model_id=model_id, adu_dev_root=adu_dev_root,
                   adu={"manufacturer": adu_manufacturer, "model": adu_model}
                   if adu_on or adu_manufacturer or adu_model else None)
    try:
        if csv_path:
            done = make_fleet(csv_path, ca, out, force, **options)
        else:
            done = [make_bundle(device, connection_string, ca, out, force, cert=cert, key=key, **options)]
    except BundleError as e:
        raise UserError(str(e)) from None
    for folder, b in done:
        _report(folder, b)
    first = done[0][1]
    if all(b.hub_name == DEFAULT_HUB.split(".")[0] for _, b in done):
        # The made-up hub of `edgekit gateway serve`: there is no Azure or IoT Edge box to set up.
        click.echo(f"\nfor the local gateway (hub {DEFAULT_HUB}): nothing to do in Azure; "
                   f"next: edgekit deploy <BOARD> -p <PORT> --device {first.device}")
        return
    click.echo("\nStill to do in Azure (az CLI with the azure-iot extension):")
    for folder, b in done:
        for line in azure_commands(b, gateway_device_id):
            click.echo(f"  {line}")
    if first.gateway_host:
        from edgekit.edgebox import gateway_steps

        click.echo("")
        for line in gateway_steps(first.gateway_host, ca, hub=first.hub_name, gateway_device_id=gateway_device_id):
            click.echo(line)
    click.echo(f"\nThen: edgekit deploy <BOARD> -p <PORT> --device {first.device}")
