"""`edgekit certs`: a thin click layer over convert, inspect, verify and demo."""
import datetime
import json
import os

import click

from edgekit.certs import certgen
from edgekit.certs.pem import CertError
from edgekit.errors import UserError


def _user_error(message):
    return UserError(message)


def _parse_at(value):
    if value is None:
        return None
    try:
        at = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise _user_error(f"--at '{value}' is not a date; use YYYY-MM-DD or YYYY-MM-DDTHH:MM (UTC)")
    return at if at.tzinfo else at.replace(tzinfo=datetime.timezone.utc)


@click.group("certs")
def certs_group():
    """Certificates for the gateway and its devices: convert, inspect, verify, demo.

    Every command also takes a certGen.sh output folder (the one holding certs/ and
    private/) where it expects a file, and finds the root, chains and device
    certificates by their conventional names.
    """


@certs_group.command("convert")
@click.argument("src", type=click.Path(dir_okay=True))
@click.argument("dst", type=click.Path())
@click.option("--to", "to", type=click.Choice(["der", "pem"]), default=None,
              help="Output format; default from DST's extension (.der/.cer or .pem/.crt).")
@click.option("--password", envvar="EDGEKIT_KEY_PASSWORD", default=None,
              help="Password of an encrypted key (or set EDGEKIT_KEY_PASSWORD).")
@click.option("--root", is_flag=True, help="From a bundle (e.g. a -full-chain file), write only the self-signed root.")
@click.option("--match", "match", type=click.Path(), default=None,
              help="For a key: the certificate it must belong to; refuse a mismatch.")
def convert_cmd(src, dst, to, password, root, match):
    """Convert a certificate or key for the board.

    \b
    Certificates: PEM <-> DER. A bundle becomes DST-1, DST-2, ... unless --root.
    Keys (PKCS#1, SEC1, PKCS#8, encrypted or not): unencrypted DER (PKCS#8) that
    MicroPython's ssl loads, or PEM with --to pem; written 0600.
    SRC may be a certGen folder: its root CA is converted.
    \b
    Examples:
      edgekit certs convert pki/certs/azure-iot-test-only.root.ca.cert.pem ca.der
      edgekit certs convert pki/ ca.der
      edgekit certs convert device.key.pem device.key.der --match device.cert.pem
    """
    from edgekit.certs.convert import convert

    try:
        written = convert(src, dst, to=to, password=password, root=root, match=match)
    except CertError as e:
        raise _user_error(str(e))
    for path in written:
        mode = " (private key, mode 0600)" if os.stat(path).st_mode & 0o077 == 0 else ""
        click.echo(f"wrote {path}{mode}")


@certs_group.command("inspect")
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--at", "at", default=None, help="Judge validity at this UTC date instead of now (YYYY-MM-DD).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON list, one object per certificate ('edgekit help json' shows its keys).")
def inspect_cmd(files, at, as_json):
    """Show subject, issuer, SAN, key, CA flag, validity and thumbprints.

    Thumbprints are upper-case hex as IoT Hub shows them (register the SHA-1 or
    SHA-256 of a self-signed device certificate). Warns on expired, not yet valid,
    expiring-within-7-days and IoT Edge test-only certificates. FILES may be
    certificate files, bundles, DER files or certGen folders.
    """
    from edgekit.certs.inspect import format_info, info_dict, inspect_file

    when = _parse_at(at)
    paths = []
    try:
        for f in files:
            paths += certgen.scan(f).all_certificates() if os.path.isdir(f) else [f]
        infos = [(p, inspect_file(p, when)) for p in paths]
    except CertError as e:
        raise _user_error(str(e))
    if as_json:
        click.echo(json.dumps([info_dict(info) for _, items in infos for info in items], indent=2))
        return
    for n, (p, items) in enumerate(infos):
        if n:
            click.echo()
        for i, info in enumerate(items):
            for line in format_info(info, i, len(items)):
                click.echo(line)


@certs_group.command("verify")
@click.argument("chains", nargs=-1, required=True, type=click.Path())
@click.option("--ca", "ca", type=click.Path(), default=None,
              help="Trusted root CA (the file the device embeds); default: the root of a certGen folder given as CHAIN.")
@click.option("--hostname", default=None, help="Name the device connects to (GatewayHostName); checked against SAN like mbedTLS.")
@click.option("--at", "at", default=None, help="Check validity at this UTC date instead of now (YYYY-MM-DD).")
@click.option("--purpose", type=click.Choice(["server", "client"]), default=None,
              help="Required extendedKeyUsage of the leaf; default server (client for iot-device-* files).")
@click.option("--key", "key", type=click.Path(), default=None, help="Private key that must match the leaf.")
@click.option("--password", envvar="EDGEKIT_KEY_PASSWORD", default=None, help="Password of an encrypted --key.")
def verify_cmd(chains, ca, hostname, at, purpose, key, password):
    """Verify CHAIN (leaf plus intermediates, any order) up to the root given with --ca.

    Checks signatures, basic constraints, keyCertSign, EKU, validity and the hostname
    with the rules of mbedTLS (MicroPython's TLS): wildcards only as the whole first
    label, IP addresses against IP SANs, the CN only when there is no SAN.
    Prints 'Verification: OK' or one 'error:' line per problem (exit 1).
    """
    from edgekit.certs.pem import load_certificates, load_private_key
    from edgekit.certs.verify import verify_chain

    when = _parse_at(at)
    try:
        files = []
        for c in chains:
            if os.path.isdir(c):
                found = certgen.scan(c)
                files += found.chains()
                if ca is None and found.root:
                    ca = found.root
            else:
                files.append(c)
        if ca is None:
            raise CertError("no root CA: pass the gateway's root CA with --ca (or a certGen folder)")
        if os.path.isdir(ca):
            ca = certgen.find_root(ca)
        roots = load_certificates(ca)
        pkey = load_private_key(key, password) if key else None
        loaded = [(f, load_certificates(f)) for f in files]
        results = []
        for f, chain in loaded:
            use = purpose or ("client" if os.path.basename(f).startswith("iot-device-") else "server")
            # A hostname is a server's; device (client) chains are not checked against it.
            name = hostname if use == "server" else None
            results.append((f, verify_chain(roots, chain, hostname=name, at=when, purpose=use, key=pkey)))
    except CertError as e:
        raise _user_error(str(e))
    many = len(results) > 1
    failed = False
    for f, r in results:
        prefix = f"{f}: " if many else ""
        for w in r.warnings:
            click.echo(f"warning: {prefix}{w}", err=True)
        for p in r.problems:
            click.echo(f"error: {prefix}{p}", err=True)
        if r.ok:
            click.echo(f"{prefix}Verification: OK")
        failed = failed or not r.ok
    if failed:
        raise SystemExit(1)


@certs_group.command("demo")
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option("--gateway-host", required=True,
              help="The gateway's hostname exactly as in its config.toml (and GatewayHostName).")
@click.option("--device", "devices", multiple=True, help="Device ID to make certificates for (repeatable).")
@click.option("--algo", type=click.Choice(["ecc", "rsa"]), default="ecc", show_default=True,
              help="ecc: P-256 everywhere; rsa: certGen's 4096-bit CAs and 2048-bit leaves.")
@click.option("--days", type=int, default=30, show_default=True, help="Validity of every certificate.")
@click.option("--edge-ca-name", default="gateway", show_default=True, help="<name> in iot-edge-device-ca-<name>.")
def demo_cmd(outdir, gateway_host, devices, algo, days, edge_ca_name):
    """Make a test PKI like IoT Edge's certGen.sh under OUTDIR/certs and OUTDIR/private.

    Root, intermediate, edge CA (+ full chain) and, per --device, a CA-signed and a
    self-signed certificate. For development only: the names say test-only.
    """
    from edgekit.certs.demo import make_demo_pki

    try:
        pki = make_demo_pki(outdir, gateway_host, devices=devices, algo=algo, days=days,
                            edge_ca_name=edge_ca_name)
    except CertError as e:
        raise _user_error(str(e))
    for line in next_steps(pki, days):
        click.echo(line)


def next_steps(pki, days):
    """The lines `certs demo` prints after making a PKI: gateway config, device trust, registration."""
    def rel(path):
        short = os.path.relpath(path)
        return path if short.startswith("..") else short

    from edgekit.edgebox import gateway_steps

    out = [f"Made a test-only {pki.algo.upper()} PKI valid for {days} days in {pki.outdir}",
           "",
           *gateway_steps(pki.gateway_host, pki.root_cert, pki.edge_ca_chain, pki.edge_ca_key),
           "",
           "On the devices:",
           "1. Devices trust the root CA:",
           f"     edgekit certs convert {rel(pki.root_cert)} ca.der   (MicroPython; ca.pem for CircuitPython)",
           f"   GatewayHostName in each connection string must be exactly {pki.gateway_host}"]
    for n, (device_id, d) in enumerate(sorted(pki.devices.items())):
        out += [f"{2 + n}. Device {device_id} (set its parent to the gateway device in IoT Hub), either:",
                f"     X.509 self-signed: thumbprints primary/secondary SHA-1 {d.thumbprint_sha1}",
                f"                                          or SHA-256 {d.thumbprint_sha256}",
                f"       cert {rel(d.selfsigned_cert)}  key {rel(d.selfsigned_key)}",
                f"     X.509 CA-signed: upload and verify {rel(pki.root_cert)} in IoT Hub > Certificates",
                f"       cert {rel(d.chain)}  key {rel(d.key)}"]
    out += ["", "warning: test-only certificates: never use them in production"]
    return out
