# An IoT Hub device or module client that talks to an IoT Edge gateway over MQTT (MiniMQTT).
# It never blocks for long: call step() in a loop. While the gateway is away, telemetry
# goes to the outbox and is drained in order once the gateway is back.
import binascii
import gc
import json
import os
import random
import time

from azure_edge import clock, mqtt, run_and_unload, topics
from azure_edge.mqtt import MAX_INBOUND, MMQTTException
from adafruit_ticks import ticks_add, ticks_diff, ticks_ms  # MiniMQTT's clock (after mqtt: net)

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

# edgeHub's MQTT decoder closes the link for a PUBLISH packet over this many bytes, counting
# the fixed header, remaining length, topic length, topic, packet id and body.
MAX_PACKET = const(262144)
MAX_REPLIES = const(8)       # method and twin answers waiting to be sent
# Readings in flight while draining the outbox. The link's round trip, not the device, bounds
# a drain: 128 keep a 10 ms link busy; on a board the TCP send buffer (lwIP: about 5.7 KB)
# holds writes back sooner anyway. Costs no heap: records are read one at a time.
WINDOW = const(128)
ACK_BATCH = const(16)        # acknowledged readings popped from the outbox with one head write
OOM_RESET = const(5)         # connects failing with MemoryError in a row before a reset
_NL = b"\n"
# What a link raises when it fails: the network, the broker, MiniMQTT's view of either, and
# what MiniMQTT lets escape on malformed broker input.
_LINK_ERRORS = (OSError, MMQTTException, RuntimeError, MemoryError) + mqtt.MALFORMED


class Client:
    """One identity (device or module) behind a gateway.

    `cs` is a parsed connection string, or an object with its fields and connect_host (as
    azure_edge.startup makes, so the parser can be unloaded); `ssl_context` a verifying TLS
    context (as MiniMQTT takes it); `pool` the socket pool. `outbox` stores readings while
    disconnected (default: a small RAM queue).
    """

    def __init__(self, cs, ssl_context, pool, port=8883, sas_ttl=3600, sas_margin=120,
                 keepalive=60, outbox=None, log=print, backoff_cap=60, auth_backoff_cap=600,
                 queue_qos0=False, model_id=None, set_aside_after=3):
        if cs.x509 and cs.module_id:
            raise ValueError("modules behind a gateway must use a SharedAccessKey: edgeHub does"
                             " not accept X.509 for modules")
        self.cs = cs
        self.port = port
        self.log = log
        self.sas_ttl = sas_ttl
        # Renew before expiry; with short test TTLs keep the margin inside the lifetime.
        self.sas_margin = min(sas_margin, sas_ttl // 4 or 1)
        if outbox is None:
            from azure_edge.memqueue import MemoryQueue
            outbox = MemoryQueue()
        self.outbox = outbox
        self.queue_qos0 = queue_qos0
        self.set_aside_after = set_aside_after  # links a queued reading may close in a row
        self.set_aside = 0       # readings removed from the outbox because they jammed it
        self._gone = 0           # readings that left the outbox head since boot: its identity
        self._jam_head = -1      # which head closed the link last, and how many times in a row
        self._jam_count = 0
        self.backoff_cap = backoff_cap
        self.auth_backoff_cap = auth_backoff_cap
        self.methods = {}
        self.on_c2d = None       # fn(body: bytes, properties: dict)
        self.on_desired = None   # fn(desired: dict, whole: bool); whole: the twin GET's document
        self.interval = 10       # telemetry seconds; the app reads it, the twin can set it
        self.info = {}           # static reported properties (firmware, board, runtime); None: none
        self.connected = False
        self.reboot_requested = False
        self.last_error = None
        self.reconnects = 0
        self.sent = 0
        # Unique per boot, so $.mid stays unique across resets (unix MicroPython's random is not seeded).
        self._boot = binascii.hexlify(os.urandom(4)).decode()
        self._seq = 0
        self._rid = 0
        self._twin_rid = None
        self._twin_at = None     # when to ask for the twin again after a refused GET
        self._twin_tries = 0
        self._desired_version = -1
        self._renew_at = 0
        self._retry_at = ticks_ms()  # ticks wrap: compare only with ticks_diff, never with 0
        self._failures = 0
        self._oom = 0
        self._replies = []
        self._prefix = topics.telemetry(cs.device_id, cs.module_id)
        self._prefix_b = self._prefix.encode()
        # A PUBACK or CONNACK not back within the keepalive means a dead link: a busy device
        # must not wait longer than an idle one's ping would.
        self._recv_timeout = min(10, keepalive or 10)
        self.mqtt = mqtt.Link(broker=cs.connect_host, port=port, is_ssl=True, keep_alive=keepalive,
                         client_id=topics.client_id(cs.device_id, cs.module_id),
                         username=topics.username(cs.host_name, cs.device_id, cs.module_id)
                         + _model(model_id),
                         password="", socket_pool=pool, ssl_context=ssl_context,
                         use_binary_mode=True, socket_timeout=0.2,
                         recv_timeout=self._recv_timeout)
        self.mqtt.on_message = self._on_message
        self.register("ping", _ping)
        self.register("set_interval", self._set_interval)
        self.register("reboot", self._reboot)

    # --- connection ------------------------------------------------------------------

    def connect(self):
        """One connect attempt: TLS, MQTT CONNECT, subscriptions, twin GET. Raises on failure."""
        mqtt.open_link(self.mqtt, self._password())  # one attempt: retries and backoff are ours
        subs = [(topics.METHODS_FILTER, 0), (topics.TWIN_RES_FILTER, 0),
                (topics.DESIRED_FILTER, 0)]
        if not self.cs.module_id:
            subs.append((topics.c2d_filter(self.cs.device_id), 1))
        self.mqtt.subscribe(subs)
        self.connected = True
        self._failures = 0
        self.last_error = None
        # Desired patches arrive only while connected: fetch the whole twin every time.
        self._twin_tries = 0
        self._get_twin()

    def _get_twin(self):
        self._twin_at = None
        self._twin_rid = self._next_rid()
        self.mqtt.publish(topics.twin_get(self._twin_rid), b"", qos=0)

    def _password(self):
        if self.cs.x509:
            return ""  # edgeHub takes an empty password as certificate authentication
        now = clock.unix_time()
        expiry = now + self.sas_ttl
        self._renew_at = expiry - self.sas_margin
        # Signing code is needed only here, before the TLS handshake: unloaded for it.
        return run_and_unload("sas", "token_for", self.cs, expiry)

    def disconnect(self):
        """Say goodbye to the gateway (best effort) and close the socket."""
        if self.connected:
            try:
                self.mqtt.disconnect()
            except Exception:
                pass
        self._drop_link()

    def _drop_link(self):
        self.connected = False
        mqtt.close_link(self.mqtt)
        self._replies = []

    def _lost(self, err):
        was = self.connected
        self._drop_link()
        if was:
            self.log("link to gateway lost (%s); reconnecting" % _short(err))
        self._retry_at = ticks_ms()

    def _try_connect(self):
        if ticks_diff(ticks_ms(), self._retry_at) < 0:
            return
        try:
            self.connect()
        except _LINK_ERRORS + (ValueError,) as e:
            self._drop_link()
            self._failures += 1
            auth = getattr(e, "code", None) in (4, 5)
            cap = self.auth_backoff_cap if auth else self.backoff_cap
            base = 15 if auth else 1
            delay = min(cap, base * (1 << min(self._failures - 1, 12)))
            delay = delay * (0.75 + random.getrandbits(8) / 512)  # jitter: 0.75x to 1.25x
            self._retry_at = _later(int(delay * 1000))
            self._oom = self._oom + 1 if isinstance(e, MemoryError) else 0
            try:
                # Loaded only on failure, and unloaded again: its messages cost heap.
                msg = run_and_unload("diagnose", "explain", e, self.cs.connect_host, self.port,
                                     self.cs.x509)
            except MemoryError:
                msg = "out of memory while connecting"
            if msg != self.last_error:
                self.log(msg)
            self.last_error = msg
            if self._oom >= OOM_RESET:
                # A heap too fragmented to connect does not heal by waiting; the outbox is on flash.
                self.log("out of memory %d times in a row while connecting: resetting" % self._oom)
                self.reboot_requested = True
            self.log("retrying in %.1f s" % delay)
            return
        self._oom = 0
        if self.reconnects or self._failures:
            self.log("connected to %s:%d" % (self.cs.connect_host, self.port))
        else:
            self.log("connected to %s:%d as %s" % (self.cs.connect_host, self.port,
                                                    topics.client_id(self.cs.device_id,
                                                                     self.cs.module_id)))
        self.reconnects += 1

    # --- the loop ----------------------------------------------------------------------

    def step(self, timeout=0.2):
        """Serve the link for about `timeout` seconds: connect, renew, receive, drain."""
        if not self.connected:
            self._try_connect()
            if not self.connected:
                time.sleep(min(timeout, 0.2))
                return
        try:
            if not self.cs.x509 and clock.unix_time() >= self._renew_at:
                self.log("renewing SAS token")
                self.disconnect()
                self._retry_at = ticks_ms()
                self._try_connect()
                return
            if len(self.outbox):
                self._drain(timeout)  # serves inbound messages too while it awaits PUBACKs
            else:
                self.mqtt.loop(max(timeout, 0.2))
            if self._twin_at is not None and ticks_diff(ticks_ms(), self._twin_at) >= 0:
                self._get_twin()
            self._flush_replies()
        except _LINK_ERRORS as e:
            self._lost(e)
        gc.collect()

    def _drain(self, budget):
        # The backlog streams out with up to WINDOW publishes awaiting their PUBACKs; each ack
        # lets the next reading go, so the link stays busy instead of idling a round trip per
        # reading (MiniMQTT's publish() waits for each). A reading leaves the outbox only once
        # acknowledged, ACK_BATCH at a time so the head file is not rewritten per reading.
        box = self.outbox
        m = self.mqtt
        end = _later(int(budget * 1000))
        self._drops = getattr(box, "dropped", 0)
        self._acked = self._popped = 0
        pid0 = 0
        n = 0
        lost = False
        it = box.records()  # one record of heap at a time
        try:
            for record in it:
                cut = record.find(_NL)
                rec = memoryview(record)
                pid = mqtt.next_pid(m)
                pid0 = pid0 or pid
                self._publish_raw(rec[:cut], rec[cut + 1:], pid)
                n += 1
                record = rec = None
                while n - self._acked >= WINDOW:
                    self._await_ack(pid0)
                # A full outbox dropping records under us (a callback queued one) ends the pass.
                if ticks_diff(ticks_ms(), end) >= 0 or getattr(box, "dropped", 0) != self._drops:
                    break
            it.close()  # the segment file, before the waits below
            while self._acked < n:
                self._await_ack(pid0)
        except _LINK_ERRORS:
            lost = n > self._acked  # the link closed with a reading unacknowledged
            raise
        finally:
            it.close()
            self._pop_acked()
            if lost:
                self._jammed()
        if not n and len(box):
            box.peek()  # records() stops at a damaged head record; peek() skips past it

    def _publish_raw(self, bag, body, pid):
        # One QoS 1 PUBLISH (topic: telemetry prefix + property bag) in a single write, so one
        # TLS record, without waiting for its PUBACK. Built straight from the record's bytes.
        prefix = self._prefix_b
        tlen = len(prefix) + len(bag)
        rem = 4 + tlen + len(body)
        n = 2 if rem < 0x80 else 3 if rem < 0x4000 else 4
        pkt = bytearray(n + rem)
        pkt[0] = 0x32  # PUBLISH, QoS 1
        i = 1
        while rem:
            pkt[i] = rem & 0x7F | (0x80 if rem > 0x7F else 0)
            rem >>= 7
            i += 1
        pkt[n] = tlen >> 8
        pkt[n + 1] = tlen & 0xFF
        mv = memoryview(pkt)
        i = n + 2 + len(prefix)
        mv[n + 2:i] = prefix
        mv[i:i + len(bag)] = bag
        i += len(bag)
        pkt[i] = pid >> 8
        pkt[i + 1] = pid & 0xFF
        mv[i + 2:] = body
        mqtt.send(self.mqtt, pkt)

    def _await_ack(self, pid0):
        # Brokers acknowledge QoS 1 in the order they received the publishes (MQTT 3.1.1
        # section 4.6): the next ack is for pid0 + acked. Inbound messages are served meanwhile.
        stamp = ticks_ms()
        while True:
            pid = mqtt.puback(self.mqtt)
            if pid is not None and pid >= 0:
                if pid == (pid0 + self._acked - 1) % 0xFFFF + 1:
                    self._acked += 1
                    self.sent += 1
                    if self._acked - self._popped >= ACK_BATCH:
                        self._pop_acked()
                    return
            elif pid is None and ticks_diff(ticks_ms(), stamp) > self._recv_timeout * 1000:
                # Within the keepalive, as publish() waits: a dead link mid-drain is seen as soon.
                raise MMQTTException("no PUBACK from the gateway in %d s" % self._recv_timeout)

    def _pop_acked(self):
        # Records leave the head in order: those acked, less any the full outbox dropped.
        box = self.outbox
        n = self._acked - self._popped - (getattr(box, "dropped", 0) - self._drops)
        if n > 0:
            box.pop(n)
            self._popped += n
            self._gone += n

    def _jammed(self):
        # The head reading was in flight when the link closed. A gateway that refuses it
        # every time (edgeHub closes the link for a packet it will not take) would hold back
        # everything behind it for good: after set_aside_after links in a row, remove it.
        head = self._gone + getattr(self.outbox, "dropped", 0)
        self._jam_count = self._jam_count + 1 if head == self._jam_head else 1
        self._jam_head = head
        if self._jam_count < self.set_aside_after or not len(self.outbox):
            return
        self.outbox.pop(1)
        self._gone += 1
        self._jam_count = 0
        self.set_aside += 1
        self.log("set aside the oldest queued reading: sending it closed the link %d times in a"
                 " row (%d set aside since boot)" % (self.set_aside_after, self.set_aside))

    # --- telemetry ---------------------------------------------------------------------

    def send_telemetry(self, body, properties=None, content_type="application/json", qos=1):
        """Send one message (QoS 1), or queue it while the gateway is away; return its $.mid."""
        if not isinstance(body, (bytes, bytearray)):
            body = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self._seq += 1
        mid = self._boot + "-" + str(self._seq)
        props = {"$.mid": mid, "$.ct": content_type, "$.ce": "utf-8"}
        if properties:
            for k in properties:
                props[k] = properties[k]
        bag = topics.encode_properties(props)
        rem = 4 + len(self._prefix) + len(bag) + len(body)  # topic length, topic, packet id, body
        size = rem + (2 if rem < 0x80 else 3 if rem < 0x4000 else 4)  # fixed header, length
        if size > MAX_PACKET:
            raise ValueError("message is a %d-byte MQTT packet; the gateway takes at most %d:"
                             " send a smaller body" % (size, MAX_PACKET))
        if self.connected and not len(self.outbox):
            try:
                self.mqtt.publish(self._prefix + bag, body, qos=qos)
                self.sent += 1
                return mid
            except _LINK_ERRORS as e:
                self._lost(e)
        if qos or self.queue_qos0:
            self.outbox.append(bag.encode() + _NL + body)
        return mid

    # --- methods, C2D, twin ------------------------------------------------------------

    def register(self, name, handler):
        """Add a direct method: handler(payload) returns (status, result) with JSON-able result."""
        self.methods[name] = handler

    def report(self, props):
        """Queue a reported-properties patch (sent after the current step)."""
        self._reply(topics.twin_reported(self._next_rid()), json.dumps(props))

    def device_report(self):
        """Reported properties that describe the device now."""
        r = dict(self.info)
        r["interval"] = self.interval
        r["queued"] = len(self.outbox)
        r["dropped"] = getattr(self.outbox, "dropped", 0)
        r["set_aside"] = self.set_aside
        r["methods"] = list(self.methods)  # what the hub side may call (the web view lists them)
        r["free_heap"] = gc.mem_free() if hasattr(gc, "mem_free") else None
        return r

    def _on_message(self, _client, topic, msg):
        # Runs inside MiniMQTT's receive path: never raise, or the message would be redelivered.
        try:
            if not mqtt.linked(self.mqtt):
                # Before CONNACK the gateway has not accepted us: nothing it sends counts yet.
                self.log("ignored a message on %s sent before CONNACK" % topic[:64])
                return
            if self.mqtt.skipped:
                self._on_oversize(topic)
                return
            if topic.startswith(topics.METHOD_PREFIX):
                self._on_method(topic, msg)
            elif topic.startswith(topics.TWIN_RES_PREFIX):
                self._on_twin_response(topic, msg)
            elif topic.startswith(topics.DESIRED_PREFIX):
                self._apply_desired(_json_obj(msg), topics.parse_desired(topic))
            else:
                props = topics.parse_c2d(topic)
                if props is None:
                    self.log("ignored message on unexpected topic " + topic[:64])
                elif self.on_c2d:
                    self.on_c2d(msg, props)
        except Exception as e:
            self.log("bad message on %s: %s" % (topic[:64], _short(e)))

    def _on_oversize(self, topic):
        size, self.mqtt.skipped = self.mqtt.skipped, 0
        self.log("dropped a %d-byte message on %s: over the device's %d-byte limit"
                 % (size, topic[:64] or "(topic too long)", MAX_INBOUND))
        if topic.startswith(topics.METHOD_PREFIX):
            rid = topics.parse_method(topic)[1]
            self._reply(topics.method_response(413, rid),
                        json.dumps({"error": "payload over %d bytes" % MAX_INBOUND}))

    def _on_method(self, topic, msg):
        name, rid = topics.parse_method(topic)
        handler = self.methods.get(name)
        err = ""
        if handler is None:
            status, result = 404, {"error": "no method '%s' on this device" % name[:40]}
        else:
            payload = _BAD
            status, result = 400, {"error": "payload is not JSON"}
            try:
                payload = json.loads(msg) if msg else None
            except ValueError:
                pass
            except MemoryError:
                status, result = 413, {"error": "payload too big for the device's memory"}
            if payload is not _BAD:
                try:
                    status, result = handler(payload)
                except Exception as e:
                    status, result = 500, {"error": _short(e)}
                    err = " (%s)" % result["error"]  # the one console line says why
        self.log("method %s -> %d%s" % (name[:40], status, err))
        self._reply(topics.method_response(status, rid), json.dumps(result))

    def _on_twin_response(self, topic, msg):
        status, rid, _version = topics.parse_twin_response(topic)
        if rid is not None and rid == self._twin_rid:
            self._twin_rid = None
            if status != 200:
                # Throttled (429) or the gateway busy (5xx): ask again later, backing off.
                delay = min(300, 5 << min(self._twin_tries, 6))
                self._twin_tries += 1
                self._twin_at = _later(delay * 1000)
                self.log("twin GET refused with status %d; asking again in %d s" % (status, delay))
                return
            self._twin_tries = 0
            twin = _json_obj(msg)
            self._apply_desired(twin.get("desired") or {}, None, whole=True)
        elif status >= 300:
            self.log("twin request $rid=%s failed with status %d" % (rid, status))
        elif status == 200:
            # Only a GET is answered with 200, and not the one we wait for: stale or unknown.
            self.log("ignored twin response with unknown $rid=%s" % rid)

    def _apply_desired(self, desired, version, whole=False):
        if not isinstance(desired, dict):
            raise ValueError("desired properties are not a JSON object")
        if version is None:
            version = desired.get("$version")
        if isinstance(version, int) and version <= self._desired_version and not whole:
            self.log("ignored stale desired patch $version=%d" % version)
            return
        if isinstance(version, int):
            self._desired_version = version
        if "interval" in desired:
            status = self._set_interval(desired["interval"])[0]
            if status != 200:
                self.log("desired 'interval' ignored: it must be a number of seconds (0.1-86400)")
        if self.on_desired:
            self.on_desired(desired, whole)
        if self.info is not None:
            self.report(self.device_report())

    def _set_interval(self, payload):
        seconds = payload.get("seconds") if isinstance(payload, dict) else payload
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
                or not 0.1 <= seconds <= 86400:
            return 400, {"error": "give seconds as a number from 0.1 to 86400"}
        self.interval = seconds
        return 200, {"interval": seconds}

    def _reboot(self, _payload):
        self.reboot_requested = True
        return 200, {"rebooting": True}

    def _reply(self, topic, body):
        if len(self._replies) >= MAX_REPLIES:
            self.log("too many answers waiting; dropped the oldest")
            self._replies.pop(0)
        self._replies.append((topic, body))

    def _flush_replies(self):
        while self._replies and self.connected:
            topic, body = self._replies[0]
            self.mqtt.publish(topic, body, qos=0)
            self._replies.pop(0)

    def _next_rid(self):
        self._rid += 1
        return str(self._rid)


_BAD = object()


def _model(model_id):
    # IoT Plug and Play: the model id rides in the username's query (url-encoded).
    if not model_id:
        return ""
    from azure_edge.url import quote
    return "&model-id=" + quote(model_id)


def _ping(_payload):
    return 200, {"pong": clock.unix_time()}


def _json_obj(msg):
    try:
        obj = json.loads(msg)
    except ValueError:
        raise ValueError("body is not JSON")
    if not isinstance(obj, dict):
        raise ValueError("body is not a JSON object")
    return obj


def _short(err):
    if isinstance(err, mqtt.MALFORMED):
        return "protocol error: malformed input from the gateway (%s)" % type(err).__name__
    # MiniMQTT's exceptions carry (text, code): say the text only.
    text = (str(err.args[0]) if hasattr(err, "code") and err.args else str(err)).strip().replace("\n", " ")
    return type(err).__name__ + (": " + text[:100] if text else "")


def _later(ms):
    return ticks_add(ticks_ms(), ms)
