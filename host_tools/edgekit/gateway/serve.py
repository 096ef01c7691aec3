"""Start-up and shutdown of `edgekit gateway serve`.

Like IoT Edge, the gateway issues its own server certificate for --hostname from the edge
CA in --pki: RSA-2048 whatever the CA's key type, as the workload API issues edgeHub's
(edgelet-http-workload/src/module/cert/mod.rs), so devices see server, edge CA, intermediate
and root. TLS asks for a client certificate and accepts any (tls.py); auth.check_connect
judges it at CONNECT: thumbprint devices by thumbprint only, CA-signed devices by a chain to
the trust bundle (DATA/tls/trust-bundle.pem: the PKI root, or --trust-bundle), as edgeHub
trusts its `trust_bundle_cert`. `--edgehub 1.4` speaks TLS 1.2 only, `1.5` and `1.6` TLS 1.2 and
1.3 (edgehub_profiles.py).
"""
import asyncio
import datetime
import json
import logging
import os
import resource
import signal

from cryptography.hazmat.primitives.asymmetric import rsa

from edgekit import edgehub_profiles
from edgekit.certs import certgen, expiry
from edgekit.certs.certgen import INTERMEDIATE, ROOT
from edgekit.certs.demo import issue_server_cert
from edgekit.certs.names import san_names
from edgekit.certs.pem import (CertError, is_ca, key_matches, load_certificates, load_private_key, to_pem,
                               write_atomic)
from edgekit.gateway import GATEWAY_JSON, admission, adu, registry, tls, upstream
from edgekit.gateway.control import ControlServer
from edgekit.gateway.core import METHOD_CONNECT_TIMEOUT, REAUTH_INTERVAL, Gateway
from edgekit.gateway.protocol import CONNECT_TIMEOUT, ProtocolHead

# What `serve --edgehub` emulates: the highest TLS version each IoT Edge release speaks.
EDGEHUB_TLS = {name: r.tls[-1] for name, r in edgehub_profiles.RELEASES.items()}  # tls is in ascending order
DEFAULT_EDGEHUB = edgehub_profiles.DEFAULT
SERVER_KEY_BITS = 2048
WEB_VIEW_LINE = "web view on "  # serve's line for the web view's address; `serve --detach` shows it


class ServeError(ValueError):
    """The gateway cannot start as asked; the message says what to change."""


class PkiFiles:
    """What serve takes from a demo PKI or certGen folder."""

    def __init__(self, root, intermediate, edge_chain, edge_key):
        self.root = root
        self.intermediate = intermediate
        self.edge_chain = edge_chain
        self.edge_key = edge_key


def find_pki(pki_dir):
    """Locate root, intermediate, edge CA chain and key in pki_dir."""
    certs = os.path.join(os.fspath(pki_dir), "certs")
    private = os.path.join(os.fspath(pki_dir), "private")
    root = os.path.join(certs, ROOT)
    if not os.path.isfile(root):
        raise ServeError(f"{pki_dir} has no certs/{ROOT}; give --pki the folder made by "
                         "'edgekit certs demo' or certGen.sh")
    found = certgen.scan(pki_dir)  # certs/ holds the root, so certs/ is the folder scan reads

    def here(path):
        # scan's paths are absolute; messages name files under --pki as the user wrote it.
        return os.path.join(certs, os.path.basename(path))

    if not found.edge_chains:
        raise ServeError(f"{pki_dir} has no certs/iot-edge-device-ca-<name>-full-chain.cert.pem; "
                         "create the edge CA (certGen.sh create_edge_device_ca_certificate)")
    if len(found.edge_chains) > 1:
        names = ", ".join(sorted(os.path.basename(c) for c in found.edge_chains.values()))
        raise ServeError(f"{pki_dir} has several edge CAs ({names}); keep one in the folder given to --pki")
    [(name, chain)] = found.edge_chains.items()
    key = os.path.join(private, f"iot-edge-device-ca-{name}.key.pem")
    if not os.path.isfile(key):
        raise ServeError(f"{pki_dir} has no private/iot-edge-device-ca-{name}.key.pem for its edge CA")
    inter = os.path.join(certs, INTERMEDIATE)
    return PkiFiles(root, inter if os.path.isfile(inter) else None, here(chain), key)


def check_pki_dates(pki, now=None):
    """Refuse a PKI with an expired certificate (ServeError); a warning line when one ends within 30 days.

    Devices verify the whole chain served (edge CA, intermediate, root) and trust the root: the
    first of these to expire ends every connection, so that one is named. None when all is well.
    """
    sources = {}
    for path in (pki.edge_chain, pki.intermediate, pki.root):
        if path:
            try:
                sources[path] = load_certificates(path)
            except CertError as e:
                raise ServeError(str(e))
    now = now or datetime.datetime.now(datetime.timezone.utc)
    first = expiry.first_to_expire(sources, now)
    if first is None:
        return None
    more = f" (and {first.others} more of its certificates)" if first.others else ""
    if first.left(now) < datetime.timedelta(0):
        raise ServeError(f"the PKI has expired: '{first.name}' in {first.source}{more} ended "
                         f"{first.not_after:%Y-%m-%d %H:%M} UTC, and devices refuse an expired chain; "
                         "make a new one (edgekit certs demo, or certGen.sh) and give the devices its root")
    if first.left(now) < expiry.WARN_BEFORE:
        return (f"warning: the PKI expires in {first.left(now).days} days: '{first.name}' in {first.source}{more} "
                f"ends {first.not_after:%Y-%m-%d %H:%M} UTC; devices refuse the gateway from then on")
    return None


def _reusable(cert_path, key_path, edge, hostname):
    # Reusing a valid certificate keeps start-up fast (RSA key generation takes a while).
    try:
        chain = load_certificates(cert_path)
        leaf = chain[0]
        if not key_matches(leaf, load_private_key(key_path)):
            return False
        leaf.verify_directly_issued_by(edge)
    except Exception:  # unreadable, foreign or tampered: issue a fresh one
        return False
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
    key = leaf.public_key()
    rsa2048 = isinstance(key, rsa.RSAPublicKey) and key.key_size == SERVER_KEY_BITS
    return rsa2048 and hostname in san_names(leaf) and leaf.not_valid_after_utc > soon


def server_certificate(pki, hostname, data_dir):
    """(cert chain path, key path) of the gateway's server certificate, issued or reused under DATA/tls."""
    tls = os.path.join(data_dir, "tls")
    os.makedirs(tls, mode=0o700, exist_ok=True)
    cert, key = os.path.join(tls, "server.cert.pem"), os.path.join(tls, "server.key.pem")
    try:
        edge_certs = load_certificates(pki.edge_chain)
        edge_key = load_private_key(pki.edge_key)
    except CertError as e:
        raise ServeError(str(e))
    signers = [c for c in edge_certs if key_matches(c, edge_key)]
    if not signers:
        raise ServeError(f"{pki.edge_key} does not match the edge CA in {pki.edge_chain}")
    if _reusable(cert, key, signers[0], hostname):
        return cert, key
    try:
        issued = issue_server_cert(pki.edge_chain, pki.edge_key, hostname, out_cert=cert, out_key=key,
                                   algo="rsa")
    except CertError as e:
        raise ServeError(str(e))
    return issued.cert, issued.key


def tls_context(cert, key, edgehub=DEFAULT_EDGEHUB):
    """The listener's TLS context (tls.server_context) for an IoT Edge release's TLS profile."""
    if edgehub not in EDGEHUB_TLS:
        raise ServeError(f"--edgehub {edgehub} is not one of {', '.join(EDGEHUB_TLS)}")
    try:
        return tls.server_context(cert, key, max_version=EDGEHUB_TLS[edgehub])
    except ValueError as e:
        raise ServeError(str(e))


def install_trust_bundle(pki, data_dir, trust_bundle=None):
    """Copy the trust bundle (default: the PKI root) to DATA/tls/trust-bundle.pem; return the certificates."""
    source = trust_bundle or pki.root
    try:
        certs = load_certificates(source)
    except CertError as e:
        raise ServeError(str(e))
    for c in certs:
        if not is_ca(c):
            raise ServeError(f"{source} holds '{c.subject.rfc4514_string()}', which is not a CA "
                             "certificate; the trust bundle holds root (or intermediate) CAs only")
    path = registry.trust_bundle_path(data_dir)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    write_atomic(path, b"".join(to_pem(c) for c in certs))
    return certs


def _check_not_running(data_dir):
    path = os.path.join(data_dir, GATEWAY_JSON)
    try:
        with open(path) as f:
            pid = int(json.load(f)["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return  # left by a gateway that was killed: ours now
    except PermissionError:
        pass
    if pid != os.getpid():
        raise ServeError(f"a gateway (pid {pid}) already serves {data_dir}; stop it or use another --data")


def _listen_address(bind, port):
    return f"[{bind}]:{port}" if ":" in bind else f"{bind}:{port}"


async def serve(pki_dir, hostname, data_dir, bind="127.0.0.1", port=8883, max_clients=100, out=None,
                stop=None, edgehub=DEFAULT_EDGEHUB, trust_bundle=None, web=None, web_bind="127.0.0.1",
                reauth_interval=REAUTH_INTERVAL, connect_timeout=CONNECT_TIMEOUT,
                method_connect_timeout=METHOD_CONNECT_TIMEOUT, max_waiting=admission.MAX_WAITING,
                max_waiting_per_address=admission.MAX_WAITING_PER_ADDRESS, upstream_state=upstream.ONLINE,
                ttl=upstream.TTL, cache_port=None):
    """Run the gateway until `stop` (an asyncio.Event) is set; write and remove DATA/gateway.json.

    web: a TCP port (0 picks a free one) for the web view on web_bind, or None for no web view.
    reauth_interval: seconds between re-authentication passes; connect_timeout: seconds from TLS
    handshake to CONNECT; method_connect_timeout: how long a method call waits for an offline device;
    max_waiting, max_waiting_per_address: connections not yet authenticated (admission.py), lowered
    to fit the process's open-file limit. upstream_state: "online" or "offline" (IoT Hub reachable at
    start, upstream.py); ttl: seconds held telemetry is kept while offline (timeToLiveSecs).
    cache_port: the Connected Cache's port (cache.py), started at once when given or when DATA holds
    imported updates, else at the first deploy; None means 80, or a free port when 80 cannot be had.
    """
    data_dir = os.path.abspath(os.fspath(data_dir))
    out = out or (lambda line: print(line, flush=True))
    if not 0 <= int(port) <= 65535:
        raise ServeError(f"--port {port} is not a TCP port (0 picks a free one)")
    if max_clients < 1:
        raise ServeError("--max-clients must be at least 1")
    pki = find_pki(pki_dir)
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    _check_not_running(data_dir)
    if edgehub not in EDGEHUB_TLS:  # refused before any key is generated
        raise ServeError(f"--edgehub {edgehub} is not one of {', '.join(EDGEHUB_TLS)}")
    pki_warning = check_pki_dates(pki)  # an expired PKI is refused before any key is generated too
    cert, key = server_certificate(pki, hostname, data_dir)
    ctx = tls_context(cert, key, edgehub)
    bundle = install_trust_bundle(pki, data_dir, trust_bundle)
    try:
        registry.load(data_dir)  # unreadable registry: say so now, not at the first CONNECT
        if upstream_state not in (upstream.ONLINE, upstream.OFFLINE) or not ttl > 0:
            raise ServeError(f"--upstream {upstream_state} --ttl {ttl}: the state is online or offline, the time "
                             "to live a positive number of seconds")
        gateway = Gateway(data_dir, hostname, max_clients=max_clients, out=out, reauth_interval=reauth_interval,
                          method_connect_timeout=method_connect_timeout, online=upstream_state == upstream.ONLINE,
                          ttl=ttl)
    except ValueError as e:
        raise ServeError(str(e))
    waiting = admission.Admission(*admission.limits(max_clients, max_waiting, max_waiting_per_address))
    head = ProtocolHead(gateway, ctx, connect_timeout=connect_timeout, admission=waiting)
    control = ControlServer(gateway, data_dir)
    info = {}
    info_path = os.path.join(data_dir, GATEWAY_JSON)

    def cache_started(port):
        info["cache_port"] = port
        if os.path.exists(info_path):  # already ready: say the port where hub-side commands look
            write_atomic(info_path, json.dumps(info).encode())

    from edgekit.gateway.cache import Cache, CacheError
    cache = Cache(data_dir, bind, cache_port, out, on_start=cache_started)
    control.add_op("adu_cache", cache.ensure)
    expiry = asyncio.ensure_future(gateway.expire_forever())
    view = None
    try:
        try:
            mqtt_port = await head.start(bind, port)
        except OSError as e:
            raise ServeError(f"cannot listen on {bind}:{port} ({e.strerror or e}); "
                             "pick another --listen port (0 picks a free one) or stop what uses it")
        registry.set_gateway_host(data_dir, hostname)  # for connection strings made while stopped
        control_port = await control.start()
        info.update({"mqtt_port": mqtt_port, "control_port": control_port, "pid": os.getpid(), "hostname": hostname})
        if cache_port is not None or adu.updates(data_dir):
            try:
                await cache.ensure()
            except CacheError as e:
                raise ServeError(str(e))
        if web is not None:
            from edgekit.gateway.web import WebError, WebView  # aiohttp only when asked for
            view = WebView(gateway, data_dir, bind=web_bind, port=web)
            try:
                info["web_port"] = await view.start()
            except WebError as e:
                raise ServeError(str(e))
        names = ", ".join(f"'{c.subject.rfc4514_string()}'" for c in bundle)
        out(f"edge CA {os.path.basename(pki.edge_chain)}; edgeHub {edgehub} TLS profile; "
            f"CA-signed devices must chain to the trust bundle: {names}")
        if pki_warning:
            out(pki_warning)
        out(f"data {data_dir}; control on 127.0.0.1:{control_port}")
        out(f"at most {waiting.total} connections wait for TLS or CONNECT, {waiting.per_address} per address "
            f"(open-file limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]})")
        if view is not None:
            out(WEB_VIEW_LINE + view.url)  # printed once: the token is the key to the page
        # gateway.json is the sign of readiness `serve --detach` waits for: the lines above are
        # in serve.log by then, so it can show the web address and any warning.
        write_atomic(info_path, json.dumps(info).encode())
        out(f"gateway ready on {hostname}:{mqtt_port}")
        stop = stop or asyncio.Event()
        await stop.wait()
    finally:
        try:
            os.unlink(info_path)
        except FileNotFoundError:
            pass
        if view is not None:
            await view.stop()
        await control.stop()
        await cache.stop()
        await head.stop()
        expiry.cancel()
        gateway.close()
    out("gateway stopped")


def run(pki_dir, hostname, data_dir, bind="127.0.0.1", port=8883, max_clients=100, **options):
    """Run serve() in a fresh event loop until SIGTERM or SIGINT."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")

    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(pki_dir, hostname, data_dir, bind=bind, port=port, max_clients=max_clients, stop=stop,
                    **options)

    asyncio.run(main())
