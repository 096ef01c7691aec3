"""The gateway's TLS listener: the one place that knows how client certificates reach the MQTT head.

The protocol head starts its listener with start_server() and asks peer_chain() for what the
device presented; how the TLS layer accepts client certificates stays behind these two calls.

edgeHub's TLS layer asks for a client certificate and accepts whatever comes; the identity is
checked later, at CONNECT (auth.check_connect). Python's `ssl` cannot do that: with
CERT_OPTIONAL an unknown certificate fails the handshake, and getpeercert() gives the leaf
only, never the intermediates a CA-signed device must present. So TLS runs on pyOpenSSL over
memory BIOs: set_verify() with a callback that accepts any certificate, then the leaf and the
presented chain (get_peer_certificate / get_peer_cert_chain) are read after the handshake.
Everything else stays asyncio: a plain TCP server, and the handler gets a real
asyncio.StreamReader/StreamWriter pair over a small TLS transport.
"""
import asyncio
import logging

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

from edgekit.edgehub_profiles import DOTNET_TLS12_SUITES, TLS12, TLS13

log = logging.getLogger(__name__)
HANDSHAKE_TIMEOUT = 30  # seconds from TCP accept to a finished TLS handshake
_CHUNK = 65536

# .NET on Linux (edgeHub's runtime) with no OpenSSL cipher configuration offers only these for
# TLS 1.2 (edgehub_profiles.py says where that is written); TLS 1.3 keeps OpenSSL's three AEAD
# suites, as .NET does not set TLS 1.3 suites unless given a CipherSuitesPolicy.
DOTNET_TLS12_CIPHERS = ":".join(DOTNET_TLS12_SUITES)
_VERSIONS = {TLS12: SSL.TLS1_2_VERSION, TLS13: SSL.TLS1_3_VERSION}


def _accept_any(conn, cert, errno, depth, ok):
    # The handshake only collects the client certificate; auth.check_connect judges it at CONNECT.
    return True


def server_context(cert_chain_path, key_path, max_version=TLS12, ciphers=DOTNET_TLS12_CIPHERS):
    """A TLS server context: TLS 1.2 up to max_version, our chain and key, any client certificate.

    ValueError (one line) when the files do not load or do not belong together.
    """
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_max_proto_version(_VERSIONS[max_version])
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    try:
        ctx.set_cipher_list(ciphers.encode())
        ctx.use_certificate_chain_file(cert_chain_path)
        ctx.use_privatekey_file(key_path)
        ctx.check_privatekey()
    except SSL.Error as e:
        raise ValueError(f"cannot use {cert_chain_path} with {key_path} for TLS ({_reason(e)})")
    ctx.set_verify(SSL.VERIFY_PEER, _accept_any)
    return ctx


def _reason(error):
    # pyOpenSSL errors carry [(library, function, reason), ...]; the last reason says most.
    try:
        return error.args[0][-1][2] or str(error)
    except (IndexError, TypeError):
        return str(error) or type(error).__name__


def presented_chain(ssl_object):
    """DER certificates a pyOpenSSL connection's client presented, leaf first; [] for none.

    The leaf is get_peer_certificate(): the one whose key signed the handshake, so the one the
    device proved it holds (auth builds the chain from it, as edgeHub from SslStream's).
    """
    if not isinstance(ssl_object, SSL.Connection):
        return []
    leaf = ssl_object.get_peer_certificate(as_cryptography=True)
    if leaf is None:
        return []
    out = [leaf.public_bytes(Encoding.DER)]
    seen = set(out)  # a set: a client may send hundreds (within OpenSSL's 100 KiB), kept linear
    # On a server OpenSSL's peer chain omits the leaf; some builds include it: never twice.
    for cert in ssl_object.get_peer_cert_chain(as_cryptography=True) or []:
        der = cert.public_bytes(Encoding.DER)
        if der not in seen:
            seen.add(der)
            out.append(der)
    return out


class _TlsTransport(asyncio.Transport):
    """The plaintext side of one TLS connection, as an asyncio transport for StreamWriter."""

    def __init__(self, tls):
        super().__init__()
        self._tls = tls

    def get_extra_info(self, name, default=None):
        if name == "ssl_object":
            return self._tls.conn
        if name == "sslcontext":
            return self._tls.ctx
        if name == "peer_chain":
            return self._tls.chain
        return self._tls.raw.get_extra_info(name, default)

    def write(self, data):
        if self._tls.raw.is_closing():
            return
        try:
            self._tls.conn.sendall(bytes(data))
        except SSL.Error as e:
            self._tls.fail(f"TLS write failed ({_reason(e)})")
            return
        self._tls.flush()

    def writelines(self, list_of_data):
        self.write(b"".join(list_of_data))

    def can_write_eof(self):
        return False

    def close(self):
        self._tls.close()

    def abort(self):
        self._tls.raw.abort()

    def is_closing(self):
        return self._tls.raw.is_closing()

    def pause_reading(self):
        self._tls.raw.pause_reading()

    def resume_reading(self):
        self._tls.raw.resume_reading()

    def is_reading(self):
        return self._tls.raw.is_reading()

    def get_write_buffer_size(self):
        return self._tls.raw.get_write_buffer_size()

    def authenticated(self):
        """The device's CONNECT was accepted: its connection no longer counts as waiting."""
        self._tls.stop_waiting()

    def set_write_buffer_limits(self, high=None, low=None):
        self._tls.raw.set_write_buffer_limits(high, low)


class _TlsProtocol(asyncio.Protocol):
    """The TCP side: feeds pyOpenSSL, runs the handshake, then hands plaintext to the stream."""

    def __init__(self, ctx, handler, limit, admission=None):
        self.ctx = ctx
        self._admission = admission
        self._waiting_as = None  # the address this connection is counted under until it authenticates
        self.conn = SSL.Connection(ctx, None)
        self.conn.set_accept_state()
        self.chain = []
        self.raw = None
        self._handler = handler
        self._limit = limit
        self._app = None  # asyncio.StreamReaderProtocol once the handshake is done
        self._timer = None
        self._failed = False

    def connection_made(self, transport):
        self.raw = transport
        if self._admission is not None:
            peer = transport.get_extra_info("peername")
            address = peer[0] if peer else "?"
            if not self._admission.admit(address):
                self._failed = True  # admission logs refusals itself, a few lines for a whole flood
                transport.abort()
                return
            self._waiting_as = address
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(HANDSHAKE_TIMEOUT, self.fail, "no TLS handshake in "
                                      f"{HANDSHAKE_TIMEOUT} s")

    def _peer(self):
        peer = self.raw.get_extra_info("peername") if self.raw else None
        return f"{peer[0]}:{peer[1]}" if peer else "?"

    def fail(self, why):
        """End the connection with one log line (no traceback: a client can always do this)."""
        if not self._failed:
            log.warning("%s: %s", self._peer(), why)
        self._failed = True
        if self.raw is not None and not self.raw.is_closing():
            self.raw.abort()

    def flush(self):
        """Send what pyOpenSSL has written into its outgoing memory BIO."""
        while True:
            try:
                out = self.conn.bio_read(_CHUNK)
            except SSL.WantReadError:
                return
            if not out:
                return
            self.raw.write(out)

    def data_received(self, data):
        self.conn.bio_write(data)
        if self._app is None and not self._handshake():
            return
        self._read_plaintext()

    def _handshake(self):
        try:
            self.conn.do_handshake()
        except SSL.WantReadError:
            self.flush()
            return False
        except SSL.Error as e:
            self.flush()  # the alert, if OpenSSL wrote one
            self.fail(f"TLS handshake failed ({_reason(e)})")
            return False
        self.flush()
        self._timer.cancel()
        self.chain = presented_chain(self.conn)
        reader = asyncio.StreamReader(limit=self._limit)
        self._app = asyncio.StreamReaderProtocol(reader, self._handler)
        self._app.connection_made(_TlsTransport(self))
        return True

    def _read_plaintext(self):
        while self._app is not None:
            try:
                data = self.conn.recv(_CHUNK)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:  # close_notify
                self._app.eof_received()
                break
            except SSL.Error as e:
                self.fail(f"TLS record error ({_reason(e)})")
                break
            self._app.data_received(data)
        self.flush()

    def eof_received(self):
        if self._app is not None:
            self._app.eof_received()
        return False  # the TCP side closes; connection_lost follows

    def stop_waiting(self):
        """Stop counting this connection among those not yet authenticated."""
        if self._waiting_as is not None:
            self._admission.release(self._waiting_as)
            self._waiting_as = None

    def connection_lost(self, exc):
        self.stop_waiting()
        if self._timer is not None:
            self._timer.cancel()
        if self._app is not None:
            self._app.connection_lost(exc)
            self._app = None
        elif not self._failed:
            self._failed = True
            log.warning("%s: closed before the TLS handshake finished", self._peer())

    def pause_writing(self):
        if self._app is not None:
            self._app.pause_writing()

    def resume_writing(self):
        if self._app is not None:
            self._app.resume_writing()

    def close(self):
        """Send close_notify, then close the TCP side."""
        if self.raw.is_closing():
            return
        try:
            self.conn.shutdown()
        except SSL.Error:
            pass  # the peer is gone or the handshake never finished
        self.flush()
        self.raw.close()


async def start_server(handler, host, port, ctx, limit=2 ** 16, admission=None, **kwargs):
    """Listen on host:port with TLS context `ctx` (server_context()); `handler(reader, writer)` runs per connection.

    admission (admission.Admission): bounds the connections that have not authenticated yet;
    the handler calls authenticated(writer) once the device's CONNECT is accepted.
    """
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _TlsProtocol(ctx, handler, limit, admission), host, port, **kwargs)


def authenticated(writer):
    """The device on writer is authenticated: its connection leaves the waiting count."""
    done = getattr(writer.transport, "authenticated", None)
    if done is not None:
        done()


def peer_chain(writer):
    """The certificates the client presented, as DER, leaf first; [] when it presented none."""
    return list(writer.get_extra_info("peer_chain") or [])
