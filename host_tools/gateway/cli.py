"""`edgekit gateway`: a thin click layer over serve, registry and hub."""
import functools
import json

import click

from edgekit.certs.pem import CertError
from edgekit.errors import UserError
from edgekit.gateway import DEFAULT_HUB, hub, registry
from edgekit.gateway.control import NotRunning
from edgekit.gateway.core import HubError
from edgekit.gateway.serve import ServeError
from edgekit.gateway.store import StoreError

_ERRORS = (registry.RegistryError, HubError, NotRunning, ServeError, StoreError, CertError)


def _user_error(e):
    return UserError(str(e))


def _user_errors(command):
    """Turn the gateway's own errors, raised anywhere in a command, into one-line CLI errors."""
    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except _ERRORS as e:
            raise _user_error(e)
    return run


def data_option(f):
    return click.option("--data", "data_dir", type=click.Path(file_okay=False), default="gateway-data",
                        envvar="EDGEKIT_GATEWAY_DATA", show_default=True,
                        help="the gateway's folder: registry, telemetry, twins (env EDGEKIT_GATEWAY_DATA)")(f)


@click.group("gateway")
def gateway():
    """A local edgeHub to develop downstream devices against (no Azure, no Docker).

    Start it with `serve`, register devices with `device add`, then drive them from the
    hub side with `telemetry`, `send-c2d`, `invoke-method`, `update-twin` and `twin`.
    """


@gateway.command("serve")
@click.option("--pki", "pki_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="output of 'edgekit certs demo' or a certGen.sh folder (certs/, private/)")
@click.option("--hostname", required=True, help="the name devices connect to (their GatewayHostName)")
@click.option("--bind", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", default=8883, show_default=True, type=int, help="MQTT over TLS port; 0 picks a free one")
@click.option("--max-clients", default=100, show_default=True, type=int,
              help="connected clients allowed at once (edgeHub's default is 100)")
@data_option
@_user_errors
def serve_cmd(pki_dir, hostname, bind, port, max_clients, data_dir):
    """Run the gateway until Ctrl-C, showing connections and telemetry as they come.

    Writes DATA/gateway.json ({"mqtt_port", "control_port", "pid", "hostname"}) once ready
    and prints `gateway ready on HOSTNAME:PORT`.
    """
    from edgekit.gateway import serve
    serve.run(pki_dir, hostname, data_dir, bind=bind, port=port, max_clients=max_clients)


@gateway.group("device")
def device():
    """The gateway's identity registry (DATA/registry.json)."""


@device.command("add")
@click.argument("device_id")
@click.option("--module", "module_id", default=None, help="add a module of DEVICE_ID (symmetric key only)")
@click.option("--x509-thumbprint", default=None, help="self-signed X.509: the certificate's SHA-1 or SHA-256")
@click.option("--x509-ca", is_flag=True, help="X.509 signed by the PKI root (CN = device id)")
@click.option("--no-parent", is_flag=True, help="register without this gateway as parent (edgeHub refuses it)")
@click.option("--gateway-host", default=None, help="GatewayHostName for the connection string "
                                                  "(default: the name serve runs with)")
@click.option("--hub", "hub_name", default=DEFAULT_HUB, show_default=True, help="the IoT Hub HostName")
@data_option
@_user_errors
def device_add(device_id, module_id, x509_thumbprint, x509_ca, no_parent, gateway_host, hub_name, data_dir):
    """Register a device or module and print its connection string (last line)."""
    cs = registry.add_device(data_dir, device_id, module_id=module_id, x509_thumbprint=x509_thumbprint,
                             x509_ca=x509_ca, parent=not no_parent, hub_name=hub_name,
                             gateway_host=gateway_host)
    if "GatewayHostName=" not in cs:
        click.echo("note: no GatewayHostName yet (serve never ran here); pass --gateway-host", err=True)
    if "SharedAccessKey=" in cs:
        click.echo("the connection string holds the device key: keep it out of git and chat", err=True)
    click.echo(cs)


@device.command("list")
@data_option
@_user_errors
def device_list(data_dir):
    """List registered identities (keys are not shown)."""
    rows = registry.list_devices(data_dir)
    for r in rows:
        name = r["device"] + ("/" + r["module"] if r["module"] else "")
        extra = f" thumbprint {r['thumbprint']}" if r["thumbprint"] else ""
        click.echo(f"{name}\t{r['auth']}\t{'parent' if r['parent'] else 'NO PARENT'}\t{r['hub']}{extra}")


@device.command("remove")
@click.argument("device_id")
@click.option("--module", "module_id", default=None, help="remove only this module")
@data_option
@_user_errors
def device_remove(device_id, module_id, data_dir):
    """Remove a device (with its modules) or one module."""
    registry.remove_device(data_dir, device_id, module_id)
    click.echo(f"removed {device_id}{'/' + module_id if module_id else ''}")


@gateway.command("telemetry")
@click.option("--follow", "-f", is_flag=True, help="keep printing new messages until Ctrl-C")
@data_option
def telemetry_cmd(follow, data_dir):
    """Print stored telemetry as JSON lines (works while serve runs or not)."""
    from edgekit.gateway.store import follow_telemetry
    try:
        for record in follow_telemetry(data_dir, follow=follow):
            click.echo(json.dumps(record, ensure_ascii=False))
    except KeyboardInterrupt:
        pass


def _props(pairs):
    out = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not k:
            raise click.BadParameter(f"{p!r} is not k=v", param_hint="--prop")
        out[k] = v
    return out


@gateway.command("send-c2d")
@click.argument("device_id")
@click.argument("body")
@click.option("--prop", "props", multiple=True, help="message property k=v (repeatable)")
@data_option
@_user_errors
def send_c2d_cmd(device_id, body, props, data_dir):
    """Send a cloud-to-device message (queued until the device takes it)."""
    result = hub.send_c2d(data_dir, device_id, body, _props(props))
    click.echo(f"{'delivered' if result['delivered'] else 'queued'} {result['mid']}")


def _json_arg(text, what):
    try:
        return json.loads(text)
    except ValueError as e:
        raise _user_error(f"{what} is not JSON ({e.msg} at column {e.colno}); quote it for the shell, "
                          "e.g. '{\"interval\": 5}'")


@gateway.command("invoke-method")
@click.argument("device_id")
@click.argument("name")
@click.option("--module", "module_id", default=None, help="call a module's method")
@click.option("--payload", default=None, help="JSON payload (default: null)")
@click.option("--timeout", default=30.0, show_default=True, type=float, help="seconds to wait (IoT Hub: 5-300)")
@data_option
@_user_errors
def invoke_method_cmd(device_id, name, module_id, payload, timeout, data_dir):
    """Invoke a direct method and print {"status": ..., "payload": ...}."""
    value = _json_arg(payload, "--payload") if payload is not None else None
    status, answer = hub.invoke_method(data_dir, device_id, name, value, timeout=timeout, module_id=module_id)
    click.echo(json.dumps({"status": status, "payload": answer}))


@gateway.command("update-twin")
@click.argument("device_id")
@click.argument("patch")
@click.option("--module", "module_id", default=None, help="patch a module's twin")
@data_option
@_user_errors
def update_twin_cmd(device_id, patch, module_id, data_dir):
    """Apply a desired-properties patch (JSON object) and print the new $version."""
    value = _json_arg(patch, "the patch")
    version = hub.update_twin(data_dir, device_id, value, module_id=module_id)
    click.echo(f"desired $version {version}")


@gateway.command("twin")
@click.argument("device_id")
@click.option("--module", "module_id", default=None, help="a module's twin")
@data_option
@_user_errors
def twin_cmd(device_id, module_id, data_dir):
    """Print an identity's twin (desired and reported) as JSON."""
    twin = hub.get_twin(data_dir, device_id, module_id=module_id)
    click.echo(json.dumps(twin, indent=2))


@gateway.command("status")
@data_option
@_user_errors
def status_cmd(data_dir):
    """List the identities connected right now."""
    rows = hub.status(data_dir)
    for r in rows:
        click.echo(f"{r['client_id']}\t{r['auth']}\t{r['peer']}\tsince {r['since']}\t{' '.join(r['subscriptions'])}")
    if not rows:
        click.echo("no device connected")
