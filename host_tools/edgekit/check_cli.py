"""`edgekit check`: the click layer over edgekit.check."""
import os

import click

from edgekit import check as checker
from edgekit.certs import certgen
from edgekit.certs.pem import CertError
from edgekit.errors import UserError


def _gateway_host(connection_string):
    try:
        return checker.connstr.parse(connection_string).connect_host
    except ValueError as e:
        raise checker.CheckError(f"connection string: {e}") from None


@click.command("check")
@click.argument("target", metavar="HOST[:PORT]", required=False)
@click.option("--ca", "ca", type=click.Path(),
              help="The gateway's root CA (PEM or DER), or a certGen.sh output folder: the only certificate trusted.")
@click.option("--device", help="Check as this device: connection string, CA, port and credentials from its bundle.")
@click.option("--bundles", "bundles_dir", type=click.Path(file_okay=False), default=None,
              help="Folder holding the bundles for --device [bundles/ in the working folder].")
@click.option("--connection-string", "connection_string", envvar="EDGEKIT_CONNECTION_STRING",
              help="Device connection string with GatewayHostName; enables the MQTT login"
                   " (or set EDGEKIT_CONNECTION_STRING to keep the key out of shell history).")
@click.option("--cert", type=click.Path(dir_okay=False), help="Device certificate (PEM, full chain) for x509=true.")
@click.option("--key", type=click.Path(dir_okay=False), help="Private key of --cert (PEM, unencrypted).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--timeout", default=5.0, show_default=True, type=float, help="Seconds allowed for each network step.")
def check_cmd(target, ca, device, bundles_dir, connection_string, cert, key, as_json, timeout):
    """Check a gateway as a downstream device sees it: DNS, TCP, TLS, TLS profile, MQTT login.

    HOST defaults to GatewayHostName from the connection string; PORT to 8883.
    TLS trusts only --ca and checks chain and hostname; the TLS profile step then
    tries each TLS version and TLS 1.2 suite and names the IoT Edge release it
    looks like (1.4, or 1.5/1.6, which TLS cannot tell apart). With a connection
    string (and --cert/--key for x509=true) it logs in with a real MQTT
    CONNECT; this briefly takes the device's place at the gateway. Exit code
    0 only when every step passed.
    """
    from edgekit.bundle import BundleError, check_inputs

    try:
        if ca and os.path.isdir(ca):
            ca = certgen.find_root(ca)
        if device:
            # Given options win; the bundle fills in the rest, its port included.
            found = check_inputs(device, bundles_dir)
            ca, connection_string = ca or found["ca"], connection_string or found["connection_string"]
            cert, key = cert or found["cert"], key or found["key"]
            if target is None:
                target = f"{_gateway_host(connection_string)}:{found['port']}"
            elif ":" not in target.rsplit("]", 1)[-1]:
                target = f"{target}:{found['port']}"
        report = checker.run_check(target, ca, connection_string, cert, key, timeout)
    except (checker.CheckError, BundleError, CertError) as e:
        raise UserError(str(e)) from None
    click.echo(checker.render_json(report) if as_json else checker.render_text(report))
    if not report.ok:
        raise SystemExit(1)
