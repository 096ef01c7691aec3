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
E_ARCHIVE = 0x7E000304    # a .tar that cannot be unpacked as it streams (adu.E_INSTALL)


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


def early(svc, c):
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
            # The gateway as the Job asks it (adu_job._download).
            host, port, path = split(mcc_url(url, c.du.get("cache") or c.cs.connect_host))
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


class Unpack:
    """A .tar unpacked into the slot folder `s` as it streams, instead of written whole and
    unpacked after by slots.install: one pass over the flash, not two. The bytes that are not a
    member's content (headers, padding, the end) go to the part file, so that after a dropped
    link or a reset the bytes received so far can be hashed again in their order (replay) and
    the download resumed from there with Range. The slot never runs before the hash is checked:
    it is the spare one, and only the install writes its .id, without which it never boots
    (slots.boot); a file that fails its check has its slot wiped (adu_job._drop), and so has a
    download that starts again from byte 0 (the Job, when there is no part file). After a
    reset the part file may hold less than the slot's files (it reaches the flash when closed,
    a member's file when that closes): the replay removes every file it did not hash, so that
    nothing in the slot escapes the check.
    Plain ustar, as slots._untar reads it: regular files only, no absolute paths, no "..";
    other members are skipped, folders made as needed."""

    def __init__(self, s):
        self.s = s
        self.hdr = bytearray(512)
        self.out = None
        self._state()

    def _state(self):
        self.hn = 0          # bytes of the member header so far
        self.left = 0        # content bytes of the member still to come (to self.name)
        self.skip = 0        # padding, or a skipped member's blocks, still to come
        self.end = False     # past the archive's end: the rest is padding
        self.name = None
        self.live = True     # False while replaying: nothing is written
        self.close()

    def feed(self, chunk, part):
        """Write the next bytes of the archive: content to the slot, the rest to `part`."""
        if self.out is not None and len(chunk) < self.left:  # (most chunks: inside a member)
            self.out.write(chunk)
            self.left -= len(chunk)
            return
        while chunk:
            if self.left:
                k = min(self.left, len(chunk))
                if self.out is None:
                    self.out = self._open("ab")  # (resumed within this member)
                self.out.write(chunk[:k])
                self.left -= k
                if not self.left:
                    self.close()
            else:
                k = self._side(chunk, part)
            chunk = chunk[k:]

    def replay(self, part, h, buf):
        """Feed `h` the archive's bytes received so far, from the part file and the slot's files
        in their order; return their count, the state left where the stream goes on."""
        self._state()
        self.live = False
        self.names = []
        n = 0
        try:
            f = open(part, "rb")
        except OSError:
            f = None
        while f is not None:
            mv = memoryview(buf)
            if self.left:  # the member's content, from its file (what of it reached the flash)
                k = 0
                try:
                    with open(self.s + "/" + self.name, "rb") as c:
                        while self.left:
                            k = c.readinto(mv[:min(len(buf), self.left)])
                            if not k:
                                break
                            h.update(mv[:k])
                            n += k
                            self.left -= k
                except OSError:
                    pass
                if self.left:
                    break  # the stream stopped inside this member
                continue
            k = f.readinto(mv[:len(buf) if self.end else self.skip or 512 - self.hn])
            if not k:
                break
            h.update(mv[:k])
            n += k
            self._side(mv[:k], None)
        if f is not None:
            f.close()
        self.live = True
        self._prune(self.s)
        self.names = None
        return n

    def _prune(self, p):
        # Remove the slot's files the replay did not hash (folders stay: they run nothing).
        for n in os.listdir(p):
            q = p + "/" + n
            if os.stat(q)[0] & 0x4000:  # S_IFDIR
                self._prune(q)
            elif q[len(self.s) + 1:] not in self.names:
                os.remove(q)

    def _side(self, mv, part):
        # Take bytes outside the members' content (written to `part` unless None): how many.
        if self.end:
            k = len(mv)
        elif self.skip:
            k = min(self.skip, len(mv))
            self.skip -= k
        else:
            k = min(512 - self.hn, len(mv))
            self.hdr[self.hn:self.hn + k] = mv[:k]
            self.hn += k
        if part is not None:
            part.write(mv[:k])
        if self.hn == 512:
            self.hn = 0
            self._member()
        return k

    def _member(self):
        # A whole header in self.hdr: where its member's content goes.
        b = self.hdr
        if not b[0]:
            self.end = True  # a zero block: the archive's end
            return
        name = _field(b, 0, 100).decode()
        prefix = _field(b, 345, 500).decode()
        if prefix:
            name = prefix + "/" + name
        try:
            size = int(_field(b, 124, 136).strip() or b"0", 8)
        except ValueError:
            raise Failed(E_ARCHIVE, "not a tar archive", False)
        if not name or name.startswith("/") or ".." in name.split("/") or name.startswith(".id"):
            # (.id: the slot's own mark of a whole install, written after the hash check only)
            raise Failed(E_ARCHIVE, "unsafe path in the update: " + name[:60], False)
        pad = -size % 512
        if b[156] in (0, 48):  # a regular file ('0' or NUL)
            self.name = name
            if not self.live:
                self.names.append(name)
            self.left = size
            self.skip = pad
            if self.live or not size:
                # Created now, even empty ones (replay: an empty file has no bytes to hash
                # that would show it missing).
                self.close()
                self.out = self._open("wb")
                if not size:
                    self.close()
        else:
            self.skip = size + pad

    def _open(self, mode):
        p = self.s + "/" + self.name
        i = p.rfind("/")
        try:
            return open(p, mode)
        except OSError:
            _mkdirs(p[:i])
            return open(p, mode)

    def close(self):
        if self.out is not None:
            self.out.close()
            self.out = None


def _field(b, i, j):
    # A NUL-terminated header field. (Not split(b"\0"): on a field of NULs that builds a list
    # of empty strings, 2 KiB of heap for one name.)
    return bytes(b[i:j]).partition(b"\0")[0]


def _mkdirs(p):
    # The folders of a member's path within the slot (made once, on the first file in them).
    try:
        os.mkdir(p)
    except OSError as e:
        if e.args[0] != 2:  # ENOENT: its parent first; EEXIST: there
            return
        _mkdirs(p[:p.rfind("/")])
        os.mkdir(p)


class Fetch:
    """One file: `url` to `path` (its part file `path + ".part"` survives a power cut and a
    dropped link), at most `size` bytes, fed to `hasher` (adu_hash.Hasher) as it streams.
    `sock`: the GET of `url` from byte 0 already sent (early), used by the first request.
    `unpack`: an Unpack, for a .tar unpacked into its slot as it streams."""

    def __init__(self, url, path, size, hasher_of, sock=None, unpack=None):
        self.host, self.port, self.path = split(url)
        self.pre = sock
        self.unpack = unpack
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
        if self.unpack is not None:
            self.have = self.unpack.replay(self.dest + ".part", self.h, self.buf)
        else:
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
        if self.unpack is not None:
            # From byte 0 again: the Job wipes the slot first (it does when the part is gone).
            raise Failed(E_HTTP, "the download starts again", True)

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
        self.f = self._sink()

    def _sink(self):
        # Where the bytes go: the part file (adu_ota.py's Fetch writes an OTA slot instead).
        return open(self.dest + ".part", "ab")

    def _restart_keep_sock(self):
        s, self.sock = self.sock, None
        try:
            self._restart()
        except Failed:
            s.close()
            raise
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
        self.sock.settimeout(_READ_S)
        recv = _reader(self.sock)
        mv = memoryview(self.buf)
        while self.left and ticks_diff(end, ticks_ms()) > 0:
            try:
                n = recv(self.buf)
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
            self._write(mv[:min(n, self.left)])
        if self.left:
            return False
        return self._done()

    def _write(self, chunk):
        if len(chunk) > self.left:
            chunk = chunk[:self.left]
        if self.unpack is None:
            self.f.write(chunk)
        else:
            self.unpack.feed(chunk, self.f)
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
        if self.unpack is not None:
            self.unpack.close()
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


def _reader(s):
    # MicroPython sockets read into a buffer with readinto, CPython's and CircuitPython's with
    # recv_into.
    return getattr(s, "recv_into", None) or s.readinto


def _recv(s, buf):
    return _reader(s)(buf)


def _timed_out(e):
    return type(e).__name__ in ("timeout", "TimeoutError") or (e.args and e.args[0] in (11, 110))
