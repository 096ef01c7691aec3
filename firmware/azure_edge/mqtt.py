# The one seam between the client and MiniMQTT's private members (supported: MiniMQTT
# >=8.0.1,<9, as pyproject.toml and package.json say; `make test-minimqtt` runs the firmware
# tests on the oldest and the newest). A MiniMQTT upgrade is checked here and nowhere else.
from azure_edge import net

net.install()  # before MiniMQTT: our sockets, and no typing module needed
from adafruit_minimqtt.adafruit_minimqtt import MQTT, MMQTTException  # noqa: E402
from adafruit_ticks import ticks_diff, ticks_ms  # noqa: E402  MiniMQTT's clock

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

MAX_INBOUND = const(4096)  # bigger inbound topics or payloads are skipped, not loaded
# With the update agent on: ADU's desired deviceUpdate alone is about 3.5 KB (a JWS with an
# RSA-3072 signing key in its header, the manifest, the URLs), so the whole twin is over 4 KiB.
ADU_INBOUND = const(8192)
_PUBACK = const(0x40)
_SUBACK = const(0x90)
# What MiniMQTT raises on broker input it does not expect (asserts on packet lengths and
# ids, its CONNACK table, a topic's UTF-8): the stream can no longer be trusted, so the
# client treats these as a lost link. Caught by the client, not wrapped here: wrappers
# around MiniMQTT's methods would cost heap for no more safety.
MALFORMED = (AssertionError, KeyError, IndexError, UnicodeError)


class Link(MQTT):
    """MiniMQTT, reading oversized inbound messages in pieces: `skipped` holds the size of
    one it dropped, for the client to report.

    MiniMQTT allocates each inbound topic and payload whole: a huge one would raise
    MemoryError mid-packet, and a QoS 1 one would come back after every reconnect.
    """
    skipped = 0
    max_in = MAX_INBOUND

    def _sock_exact_recv(self, bufsize, timeout=None):
        if bufsize <= self.max_in:
            return MQTT._sock_exact_recv(self, bufsize, timeout)
        self.skipped = bufsize
        left = bufsize
        while left:
            left -= len(MQTT._sock_exact_recv(self, min(left, 1024), timeout))
        return b""


def open_link(m, password):
    """One MQTT connect attempt with this password (MiniMQTT's own retries bypassed)."""
    m._password = password  # a new SAS token each time; the username was set at construction
    m._connect()


def close_link(m):
    """Close the socket and forget what belonged to the link."""
    try:
        m._close_socket()
    except Exception:
        pass
    m._is_connected = False
    # A link lost inside an oversized message must not make the next link drop its first one.
    m.skipped = 0


def linked(m):
    """True once the broker's CONNACK accepted this link."""
    return m._is_connected


def next_pid(m):
    """Take the next packet id (1..65535), shared with MiniMQTT's own publishes."""
    m._pid = m._pid % 0xFFFF + 1
    return m._pid


def send(m, pkt):
    """Write one whole packet; the keepalive counts from here."""
    m._send_bytes(pkt)
    m._last_msg_sent_timestamp = ticks_ms()


def subscribe(m, filters, timeout):
    """SUBSCRIBE to [(filter, qos)] in one packet (one TLS record) and wait up to `timeout` s
    for its SUBACK, serving other packets meanwhile. Returns the filters the broker refused
    (return code 0x80): the link is good for the rest. MiniMQTT's subscribe() writes three records; the board's build leaves it out."""
    body = bytearray()
    for topic, qos in filters:
        t = topic.encode()
        body += bytes((len(t) >> 8, len(t) & 0xFF)) + t + bytes((qos,))
    pid = next_pid(m)
    head = bytearray((0x82,))
    m._encode_remaining_length(head, 2 + len(body))
    send(m, head + bytes((pid >> 8, pid & 0xFF)) + body)
    stamp = ticks_ms()
    while True:
        op = m._wait_for_msg()
        if op == _SUBACK:
            n = m._decode_remaining_length()
            rc = m._sock_exact_recv(n) if 0 < n <= 64 else b""
            if len(rc) != 2 + len(filters) or rc[0] << 8 | rc[1] != pid:
                raise MMQTTException("protocol error: malformed SUBACK from the gateway")
            return [filters[i][0] for i in range(len(filters)) if rc[2 + i] > 2]
        if op is None and ticks_diff(ticks_ms(), stamp) > timeout * 1000:
            raise MMQTTException("no SUBACK from the gateway in %d s" % timeout)


def puback(m):
    """Serve one inbound packet: the packet id of a PUBACK, -1 for any other packet (PUBLISH
    and PINGRESP are handled inside), None when none came."""
    op = m._wait_for_msg()
    if op != _PUBACK:
        return None if op is None else -1
    raw = m._sock_exact_recv(3)  # length byte, packet id
    if raw[0] != 2:
        raise MMQTTException("protocol error: malformed PUBACK from the gateway")
    return raw[1] << 8 | raw[2]
