"""A hub of our own that speaks raw MQTT 3.1.1 over real TLS, for the hostile-hub tests.

It behaves like edgeHub for what the device needs (CONNACK, SUBACK, PUBACK, the twin GET,
PINGRESP, a link closed for a PUBLISH packet over 262,144 bytes) and, on request, misbehaves:
each new connection takes the next case from `cases` and plays it once. Telemetry bodies
(JSON) are kept in `readings`; reported-property patches in `reported`.
"""
import json
import socket
import ssl
import struct
import threading
import time

MAX_PACKET = 262144  # edgeHub's decoder closes the link for a bigger PUBLISH packet


def _packet(kind, body):
    rem = len(body)
    head = bytearray([kind])
    while True:
        b = rem & 0x7F
        rem >>= 7
        head.append(b | (0x80 if rem else 0))
        if not rem:
            return bytes(head) + body


def publish(topic, body=b"", qos=0, pid=1):
    """A PUBLISH packet; topic may be bytes (to send what no UTF-8 encoder would)."""
    t = topic.encode() if isinstance(topic, str) else topic
    var = struct.pack("!H", len(t)) + t + (struct.pack("!H", pid) if qos else b"")
    return _packet(0x30 | qos << 1, var + body)


class _Closed(Exception):
    pass


class RawHub:
    """The hub on a free port of 127.0.0.1; `cases` is a list of case names (see _play)."""

    def __init__(self, server_cert, server_key, drop_seq=None):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(server_cert, server_key)
        self.cases = []
        self.played = []
        self.readings = []   # telemetry bodies, parsed
        self.reported = []   # reported-property patches, parsed
        self.connects = 0    # CONNECT packets seen
        self.sessions = []   # per connection: the case, topics subscribed, twin GETs
        self.drop_seq = drop_seq  # close the link whenever a reading with this seq arrives
        self.drop_hits = 0   # how many times that reading arrived
        self.refuse_all = False  # close the link on every reading (a gateway whose disk is full)
        self.refuse_filter = None  # SUBACK 0x80 for the filter that contains this
        self.away = False    # close every connection before TLS (a gateway not there yet)
        self.ack_delay = 0   # seconds each reading's PUBACK waits (a slow gateway)
        # For the next c2d_budget readings, send c2d_per_reading C2D messages "go" (QoS 0)
        # before the PUBACK, then one "stop" and PUBACKs without delay from there on.
        self.c2d_budget = 0
        self.c2d_per_reading = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.running = True
        self.live = []       # open connections, for kick()
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self):
        self.running = False
        self.sock.close()
        self.kick()

    def kick(self):
        """Close every open connection, as a restarting gateway would."""
        with self.lock:
            live, self.live = self.live, []
        for conn in live:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def seqs(self):
        with self.lock:
            return [r.get("seq") for r in self.readings if isinstance(r, dict)]

    def _accept(self):
        while self.running:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw):
        raw.settimeout(30)
        if self.away:
            raw.close()
            return
        try:
            conn = self.ctx.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        with self.lock:
            case = self.cases.pop(0) if self.cases else None
            self.live.append(conn)
        try:
            self._session(conn, case)
        except (_Closed, OSError, ssl.SSLError, ValueError):
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def _read(self, conn, n):
        buf = b""
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                raise _Closed()
            buf += chunk
        return buf

    def _next(self, conn):
        kind = self._read(conn, 1)[0]
        rem, shift = 0, 0
        while True:
            b = self._read(conn, 1)[0]
            rem |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        size = 1 + (shift // 7) + rem
        if kind >> 4 == 3 and size > MAX_PACKET:
            raise _Closed()  # as edgeHub's decoder: over the limit, the link closes
        return kind, self._read(conn, rem)

    def _session(self, conn, case):
        kind, _ = self._next(conn)
        if kind >> 4 != 1:
            return
        session = {"case": case, "subs": [], "twin_gets": 0}
        with self.lock:
            self.connects += 1
            self.played.append(case)
            self.sessions.append(session)
        if case == "early_publish":
            conn.sendall(publish("$iothub/methods/POST/reboot/?$rid=77", b"{}"))
        conn.sendall({"connack_rc6": b"\x20\x02\x00\x06", "connack_rc255": b"\x20\x02\x00\xff",
                      "connack_len": b"\x20\x03\x00\x00\x00"}.get(case, b"\x20\x02\x00\x00"))
        if case in ("connack_rc6", "connack_rc255", "connack_len"):
            self._drain(conn)
            return
        puback_done = False
        while True:
            kind, body = self._next(conn)
            t = kind >> 4
            if t == 8:  # SUBSCRIBE: grant what was asked
                pid = body[:2]
                if case == "suback_pid":
                    pid = struct.pack("!H", (struct.unpack("!H", pid)[0] + 1) & 0xFFFF)
                n = 0
                i, grants = 2, b""
                while i < len(body):
                    tl = struct.unpack("!H", body[i:i + 2])[0]
                    name = body[i + 2:i + 2 + tl].decode()
                    refuse = self.refuse_filter and self.refuse_filter in name
                    grants += bytes([0x80 if refuse else min(body[i + 2 + tl], 1)])
                    session["subs"].append(name)
                    i += 3 + tl
                    n += 1
                conn.sendall(_packet(0x90, pid + grants))
            elif t == 3:
                self._on_publish(conn, kind, body, case, puback_done, session)
                if case == "puback_len" and "/messages/events/" in self._topic(body):
                    puback_done = True
            elif t == 12:
                conn.sendall(b"\xd0\x00")
            elif t == 14:
                return

    def _topic(self, body):
        tl = struct.unpack("!H", body[:2])[0]
        return body[2:2 + tl].decode()

    def _on_publish(self, conn, kind, body, case, puback_done, session):
        topic = self._topic(body)
        qos = (kind >> 1) & 3
        i = 2 + len(topic.encode())
        pid = body[i:i + 2] if qos else b""
        payload = body[i + len(pid):]
        if "/messages/events/" in topic:
            reading = json.loads(payload) if payload[:1] == b"{" else None
            if self.drop_seq is not None and isinstance(reading, dict) \
                    and reading.get("seq") == self.drop_seq:
                with self.lock:
                    self.drop_hits += 1
                raise _Closed()  # this reading closes the link, every time
            if self.refuse_all:
                raise _Closed()
            with self.lock:
                self.readings.append(reading)
            if self.c2d_budget > 0:
                self.c2d_budget -= 1
                c2d = "devices/x/messages/devicebound/"
                conn.sendall(publish(c2d, b"go") * self.c2d_per_reading)
                if not self.c2d_budget:
                    conn.sendall(publish(c2d, b"stop"))
                    self.ack_delay = 0
            if self.ack_delay and qos:
                time.sleep(self.ack_delay)
            if case == "puback_len" and not puback_done:
                conn.sendall(b"\x40\x03" + pid + b"\x00")
                return
        elif topic.startswith("$iothub/twin/GET/"):
            session["twin_gets"] += 1
            rid = topic.split("$rid=")[1]
            conn.sendall(publish("$iothub/twin/res/200/?$rid=" + rid,
                                 b'{"desired": {"$version": 1}, "reported": {}}'))
            self._after_twin(conn, case)
        elif topic.startswith("$iothub/twin/PATCH/properties/reported/"):
            with self.lock:
                self.reported.append(json.loads(payload))
            rid = topic.split("$rid=")[1]
            conn.sendall(publish("$iothub/twin/res/204/?$rid=%s&$version=2" % rid))
        if qos:
            conn.sendall(b"\x40\x02" + pid)

    def _after_twin(self, conn, case):
        # Cases played once the device is fully linked (subscribed, twin asked for).
        if case == "bad_utf8_topic":
            conn.sendall(publish(b"devices/\xff\xfe/messages/devicebound/", b"x"))
        elif case == "qos2_publish":
            conn.sendall(publish("$iothub/methods/POST/ping/?$rid=5", b"{}", qos=2, pid=9))
        elif case == "cut_oversized":
            # A 10,000-byte C2D message of which only half arrives before the link closes.
            whole = publish("devices/x/messages/devicebound/", b"z" * 10000)
            conn.sendall(whole[:5000])
            raise _Closed()

    def _drain(self, conn):
        # Let the device close first, as a broker that has said its piece would.
        try:
            while conn.recv(1024):
                pass
        except OSError:
            pass
