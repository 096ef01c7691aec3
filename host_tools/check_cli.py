"""`edgekit check`: the click layer over edgekit.check."""
import click

from edgekit import check as checker
from edgekit.errors import UserError


@click.command("check")
@click.argument("target", metavar="HOST[:PORT]", required=False)
@click.option("--ca", "ca", required=True, type=click.Path(dir_okay=False),
              help="The gateway's root CA (PEM or DER): the only certificate trusted.")
@click.option("--connection-string", "connection_string", envvar="EDGEKIT_CONNECTION_STRING",
              help="Device connection string with GatewayHostName; enables the MQTT login"
                   " (or set EDGEKIT_CONNECTION_STRING to keep the key out of shell history).")
@click.option("--cert", type=click.Path(dir_okay=False), help="Device certificate (PEM, full chain) for x509=true.")
@click.option("--key", type=click.Path(dir_okay=False), help="Private key of --cert (PEM, unencrypted).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--timeout", default=5.0, show_default=True, type=float, help="Seconds allowed for each network step.")
def check_cmd(target, ca, connection_string, cert, key, as_json, timeout):
    """Check a gateway as a downstream device sees it: DNS, TCP, TLS, MQTT login.

    HOST defaults to GatewayHostName from the connection string; PORT to 8883.
    TLS trusts only --ca and checks chain and hostname. With a connection
    string (and --cert/--key for x509=true) it logs in with a real MQTT
    CONNECT; this briefly takes the device's place at the gateway. Exit code
    0 only when every step passed.
    """
    try:
        report = checker.run_check(target, ca, connection_string, cert, key, timeout)
    except checker.CheckError as e:
        raise UserError(str(e)) from None
    click.echo(checker.render_json(report) if as_json else checker.render_text(report))
    if not report.ok:
        raise SystemExit(1)
