# The gateway's trust anchors beyond the bundle's root (handler edgekit/trust:1) and their
# Loaded at boot when roots were added (setup and boot, from azure_edge.adu_boot), and while a
# trust update or its probe runs; unloaded after.
#
# New root CA certificates go to DATA/trust/*.der, beside the bundle's ca.der, which is never
# rewritten. The device trusts them all. Until a TLS connection to the gateway has verified
# through the new roots alone, DATA/trust/state.json lists them as "pending" and the old roots
# stay; once one has (Probe), the old ones are dropped ("old": false). So a fleet trusts the
# gateway's next root before the gateway switches to it, and loses the link at no point.
import json
import os

from azure_edge import log


def _state(d):
    for p in (d + "/trust/state.json", d + "/trust/state.json.new"):  # as adu.load
        try:
            with open(p) as f:
                st = json.load(f)
            if isinstance(st, dict):
                return st
        except (OSError, ValueError):
            pass
    return {"pending": [], "old": True, "roots": []}


def _save(d, st):
    from azure_edge.slots import _mkdirs
    _mkdirs(d + "/trust")
    p = d + "/trust/state.json"
    with open(p + ".new", "w") as f:
        json.dump(st, f)
    try:
        os.rename(p + ".new", p)
    except OSError:
        os.remove(p)
        os.rename(p + ".new", p)


def _read(d, name):
    with open(d + "/trust/" + name, "rb") as f:
        return f.read()


def setup(cfg, du):
    """At boot (adu_boot.setup): the TLS context trusts the added roots; du["probe"] says a
    probe awaits them."""
    cfg["ca"], du["probe"] = roots(du["d"], cfg["ca"])


def boot(c):
    """After the client is built (adu_boot.boot): the probe of pending roots is queued."""
    c.adu = Probe()


def roots(d, ca):
    """(what the TLS context trusts, whether new roots await their probe). `ca` is the
    bundle's root (DER bytes; a PEM str on CircuitPython); more roots make a list of DER, or
    one PEM text holding them all for CircuitPython (its mbedTLS parses every PEM block)."""
    st = _state(d)
    extra = [_read(d, n) for n in st.get("roots", ())]
    if not extra:
        return ca, False
    out = ([ca] if st.get("old", True) else []) + extra
    if isinstance(ca, str):
        return "".join([x if isinstance(x, str) else pem(x) for x in out]), bool(st.get("pending"))
    return out, bool(st.get("pending"))


def pem(der):
    import binascii
    b64 = binascii.b2a_base64(der).decode().replace("\n", "")
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


def add(d, paths):
    """Add the root certificates in files `paths` (DER, or PEM converted here) as pending."""
    import binascii
    st = _state(d)
    from azure_edge.slots import _mkdirs
    _mkdirs(d + "/trust")
    for p in paths:
        with open(p, "rb") as f:
            der = f.read()
        if der[:5] == b"-----":
            body = der.split(b"-----")[2]
            der = binascii.a2b_base64(body.replace(b"\n", b"").replace(b"\r", b""))
        if der[:1] != b"\x30":
            raise ValueError("not a certificate: " + p.rsplit("/", 1)[-1])
        from azure_edge.adu_boot import not_after
        not_after(der)  # refuse what does not parse as X.509 before trusting it
        from azure_edge.adu_hash import _sha256  # (CircuitPython's hashlib has new() only)
        name = binascii.hexlify(_sha256(der).digest()[:8]).decode() + ".der"
        with open(d + "/trust/" + name, "wb") as f:
            f.write(der)
        if name not in st["roots"]:
            st["roots"].append(name)
        if name not in st["pending"]:
            st["pending"].append(name)
    _save(d, st)
    log("%d new gateway root(s) trusted beside the current ones" % len(paths))


class Probe:
    """From the client's loop (Client.adu): once connected, a TLS handshake with the gateway
    that trusts only the pending roots. Verified: they become the only roots (next boot);
    refused: all are kept, and the probe runs again at the next boot."""

    def step(self, c):
        try:
            self._step(c)
        except Exception as e:  # the probe waits for the next boot
            c.adu = None
            c.du.pop("twin", None)
            log("trust probe: %s: %s" % (type(e).__name__, e))

    def _step(self, c):
        if c.du.get("twin"):
            from azure_edge import run_and_unload
            run_and_unload("adu", "kick", c)  # the agent's report at connect
            return
        if not (c.connected and c._twin_rid is None):
            return
        c.adu = None
        d = c.du["d"]
        st = _state(d)
        new = [_read(d, n) for n in st["pending"]]
        ok = False
        try:
            ok = _handshake(c.cs.connect_host, c.port, new)
        except Exception as e:  # noqa: BLE001 (any TLS failure means: not yet)
            log("gateway not yet verifiable through the new root(s): %s" % e)
        if ok:
            st["roots"] = st["pending"]
            st["pending"] = []
            st["old"] = False
            _save(d, st)
            log("gateway verified through the new root(s): the old ones are dropped")


def _handshake(host, port, roots):
    from azure_edge import port as ports
    p = ports.load()
    try:
        import socket
    except ImportError:  # CircuitPython: its socket pool; its TLS takes PEM text (roots())
        socket = p.socket_pool()
        roots = ["".join([r if isinstance(r, str) else pem(r) for r in roots])]
    ctx = p.tls_context(roots if len(roots) > 1 else roots[0])
    ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
    s = socket.socket(ai[0], socket.SOCK_STREAM)
    try:
        s.settimeout(10)
        if p.RUNTIME == "circuitpython":
            # Its SSLSocket verifies in connect() (shared-module/ssl/SSLSocket.c do_handshake),
            # never in wrap_socket: a socket wrapped once connected is never verified at all.
            t = ctx.wrap_socket(s, server_hostname=host)
            t.connect(ai[-1])
        else:
            s.connect(ai[-1])
            t = ctx.wrap_socket(s, server_hostname=host)  # verifies here, or raises
        t.close()
        return True
    finally:
        s.close()
