# Downloads for the update agent (azure_edge/adu.py): plain HTTP/1.1 from the gateway's
# Connected Cache, streamed to flash a chunk at a time, hashed as it streams, resumed with
# `Range` after a dropped link. Loaded only while a deployment downloads.
import os

try:
    import socket
except ImportError:  # CircuitPython: its socket pool has the same getaddrinfo and socket
    from azure_edge import port as _ports
    socket = _ports.load().socket_pool()

_CHUNK = 1024        # bytes per read and per flash write: a file never sits whole in RAM
_HEAD_MAX = 2048     # a response head longer than this is not Connected Cache's
_READ_S = 0.2        # one read waits at most this long, so the device loop keeps its turn
STALL_S = 30         # no byte for this long: the link is dropped (and resumed later)


class Failed(Exception):
    """A download that cannot go on: args (extended result code, one console line, whether a
    later attempt may resume). In args only: MicroPython's exceptions take no attributes."""


# Extended result codes for downloads (edgekit's own facility, 0x7E0...; signed 32-bit).
E_HTTP = 0x7E000101       # status other than 200/206, or a malformed response
E_REDIRECT = 0x7E000102   # a redirect to another host: refused
E_SIZE = 0x7E000103       # more bytes than the manifest's sizeInBytes
E_LINK = 0x7E000104       # the link dropped too many times
E_TIME = 0x7E000105       # over the time bound


def mcc_url(url, gateway):
    """The URL Delivery Optimization asks the gateway's Connected Cache for: the host swapped
    for the gateway's, the original host appended as `cacheHostOrigin` (microsoft/do-client,
    client-lite/src/download/download.cpp, SwapUrlHostNameForMCC: uri_builder.set_host, the
    port set only when not 80, append_query("cacheHostOrigin", host))."""
    rest = url.split("://", 1)[-1]
    i = rest.find("/")
    hostport, path = (rest, "/") if i < 0 else (rest[:i], rest[i:])
    host = hostport.rsplit("@", 1)[-1]
    port = ""
    if host.startswith("["):
        j = host.find("]") + 1
        host, port = host[:j], host[j + 1:]
    else:
        host, _, port = host.partition(":")
    if port and port != "80" and ":" not in gateway.rsplit("]", 1)[-1]:
        gateway += ":" + port  # the URL's own port is kept (the local gateway's cache off 80)
    path = path.split("#")[0]
    return "http://" + gateway + path + ("&" if "?" in path else "?") + "cacheHostOrigin=" + host


def split(url):
    """(host, port, path) of an http:// URL; only plain HTTP, as Connected Cache serves."""
    if not url.startswith("http://"):
        raise Failed(E_HTTP, "only http:// URLs are fetched: " + url[:60], False)
    rest = url[7:]
    i = rest.find("/")
    hostport, path = (rest, "/") if i < 0 else (rest[:i], rest[i:])
    host, _, port = hostport.partition(":")
    return host, int(port or 80), path


def early(svc, gateway):
    """(file id, socket) with the GET of a deployment's one file already sent, or None (more
    than one file, or the link failed: the download's own attempt says why). adu._start sends it
    before the manifest's signature is checked, so the check runs while the request crosses the
    link; nothing is read or written before the check (only the Job reads the answer). The URL
    is not signed in ADU either way (fileUrls sits beside the manifest), and mcc_url sends it to
    the gateway's cache only."""
    urls = svc.get("fileUrls")
    if not isinstance(urls, dict) or len(urls) != 1:
        return None
    for fid, url in urls.items():
        try:
            host, port, path = split(mcc_url(url, gateway))
            return fid, _get(host, port, path, 0)
        except (OSError, Failed, TypeError, ValueError, AttributeError):
            return None


def _get(host, port, path, have):
    # Connect and send the GET (from byte `have`): the socket, its answer still to be read.
    ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
    s = socket.socket(ai[0], socket.SOCK_STREAM)
    try:
        s.settimeout(10)
        s.connect(ai[-1])
        req = "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: edgekit-adu\r\n" % (path, host)
        if have:
            req += "Range: bytes=%d-\r\n" % have
        _send(s, (req + "Connection: close\r\n\r\n").encode())
    except BaseException:
        s.close()
        raise
    return s


class Fetch:
    """One file: `url` to `path` (its part file `path + ".part"` survives a power cut and a
    dropped link), at most `size` bytes, fed to `hasher` (adu_hash.Hasher) as it streams.
    `sock`: the GET of `url` from byte 0 already sent (early), used by the first request."""

    def __init__(self, url, path, size, hasher_of, sock=None):
        self.host, self.port, self.path = split(url)
        self.pre = sock
        self.dest = path
        self.size = size
        self.hasher_of = hasher_of  # fn() -> a fresh hasher
        self.sock = None
        self.f = None
        self.h = None
        self.have = 0
        self.left = 0
        self.idle = 0
        self.early = b""
        self.buf = bytearray(_CHUNK)

    def _rehash(self):
        # A hasher cannot be saved across a reset or a dropped link: the bytes already on flash
        # are hashed again (read a chunk at a time), then the download goes on from there.
        self.h = self.hasher_of()
        self.have = 0
        try:
            with open(self.dest + ".part", "rb") as f:
                while True:
                    n = f.readinto(self.buf)
                    if not n:
                        break
                    self.h.update(memoryview(self.buf)[:n])
                    self.have += n
        except OSError:
            pass
        if self.have > self.size:  # torn or foreign: start the file again
            self._restart()

    def _restart(self):
        self.close()
        try:
            os.remove(self.dest + ".part")
        except OSError:
            pass
        self.h = self.hasher_of()
        self.have = 0

    def open(self):
        """Connect and send the GET (with `Range` when part of the file is on flash), read the
        response head. Raises Failed."""
        self._rehash()
        if self.have == self.size:
            return  # all there already (cut before the rename): no request
        for _ in range(3):  # same-host redirects only
            status, head = self._request()
            if status in (301, 302, 303, 307, 308):
                loc = _header(head, b"location")
                host, port, path = split(loc) if loc.startswith("http") else (self.host, self.port, loc)
                if (host, port) != (self.host, self.port):
                    # Connected Cache serves the bytes itself: a redirect elsewhere would leave
                    # the gateway's network, which a downstream device must not do.
                    raise Failed(E_REDIRECT, "refused a redirect from %s to %s" % (self.host, host), False)
                self.path = path
                self.close()
                continue
            break
        else:
            raise Failed(E_REDIRECT, "too many redirects", False)
        if status == 416 and self.have == self.size:
            self.close()
            return
        if status == 200:
            if self.have:
                self._restart_keep_sock()  # the server ignored Range: the whole file again
        elif status == 206:
            rng = _header(head, b"content-range")  # bytes START-END/TOTAL
            if not rng.startswith("bytes %d-" % self.have):
                raise Failed(E_HTTP, "unexpected Content-Range %r" % rng[:40], True)
        else:
            raise Failed(E_HTTP, "HTTP %d from %s" % (status, self.host), status >= 500)
        n = _header(head, b"content-length")
        if not n.isdigit():
            raise Failed(E_HTTP, "no Content-Length from " + self.host, False)
        self.left = int(n)
        if self.have + self.left > self.size:
            raise Failed(E_SIZE, "the server offers %d bytes; the manifest says %d"
                         % (self.have + self.left, self.size), False)
        self.f = open(self.dest + ".part", "ab")

    def _restart_keep_sock(self):
        s, self.sock = self.sock, None
        self._restart()
        self.sock = s

    def _request(self):
        s, self.pre = self.pre, None
        self.close()
        if s is None or self.have:  # (early asked for the whole file)
            if s is not None:
                s.close()
            s = _get(self.host, self.port, self.path, self.have)
        self.sock = s
        s.settimeout(10)
        head = bytearray()
        while head.find(b"\r\n\r\n") < 0:
            if len(head) > _HEAD_MAX:
                raise Failed(E_HTTP, "response head too long", False)
            n = _recv(s, self.buf)
            if not n:
                raise Failed(E_HTTP, "connection closed before the response head", True)
            head += memoryview(self.buf)[:n]
        cut = head.find(b"\r\n\r\n")
        body = bytes(head[cut + 4:])
        head = bytes(head[:cut])
        try:
            status = int(head.split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise Failed(E_HTTP, "not an HTTP response", False)
        self.early = body  # body bytes that came with the head
        return status, head.lower()

    def step(self, end):
        """Move bytes to flash until ticks `end` (or nothing has come for a moment); True once the whole file is there and renamed
        into place (the hash still to be checked by the caller: self.h). Raises Failed, and
        OSError for a dropped link (the next open() resumes)."""
        if self.sock is None and self.f is None:
            if self.have == self.size:
                return self._done()
            self.open()
            if self.f is None:
                return self._done()
        early, self.early = self.early, b""
        if early:
            self._write(early)
        from adafruit_ticks import ticks_diff, ticks_ms
        while self.left and ticks_diff(end, ticks_ms()) > 0:
            self.sock.settimeout(_READ_S)
            try:
                n = _recv(self.sock, self.buf)
            except OSError as e:
                if not _timed_out(e):
                    raise
                n = None
            if n is None:  # nothing this turn (MicroPython's readinto says so with None)
                self.idle += 1
                if self.idle * _READ_S > STALL_S:
                    raise OSError(110, "no data for %d s" % STALL_S)
                return False
            if not n:
                raise OSError(104, "closed by the server with %d bytes to come" % self.left)
            self.idle = 0
            self._write(memoryview(self.buf)[:min(n, self.left)])
        if self.left:
            return False
        return self._done()

    def _write(self, chunk):
        if len(chunk) > self.left:
            chunk = chunk[:self.left]
        self.f.write(chunk)
        self.h.update(chunk)
        self.have += len(chunk)
        self.left -= len(chunk)

    def _done(self):
        self.close()
        if self.have != self.size:
            raise Failed(E_SIZE, "got %d bytes; the manifest says %d" % (self.have, self.size), False)
        return True

    def close(self):
        if self.pre is not None:
            self.pre.close()
            self.pre = None
        if self.f is not None:
            self.f.close()  # flushed: what was written survives a reset
            self.f = None
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None


def _header(head, name):
    # The value of header `name` (lower case) in a lower-cased response head, or "".
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip() == name:
            return v.strip().decode()
    return ""


def _send(s, data):
    mv = memoryview(data)
    while mv:
        n = s.send(mv)
        mv = mv[n:]


def _recv(s, buf):
    # MicroPython sockets read into a buffer with readinto, CPython's and CircuitPython's with
    # recv_into.
    r = getattr(s, "recv_into", None) or s.readinto
    return r(buf)


def _timed_out(e):
    return type(e).__name__ in ("timeout", "TimeoutError") or (e.args and e.args[0] in (11, 110))
