"""`edgekit gateway`: a thin click layer over serve, registry and hub."""
import datetime
import functools
import json
import os
import re

import click

from edgekit import STATE_DIR, edgehub_profiles
from edgekit.certs.pem import CertError
from edgekit.errors import UserError
from edgekit.gateway import DEFAULT_HUB, adu, c2d, hub, registry
from edgekit.gateway.control import NotRunning
from edgekit.printable import printable
from edgekit.gateway.core import HubError
from edgekit.gateway.serve import ServeError
from edgekit.gateway.store import StoreError

_ERRORS = (registry.RegistryError, HubError, NotRunning, ServeError, StoreError, CertError, c2d.C2DError,
           adu.AduError)
# The HTTP-like status of each error in --json output (HubError carries its own).
_STATUS = {NotRunning: 503, StoreError: 500}
# State stays under a git-ignored folder of the working directory (or $EDGEKIT_HOME, as every
# other state folder) unless --data says otherwise.
DEFAULT_DATA = os.path.join(STATE_DIR, "gateway")


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


def _status(e):
    return getattr(e, "status", None) or _STATUS.get(type(e), 400)


def _fail(e, as_json):
    """End a command on a gateway error: one JSON line {"status", "error"} with --json, else one error line."""
    if as_json:
        click.echo(json.dumps({"status": _status(e), "error": str(e)}))
        raise SystemExit(1)
    raise _user_error(e)


# invoke-method's exit status when the device answered, but not with 2xx (its answer is still printed):
# scripts tell "the device said no" (3) from "it could not be asked" (1). `edgekit help exit-codes`.
DEVICE_REFUSED = 3


def hub_command(render, exit_status=None):
    """Give a command --json: its returned dict is printed as one JSON object, or as render(result) lines.

    Errors print {"status": N, "error": "..."} with --json (exit 1), else the usual one error line.
    exit_status(result), when given, is the exit status after printing (0 when it returns 0 or None).
    """
    def wrap(command):
        @click.option("--json", "as_json", is_flag=True, help="print one JSON object, errors included")
        @functools.wraps(command)
        def run(*args, as_json=False, **kwargs):
            try:
                result = command(*args, **kwargs)
            except _ERRORS as e:
                _fail(e, as_json)
            if as_json:
                click.echo(printable(json.dumps(result, ensure_ascii=False)))  # device-chosen text
            else:
                for line in render(result):
                    click.echo(line)
            if exit_status and exit_status(result):
                raise SystemExit(exit_status(result))
        return run
    return wrap


def data_option(f):
    return click.option("--data", "data_dir", type=click.Path(file_okay=False), default=DEFAULT_DATA,
                        envvar="EDGEKIT_GATEWAY_DATA", show_default=True,
                        help="the gateway's folder: registry, telemetry, twins (env EDGEKIT_GATEWAY_DATA)")(f)


@click.group("gateway")
def gateway():
    """A local edgeHub to develop downstream devices against (no Azure, no Docker).

    Start it with `serve`, register devices with `device add`, then drive them from the
    hub side with `telemetry`, `send-c2d`, `invoke-method`, `update-twin` and `twin`, and
    update them over the air with `update` (Device Update for IoT Hub, played locally).
    """


@gateway.command("serve")
@click.option("--pki", "pki_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="output of 'edgekit certs demo' or a certGen.sh folder (certs/, private/)")
@click.option("--hostname", required=True, help="the name devices connect to (their GatewayHostName)")
@click.option("--listen", default=None, metavar="[HOST:]PORT",
              help="where to listen for MQTT over TLS (default 127.0.0.1:8883); port 0 picks a free one, "
                   "printed and written to DATA/gateway.json")
@click.option("--detach", is_flag=True, help="run in the background; return once it is ready "
                                             "(stop it with 'edgekit gateway stop')")
@click.option("--bind", default=None, help="deprecated: use --listen HOST:PORT")
@click.option("--port", default=None, type=int, help="deprecated: use --listen [HOST:]PORT")
@click.option("--max-clients", default=100, show_default=True, type=int,
              help="connected clients allowed at once (edgeHub's default is 100)")
@click.option("--edgehub", type=click.Choice(list(edgehub_profiles.RELEASES)), default=edgehub_profiles.DEFAULT,
              show_default=True, help="IoT Edge release to behave as: 1.4 speaks TLS 1.2 only, 1.5 and 1.6 "
                                      "(the supported release) TLS 1.2 and 1.3")
@click.option("--trust-bundle", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CA certificates (PEM) CA-signed devices must chain to, like IoT Edge's "
                   "trust_bundle_cert (default: the PKI root only)")
@click.option("--web", "web", type=int, default=None, is_flag=False, flag_value=0, metavar="[PORT]",
              help="also serve the web view (devices, telemetry charts, twin, methods, C2D) on PORT;"
                   " without PORT a free one. Its URL, with the access token, is printed once")
@click.option("--web-bind", default="127.0.0.1", show_default=True, help="address of the web view")
@click.option("--upstream", "upstream_state", type=click.Choice(["online", "offline"]), default="online",
              show_default=True, help="whether the gateway reaches IoT Hub at start; offline holds telemetry "
                                      "(change it with 'edgekit gateway upstream')")
@click.option("--ttl", type=click.FloatRange(min=0, min_open=True), default=7200, show_default=True,
              metavar="SECONDS", help="store-and-forward time to live: held telemetry older than this is "
                                      "dropped (edgeHub's storeAndForwardConfiguration.timeToLiveSecs)")
@click.option("--cache-port", type=click.IntRange(0, 65535), default=None, metavar="PORT",
              help="port of the Connected Cache that serves update files (0: a free one) [default: 80, or a free "
                   "port when 80 cannot be had; started when DATA holds updates or at the first deploy]")
@data_option
@_user_errors
def serve_cmd(pki_dir, hostname, listen, detach, bind, port, max_clients, edgehub, trust_bundle, web, web_bind,
              upstream_state, ttl, cache_port, data_dir):
    """Run the gateway until Ctrl-C, showing connections and telemetry as they come.

    Writes DATA/gateway.json ({"mqtt_port", "control_port", "pid", "hostname"}) once ready
    and prints `gateway ready on HOSTNAME:PORT`. With --detach it runs in the background
    (output in DATA/serve.log) and this command returns once it is ready.
    """
    bind, port = listen_address(listen, bind, port)
    if detach:
        from edgekit.gateway import background
        args = ["--listen", format_listen(bind, port)] + _given_options(skip={"listen", "bind", "port", "detach",
                                                                                "data_dir"})
        info = background.start(args, data_dir)
        for line in info["warnings"]:
            click.echo(line, err=True)
        if info["web_url"]:
            click.echo(f"web view on {info['web_url']}")  # as the foreground form: the token is the key
        click.echo(f"gateway ready on {hostname}:{info['mqtt_port']} (listening on "
                   f"{format_listen(bind, info['mqtt_port'])}), pid {info['pid']}, log {info['log']}")
        click.echo(f"stop it with: edgekit gateway stop --data {data_dir}")
        return
    from edgekit.gateway import serve
    serve.run(pki_dir, hostname, data_dir, bind=bind, port=port, max_clients=max_clients, edgehub=edgehub,
              trust_bundle=trust_bundle, web=web, web_bind=web_bind, upstream_state=upstream_state, ttl=ttl,
              cache_port=cache_port)


def _given_options(skip):
    """The current command's options as given (defaults left out), to run it again in a child."""
    ctx = click.get_current_context()
    argv = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if not isinstance(param, click.Option) or param.name in skip or value is None or value == param.default:
            continue
        flag = param.opts[-1] if param.opts[-1].startswith("--") else param.opts[0]
        if param.is_flag and not param.is_bool_flag:
            argv += [flag, str(value)] if param.flag_value != value else [flag]
        elif param.is_flag:
            argv += [flag] if value else []
        else:
            for v in value if param.multiple else [value]:
                argv += [flag, str(v)]
    return argv


def listen_address(listen, bind=None, port=None):
    """(host, port) from --listen [HOST:]PORT, or from the deprecated --bind/--port (with a notice)."""
    if bind is not None or port is not None:
        if listen is not None:
            raise _user_error("give --listen alone; --bind and --port are its old spellings")
        click.echo("note: --bind/--port are deprecated and go in the next release; "
                   f"use --listen {format_listen(bind or '127.0.0.1', 8883 if port is None else port)}", err=True)
        return bind or "127.0.0.1", 8883 if port is None else port
    if listen is None:
        return "127.0.0.1", 8883
    m = re.fullmatch(r"(?:\[([0-9A-Fa-f:.]+)\]:|([^:\[\]]+):)?(\d{1,5})", listen.strip())
    if not m or int(m.group(3)) > 65535:
        raise _user_error(f"--listen {listen!r} is not [HOST:]PORT (e.g. 8883, 0.0.0.0:8883, [::1]:0; "
                          "port 0 picks a free one)")
    return m.group(1) or m.group(2) or "127.0.0.1", int(m.group(3))


def format_listen(host, port):
    """HOST:PORT, with brackets around an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@gateway.command("stop")
@data_option
@hub_command(lambda r: [f"gateway stopped (pid {r['pid']})" if r["stopped"] else "gateway was not running"])
def stop_cmd(data_dir):
    """Stop the gateway serving DATA (one started with `serve --detach`, or any other)."""
    from edgekit.gateway import background
    pid = background.stop(data_dir)
    return {"status": 200, "stopped": pid is not None, "pid": pid}


@gateway.group("device")
def device():
    """The gateway's identity registry (DATA/registry.json)."""


@device.command("add")
@click.argument("device_id")
@click.option("--force", is_flag=True, help="replace an existing identity of that id (new credentials)")
@click.option("--module", "module_id", default=None, help="add a module of DEVICE_ID (symmetric key only)")
@click.option("--x509-thumbprint", default=None, help="self-signed X.509: the certificate's SHA-1 or SHA-256")
@click.option("--x509-secondary-thumbprint", default=None, help="a second accepted thumbprint (SHA-1 or SHA-256)")
@click.option("--x509-ca", is_flag=True, help="X.509 chained to the trust bundle (CN = device id)")
@click.option("--primary-key", default=None, help="symmetric primary key, base64 (default: a fresh one)")
@click.option("--secondary-key", default=None, help="symmetric secondary key, base64 (default: a fresh one)")
@click.option("--no-parent", is_flag=True, help="register without this gateway as parent (edgeHub refuses it)")
@click.option("--gateway-host", default=None, help="GatewayHostName for the connection string "
                                                  "(default: the name serve runs with)")
@click.option("--hub", "hub_name", default=DEFAULT_HUB, show_default=True, help="the IoT Hub HostName")
@data_option
@hub_command(lambda r: [r["connection_string"]])
def device_add(device_id, force, module_id, x509_thumbprint, x509_secondary_thumbprint, x509_ca, primary_key,
               secondary_key, no_parent, gateway_host, hub_name, data_dir):
    """Register a device or module and print its connection string (last line).

    Symmetric-key identities have a primary and a secondary key; tokens signed with either
    are accepted. The printed connection string carries the primary.
    """
    if not force:
        _refuse_existing(data_dir, device_id, module_id)
    cs = registry.add_device(data_dir, device_id, module_id=module_id, x509_thumbprint=x509_thumbprint,
                             x509_ca=x509_ca, parent=not no_parent, hub_name=hub_name,
                             gateway_host=gateway_host, secondary_thumbprint=x509_secondary_thumbprint,
                             primary_key=primary_key, secondary_key=secondary_key, replace=force)
    if "GatewayHostName=" not in cs:
        click.echo("note: no GatewayHostName yet (serve never ran here); pass --gateway-host", err=True)
    if "SharedAccessKey=" in cs:
        click.echo("the connection string holds the device key: keep it out of git and chat", err=True)
    _warn_if_shared(data_dir)
    return {"status": 200, "device": device_id, "module": module_id, "connection_string": cs}


def _warn_if_shared(data_dir):
    # The gateway creates DATA 0700; a folder made beforehand may let other users list it.
    mode = os.stat(data_dir).st_mode & 0o777
    if mode & 0o077:
        click.echo(f"note: {data_dir} is open to other users (mode {mode:o}); 'chmod 700 {data_dir}' "
                   "keeps its device keys private", err=True)


def _name(device_id, module_id):
    return device_id + ("/" + module_id if module_id else "")


def _refuse_existing(data_dir, device_id, module_id):
    # Said here, with the way out, before add_device (which refuses too, for a concurrent add).
    if registry.lookup(registry.load(data_dir), device_id, module_id) is None:
        return
    name = _name(device_id, module_id)
    show = f"edgekit gateway device show {device_id}{' --module ' + module_id if module_id else ''} " \
           f"--connection-string --data {data_dir}"
    raise HubError(409, f"'{name}' already exists; '{show}' prints its connection string, "
                        "--force replaces it with new credentials")


@device.command("show")
@click.argument("device_id")
@click.option("--module", "module_id", default=None, help="a module of DEVICE_ID")
@click.option("--connection-string", "only_cs", is_flag=True, help="print only the connection string")
@data_option
@hub_command(lambda r: [r["connection_string"]] if "connection_string" in r else
             [f"{k}\t{v}" for k, v in r.items() if k != "status" and v is not None])
def device_show(device_id, module_id, only_cs, data_dir):
    """Show a registered identity (no key); with --connection-string, print its connection string again."""
    cs = registry.show_connection_string(data_dir, device_id, module_id)
    if cs is None:
        raise HubError(404, registry.unknown(data_dir, device_id, module_id))
    if only_cs:
        return {"status": 200, "device": device_id, "module": module_id, "connection_string": cs}
    [row] = [r for r in registry.list_devices(data_dir) if (r["device"], r["module"]) == (device_id, module_id)]
    return {"status": 200, **row}


def _device_rows(r):
    for d in r["devices"]:
        extra = f" thumbprint {d['thumbprint']}" if d["thumbprint"] else ""
        yield f"{_name(d['device'], d['module'])}\t{d['auth']}\t{'parent' if d['parent'] else 'NO PARENT'}" \
              f"\t{d['hub']}{extra}"


@device.command("list")
@data_option
@hub_command(_device_rows)
def device_list(data_dir):
    """List registered identities (keys are not shown)."""
    return {"status": 200, "devices": registry.list_devices(data_dir)}


@device.command("remove")
@click.argument("device_id")
@click.option("--module", "module_id", default=None, help="remove only this module")
@data_option
@hub_command(lambda r: [f"removed {r['removed']}"])
def device_remove(device_id, module_id, data_dir):
    """Remove a device (with its modules) or one module."""
    registry.remove_device(data_dir, device_id, module_id)
    return {"status": 200, "removed": _name(device_id, module_id)}


@device.command("tag")
@click.argument("device_id")
@click.argument("tags", nargs=-1)
@click.option("--remove", "remove", multiple=True, metavar="NAME", help="remove this tag (repeatable)")
@data_option
@hub_command(lambda r: [f"{r['device']}: " + (" ".join(f"{k}={v}" for k, v in sorted(r["tags"].items()))
                                              or "no tags")])
def device_tag(device_id, tags, remove, data_dir):
    """Set a device's twin tags, NAME=VALUE (ADU groups devices by ADUGroup=<group>); print them all.

    The tags are the twin's, as in IoT Hub: the running gateway keeps them (the web view edits the same).
    """
    patch = {}
    for t in tags:
        k, sep, v = t.partition("=")
        if not sep or not k:
            raise HubError(400, f"tag {t!r} is not NAME=VALUE, e.g. ADUGroup=lab")
        patch[k] = v
    patch.update((name, None) for name in remove)  # null deletes, as in a twin patch
    return {"status": 200, "device": device_id, "tags": hub.update_tags(data_dir, device_id, patch)}


def _since(text):
    """--since: an ISO 8601 time, or an age such as 30s, 10m, 2h, 1d (that long ago)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if m:
        seconds = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=seconds)
    try:
        return c2d.parse_time(text, "--since")
    except c2d.C2DError:
        raise HubError(400, f"--since {text!r} is neither an ISO 8601 time (2026-01-31T12:00:00Z) "
                            "nor an age like 30s, 10m, 2h")


@gateway.command("telemetry")
@click.option("--device", "device_id", default=None, help="only this device's messages")
@click.option("--module", "module_id", default=None, help="only this module's messages (with --device)")
@click.option("--since", default=None, help="only messages stored since: ISO 8601 time, or an age (30s, 10m, 2h)")
@click.option("--wait", default=None, type=click.FloatRange(min=0), metavar="SECONDS",
              help="wait this long for a first message; exit 1 when none comes")
@click.option("--follow", "-f", is_flag=True, help="keep printing new messages (until Ctrl-C, or for --wait seconds)")
@click.option("--held", is_flag=True, help="what the gateway still holds for IoT Hub (its upstream offline), "
                                           "not what IoT Hub received; the count of expired ones on stderr")
@click.option("--json", "as_json", is_flag=True, help="errors as JSON too (messages are always JSON lines)")
@data_option
def telemetry_cmd(device_id, module_id, since, wait, follow, held, as_json, data_dir):
    """Print stored telemetry as JSON lines, each with "payload" (the body decoded).

    Works while serve runs or not. In scripts: `--device D --since 10s --wait 30` waits for
    D's next message and exits 1 if none arrives in time.
    """
    try:
        hub.check_source(data_dir, device_id, module_id)
    except _ERRORS as e:
        _fail(e, as_json)
    if held:
        for record in hub.held_telemetry(data_dir, device_id, module_id):
            click.echo(printable(json.dumps(record, ensure_ascii=False)))
        click.echo(f"{hub.expired_count(data_dir)} message(s) expired at the gateway past the time to live",
                   err=True)
        return
    try:
        since_t = _since(since) if since else None
        for record in hub.telemetry(data_dir, device_id, module_id, since=since_t, wait=wait, follow=follow):
            click.echo(printable(json.dumps(record, ensure_ascii=False)))  # C1 controls too
    except KeyboardInterrupt:
        pass
    except _ERRORS as e:
        _fail(e, as_json)


def _props(pairs):
    out = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not k:
            raise HubError(400, f"--prop {p!r} is not k=v")
        out[k] = v
    return out


def _expiry(text):
    """--expiry: seconds from now, or an ISO 8601 time; the $.exp value."""
    if text is None:
        return None
    try:
        seconds = float(text)
    except ValueError:
        return text  # an ISO time: c2d.system_properties checks it
    return c2d.iso_utc(datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds))


@gateway.command("send-c2d")
@click.argument("device_id")
@click.argument("body")
@click.option("--prop", "props", multiple=True, help="message property k=v (repeatable)")
@click.option("--message-id", default=None, help="$.mid (default: a fresh UUID)")
@click.option("--correlation-id", default=None, help="$.cid")
@click.option("--content-type", default=None, help="$.ct, e.g. application/json")
@click.option("--content-encoding", default=None, help="$.ce, e.g. utf-8")
@click.option("--expiry", default=None, help="$.exp: seconds from now, or an ISO 8601 time; "
                                            "not delivered after it")
@click.option("--wait", default=None, type=click.FloatRange(min=0), metavar="SECONDS",
              help="wait up to this long for the device to acknowledge it (the state printed is what it became)")
@data_option
@hub_command(lambda r: [f"{r['state']} {r['mid']}"])
def send_c2d_cmd(device_id, body, props, message_id, correlation_id, content_type, content_encoding, expiry,
                 wait, data_dir):
    """Send a cloud-to-device message; print its state (queued until the device acknowledges it) and id.

    As IoT Hub, it returns once the message is queued; --wait N waits up to N seconds for the
    device's acknowledgement, and `c2d-state DEVICE MID` asks later.
    """
    system = {"$.mid": message_id, "$.cid": correlation_id, "$.ct": content_type, "$.ce": content_encoding,
              "$.exp": _expiry(expiry)}
    system = {k: v for k, v in system.items() if v is not None}
    c2d.system_properties(system)  # bad input is refused here, before the gateway is asked
    result = hub.send_c2d(data_dir, device_id, body, _props(props), system=system, wait=wait)
    return {"status": 200, **result}


@gateway.command("c2d-state")
@click.argument("device_id")
@click.argument("mid")
@data_option
@hub_command(lambda r: [f"{r['state']} {r['mid']}"])
def c2d_state_cmd(device_id, mid, data_dir):
    """Print what became of a C2D message: queued, delivered, expired or unknown."""
    return {"status": 200, "mid": mid, "state": hub.c2d_state(data_dir, device_id, mid)}


def _json_arg(text, what):
    try:
        return json.loads(text)
    except ValueError as e:
        raise HubError(400, f"{what} is not JSON ({e.msg} at column {e.colno}); quote it for the shell, "
                            "e.g. '{\"interval\": 5}'")


@gateway.command("invoke-method")
@click.argument("device_id")
@click.argument("name")
@click.option("--module", "module_id", default=None, help="call a module's method")
@click.option("--payload", default=None, help="JSON payload (default: null)")
@click.option("--timeout", default=30.0, show_default=True, type=float, help="seconds to wait (IoT Hub: 5-300)")
@data_option
@hub_command(lambda r: [json.dumps(r)], exit_status=lambda r: 0 if 200 <= r["status"] < 300 else DEVICE_REFUSED)
def invoke_method_cmd(device_id, name, module_id, payload, timeout, data_dir):
    """Invoke a direct method and print {"status": ..., "payload": ...} (the device's status).

    Exit status: 0 when the device answers 2xx, 3 when it answers another status (an unknown
    method is 404), 1 when it cannot be asked (not registered, not connected, no answer in time).
    """
    value = _json_arg(payload, "--payload") if payload is not None else None
    status, answer = hub.invoke_method(data_dir, device_id, name, value, timeout=timeout, module_id=module_id)
    return {"status": status, "payload": answer}


@gateway.command("update-twin")
@click.argument("device_id")
@click.argument("patch")
@click.option("--module", "module_id", default=None, help="patch a module's twin")
@data_option
@hub_command(lambda r: [f"desired $version {r['version']}"])
def update_twin_cmd(device_id, patch, module_id, data_dir):
    """Apply a desired-properties patch (JSON object) and print the new $version."""
    value = _json_arg(patch, "the patch")
    return {"status": 200, "version": hub.update_twin(data_dir, device_id, value, module_id=module_id)}


@gateway.command("twin")
@click.argument("device_id")
@click.option("--module", "module_id", default=None, help="a module's twin")
@data_option
@hub_command(lambda r: [json.dumps(r["twin"], indent=2)])
def twin_cmd(device_id, module_id, data_dir):
    """Print an identity's twin (desired and reported) as JSON."""
    return {"status": 200, "twin": hub.get_twin(data_dir, device_id, module_id=module_id)}


def _status_rows(r):
    for c in r["connections"]:
        fields = (c['client_id'], c['auth'], c['peer'], f"since {c['since']}", ' '.join(c['subscriptions']))
        yield "\t".join(printable(f) for f in fields)  # the filters are the device's choice
    if not r["connections"]:
        yield "no device connected"


@gateway.command("status")
@data_option
@hub_command(_status_rows)
def status_cmd(data_dir):
    """List the identities connected right now."""
    return {"status": 200, "connections": hub.status(data_dir)}


@gateway.command("upstream")
@click.argument("state", required=False, type=click.Choice(["online", "offline"]))
@data_option
@hub_command(lambda r: [f"upstream {r['upstream']}: {r['held']} message(s) held, {r['expired']} expired "
                        f"(time to live {r['ttl']:g} s)"])
def upstream_cmd(state, data_dir):
    """Show the gateway's link to IoT Hub, or cut it (offline) and restore it (online).

    Offline, devices keep the gateway: telemetry is held and forwarded in order when online again
    (what outlives the time to live is dropped and counted), twin reads come from the gateway's
    cache, and methods and C2D from IoT Hub cannot come down.
    """
    return {"status": 200, **hub.upstream(data_dir, state)}


@gateway.group("update")
def update():
    """Device Update for IoT Hub, played locally: import, deploy, cancel, status (docs/updates.md).

    Deploys write the twin's desired deviceUpdate component as ADU does, signed with this
    gateway's dev root (DATA/adu); the files come from the gateway's Connected Cache.
    """


def _targets_options(f):
    f = click.option("--group", default=None, help="every device whose twin tag ADUGroup is GROUP")(f)
    return click.option("--device", "devices", multiple=True, help="a device (repeatable)")(f)


@update.command("import")
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--replace", is_flag=True, help="import again an update already imported")
@data_option
@hub_command(lambda r: [f"imported {r['update']}"] + [f"  {f['id']}  {f['fileName']}  {f['sizeInBytes']} bytes"
                                                      for f in r["files"]])
def update_import_cmd(manifest, replace, data_dir):
    """Import an update: its import manifest v5 (edgekit update create) and the files beside it."""
    return {"status": 200, **adu.import_update(data_dir, manifest, replace=replace)}


@update.command("deploy")
@click.argument("update_id", metavar="PROVIDER/NAME/VERSION")
@_targets_options
@data_option
@hub_command(lambda r: [f"deployed {r['update']} (workflow {r['workflow']}) to "
                        f"{', '.join(d['device'] for d in r['devices'])}; files from the cache on port "
                        f"{r['cache_port']}"])
def update_deploy_cmd(update_id, devices, group, data_dir):
    """Deploy an imported update to devices or a group (the gateway must be running)."""
    return {"status": 200, **adu.deploy(data_dir, update_id, devices, group)}


@update.command("cancel")
@_targets_options
@data_option
@hub_command(lambda r: [f"cancelled workflow {d['workflow']} on {d['device']}" for d in r["devices"]])
def update_cancel_cmd(devices, group, data_dir):
    """Cancel the deployment to devices or a group (workflow action 255)."""
    return {"status": 200, **adu.cancel(data_dir, devices, group)}


def _update_rows(r):
    for d in r["devices"]:
        dep = d["deployment"] or {}
        last = d["last_install_result"] or {}
        yield "\t".join(printable(str(x)) for x in (
            d["device"], dep.get("update", "-"), d["result"], f"state {d['state_name']}",
            f"installed {d['installed_update'] or '-'}", f"result {last.get('resultCode', '-')}/"
            f"{last.get('extendedResultCode', '-')}"))
    if not r["devices"]:
        yield "no deployment yet"


@update.command("status")
@_targets_options
@data_option
@hub_command(_update_rows)
def update_status_cmd(devices, group, data_dir):
    """Per device: the deployment, the agent's state, installed update and last install result."""
    return {"status": 200, "devices": adu.status(data_dir, devices, group)}
