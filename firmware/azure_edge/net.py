# Sockets for MiniMQTT over MicroPython or CPython sockets.
# MiniMQTT (via adafruit_connection_manager) wants CircuitPython's shape: sockets with
# settimeout and recv_into, and TLS wrapped before connect. MicroPython TLS sockets
# have neither and must be wrapped after connecting, so this module connects first,
# wraps second, and implements read timeouts with select.poll (which also sees bytes
# mbedTLS has already decrypted). CircuitPython uses its own socketpool directly.
import errno
import sys
import time

try:
    import select
    import socket
except ImportError:
    socket = None  # CircuitPython: no socket module (socketpool instead); install() skips us

_NODELAY = (6, 1)  # IPPROTO_TCP, TCP_NODELAY: MiniMQTT writes each packet in pieces
_IO_TIMEOUT = 10     # seconds for connect, handshake and writes
# fn() run between 50 ms waits while a connect is under way (the client sets it for the
# connect only): a gateway that takes 10 s not to answer must not stop the device's readings.
IDLE = None
_CPYTHON = sys.implementation.name == "cpython"
_Timeout = getattr(socket, "timeout", OSError)


class Manager:
    """Stands in for adafruit_connection_manager, whose socket registry MiniMQTT does not need.

    It costs 10 KB of heap on MicroPython; this costs under 1 KB.
    """

    def get_socket(self, host, port, proto, session_id=None, timeout=1.0, is_ssl=False,
                   ssl_context=None):
        sock = Sock(ssl_context if is_ssl else None, host)
        sock.settimeout(timeout)
        sock.connect((host, port))
        return sock

    def close_socket(self, sock):
        sock.close()


MANAGER = Manager()


def get_connection_manager(_pool):
    return MANAGER


class Sock:
    """A socket as MiniMQTT wants it: recv_into with a timeout, TLS wrapped after connect."""

    def __init__(self, tls, hostname):
        self.tls = tls
        self.hostname = hostname
        self.raw = None
        self.s = None
        self.timeout = 1.0
        self.poller = self.wpoller = None

    def settimeout(self, seconds):
        self.timeout = seconds

    def connect(self, address):
        host, port = address
        try:
            ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
            self.raw = raw = socket.socket(ai[0], socket.SOCK_STREAM)
            # Non-blocking from the start: the TCP connect and the TLS handshake wait in slices.
            raw.setblocking(False)
            try:
                raw.connect(ai[-1])
            except OSError as e:
                if e.args[0] not in (errno.EINPROGRESS, errno.EAGAIN, 10035):  # 10035: Windows
                    raise
            _wait(raw, True)
            try:
                raw.connect(ai[-1])  # again: says how the first ended (EISCONN: connected)
            except OSError as e:
                if e.args[0] not in (106, 127, 10056):  # EISCONN: Linux, newlib (esp32), Windows
                    raise
            try:
                raw.setsockopt(_NODELAY[0], _NODELAY[1], 1)
            except (OSError, AttributeError):
                pass  # not every port has TCP_NODELAY; only speed suffers
            self.s = raw
            if self.tls is not None:
                # The handshake runs on the first write (MicroPython, in send below) or here.
                self.s = self.tls.wrap_socket(raw, server_hostname=self.hostname,
                                              do_handshake_on_connect=False)
                if _CPYTHON:
                    _handshake(self.s)
        except Exception:
            self.close()
            raise
        if not _CPYTHON:
            # Non-blocking from here on: reads take what mbedTLS or the kernel already holds and
            # poll only when nothing is there, since a waiting poll costs at least 1 ms.
            self.raw.settimeout(0)
            self.poller = select.poll()
            self.poller.register(self.s, select.POLLIN)
            self.wpoller = select.poll()
            self.wpoller.register(self.s, select.POLLOUT)

    def send(self, buf):
        if _CPYTHON:
            self.s.settimeout(_IO_TIMEOUT)
            return self.s.send(buf)
        n = self.s.write(buf)
        if n is None:
            # Send buffer full, or the TLS handshake under way: wait for room, then MiniMQTT
            # offers the same bytes again (as mbedTLS requires after a partial record).
            _wait(self.s, True, self.wpoller)
            return 0
        return n

    def recv_into(self, buf, nbytes=0):
        if IDLE:
            IDLE()  # a connect waiting for CONNACK or SUBACK, 0.2 s per read
        view = memoryview(buf)[:nbytes] if 0 < nbytes < len(buf) else buf
        if not len(view):
            return 0  # MiniMQTT asks for the body of an empty PUBLISH this way
        if _CPYTHON:
            # CPython's ssl sockets time out natively (and see their own buffered bytes).
            self.s.settimeout(self.timeout)
            try:
                n = self.s.recv_into(view)
            except _Timeout:
                raise OSError(errno.ETIMEDOUT, "timed out")
        else:
            n = self.s.readinto(view)  # None: nothing there yet
            if n is None:
                # MicroPython TLS sockets have no settimeout; poll also sees bytes mbedTLS holds.
                # Readable may mean part of a TLS record only: then wait for the rest.
                end = time.ticks_add(time.ticks_ms(), int(self.timeout * 1000))
                while n is None:
                    left = time.ticks_diff(end, time.ticks_ms())
                    if left <= 0 or not self.poller.poll(left):
                        raise OSError(errno.ETIMEDOUT, "timed out")
                    n = self.s.readinto(view)
        if not n:
            raise OSError(errno.ECONNRESET, "closed by peer")  # readable but empty: the peer closed
        return n

    def close(self):
        for s in (self.s, self.raw):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        self.s = self.raw = None


def _wait(sock, out, poller=None):
    # Wait up to _IO_TIMEOUT s for sock to be writable (out) or readable, 50 ms at a time,
    # with a turn for IDLE between.
    if not _CPYTHON and poller is None:
        poller = select.poll()
        poller.register(sock, select.POLLOUT if out else select.POLLIN)
    for _ in range(_IO_TIMEOUT * 20):
        if poller:
            if poller.poll(50):
                return
        elif select.select(() if out else (sock,), (sock,) if out else (), (sock,), 0.05) != ([], [], []):
            return
        if IDLE:
            IDLE()
    raise OSError(errno.ETIMEDOUT, "timed out")


def _handshake(s):
    # CPython: the TLS handshake, in the same slices.
    import ssl
    for _ in range(_IO_TIMEOUT * 20):
        try:
            return s.do_handshake()
        except ssl.SSLWantReadError:
            _wait(s, False)
        except ssl.SSLWantWriteError:
            _wait(s, True)
    raise OSError(errno.ETIMEDOUT, "TLS handshake timed out")


def install():
    """Make MiniMQTT use this module for sockets (not on CircuitPython, whose own fit).

    On MicroPython it also stands in for modules MiniMQTT imports that the board need not
    load (deploy does not ship them): typing, adafruit_ticks and MiniMQTT's topic matcher.
    """
    if sys.implementation.name == "circuitpython":
        return
    me = sys.modules[__name__]
    sys.modules["adafruit_connection_manager"] = me
    if sys.implementation.name != "micropython":
        return
    # MicroPython's own ticks are adafruit_ticks' (same wrap-safe ticks_add/ticks_diff).
    sys.modules["adafruit_ticks"] = time
    sys.modules["adafruit_minimqtt.matcher"] = me
    if "typing" not in sys.modules:
        sys.modules["typing"] = _Stub()  # MiniMQTT imports typing names it never uses


class _Stub:
    def __getattr__(self, name):
        return object


class MQTTMatcher:
    """MiniMQTT's per-topic callbacks, which the client does not use (it has one on_message)."""

    def iter_match(self, topic):
        return ()


def mp_context(ca, cert=None, key=None):
    """MicroPython TLS client context: verify the chain and hostname against a DER root, or
    a list of them (the roots edgekit/trust:1 adds beside the bundle's).

    `cert` is a list of DER certificates, the leaf then its intermediates. MicroPython's
    mbedTLS parses one DER certificate per load_cert_chain call (and no PEM in the unix
    build), but each call adds to the chain it presents: so the leaf goes first.
    """
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED  # MicroPython defaults to CERT_NONE
    # One DER certificate per call; each call adds to the trusted chain, it does not replace it
    # (extmod/modtls_mbedtls.c, ssl_context_load_cadata: mbedtls_x509_crt_parse(&self->cacert)).
    for der in ca if isinstance(ca, list) else (ca,):
        ctx.load_verify_locations(cadata=der)
    if cert:
        for der in cert:
            ctx.load_cert_chain(der, key)
    return ctx
