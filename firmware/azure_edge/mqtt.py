# The one seam between the client and MiniMQTT's private members (supported: MiniMQTT
# >=8.0,<9, as pyproject.toml and package.json say; `make test-minimqtt` runs the firmware
# tests on the oldest and the newest). A MiniMQTT upgrade is checked here and nowhere else.
from azure_edge import net

net.install()  # before MiniMQTT: our sockets, and no typing module needed
from adafruit_minimqtt.adafruit_minimqtt import MQTT, MMQTTException  # noqa: E402
from adafruit_ticks import ticks_ms  # noqa: E402  MiniMQTT's clock

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

MAX_INBOUND = const(4096)  # bigger inbound topics or payloads are skipped, not loaded
# What MiniMQTT raises on input it does not expect from the broker (asserts on packet
# lengths and ids, its CONNACK table, the topic's UTF-8): the stream can no longer be trusted.
_MALFORMED = (AssertionError, KeyError, IndexError, UnicodeError)


def _malformed(where, err):
    if isinstance(err, KeyError) and where == "CONNACK":
        # An MQTT 5 broker's reason codes are not in MiniMQTT's table: still a refusal.
        code = err.args[0] if err.args else None
        return MMQTTException("gateway refused the connection (CONNACK %s)" % code, code=code)
    return MMQTTException("protocol error: malformed %s from the gateway (%s)"
                          % (where, type(err).__name__))


class Link(MQTT):
    """MiniMQTT, hardened: malformed broker input raises MMQTTException (drop the link,
    reconnect) instead of what MiniMQTT lets escape; oversized inbound messages are skipped.

    MiniMQTT allocates each inbound topic and payload whole: a huge one would raise
    MemoryError mid-packet, and a QoS 1 one would come back after every reconnect. It is read
    in small pieces instead and dropped; `skipped` holds its size for the client to report.
    """
    skipped = 0

    def _sock_exact_recv(self, bufsize, timeout=None):
        if bufsize <= MAX_INBOUND:
            return MQTT._sock_exact_recv(self, bufsize, timeout)
        self.skipped = bufsize
        left = bufsize
        while left:
            left -= len(MQTT._sock_exact_recv(self, min(left, 1024), timeout))
        return b""

    def _wait_for_msg(self, timeout=None):
        try:
            return MQTT._wait_for_msg(self, timeout)
        except _MALFORMED as e:
            raise _malformed("message", e)

    def _connect(self, *args, **kwargs):
        try:
            return MQTT._connect(self, *args, **kwargs)
        except _MALFORMED as e:
            raise _malformed("CONNACK", e)

    def subscribe(self, topic, qos=0):
        try:
            return MQTT.subscribe(self, topic, qos)
        except _MALFORMED as e:
            raise _malformed("SUBACK", e)

    def publish(self, topic, msg, retain=False, qos=0):
        try:
            return MQTT.publish(self, topic, msg, retain, qos)
        except _MALFORMED as e:
            raise _malformed("PUBACK", e)


def open_link(m, password):
    """One MQTT connect attempt with this password (MiniMQTT's own retries bypassed)."""
    m.username_pw_set(m._username, password)
    m._connect()


def close_link(m):
    """Close the socket and forget what belonged to the link."""
    try:
        m._close_socket()
    except Exception:
        pass
    m._is_connected = False
    # MiniMQTT forgets its subscription list only in disconnect(): after a lost link each
    # reconnect's subscribe() would add to it, 96 B of heap per reconnect, for good.
    m._subscribed_topics = []
    # A link lost inside an oversized message must not make the next link drop its first one.
    m.skipped = 0


def linked(m):
    """True once the broker's CONNACK accepted this link."""
    return m._is_connected


def last_pid(m):
    """The packet id MiniMQTT used last."""
    return m._pid


def next_pid(m):
    """Take the next packet id (1..65535), shared with MiniMQTT's own publishes."""
    m._pid = m._pid % 0xFFFF + 1
    return m._pid


def send(m, pkt):
    """Write one whole packet; the keepalive counts from here."""
    m._send_bytes(pkt)
    m._last_msg_sent_timestamp = ticks_ms()


def next_packet(m):
    """Read one packet type byte (PUBLISH and PINGRESP handled inside); None if none came."""
    return m._wait_for_msg()


def read(m, n):
    """Read exactly n bytes of the current packet."""
    return m._sock_exact_recv(n)


def recv_timeout(m):
    """Seconds MiniMQTT waits for an answer."""
    return m._recv_timeout
