# An IoT Hub device or module client that talks to an IoT Edge gateway over MQTT (MiniMQTT).
# It never blocks for long: call step() in a loop. While the gateway is away, telemetry
# goes to the outbox and is drained in order once the gateway is back.
import binascii
import gc
import json
import os
import time

from azure_edge import clock, mqtt, run_and_unload, topics
from azure_edge.mqtt import MMQTTException
from adafruit_ticks import ticks_add, ticks_diff, ticks_ms  # MiniMQTT's clock (after mqtt: net)

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

# edgeHub's MQTT decoder closes the link for a PUBLISH packet over this many bytes, counting
# the fixed header, remaining length, topic length, topic, packet id and body.
_MAX_PACKET = const(262144)
_MAX_REPLIES = const(8)       # method and twin answers waiting to be sent
# Readings in flight while draining the outbox. The link's round trip, not the device, bounds
# a drain: 128 keep a 10 ms link busy; on a board the TCP send buffer (lwIP: about 5.7 KB)
# holds writes back sooner anyway. Costs no heap: records are read one at a time.
_WINDOW = const(128)
_ACK_BATCH = const(16)        # acknowledged readings popped from the outbox with one head write
OOM_RESET = 5                # connects failing with MemoryError in a row before a reset
_NL = b"\n"
_REPORTED_OK = topics.TWIN_RES_PREFIX + "204/"
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
    # State that changes only when something goes wrong lives on the class until it does:
    # every attribute set on the instance is a slot in its dict, and a dict grows by
    # reallocating itself whole (47 slots: one 752-byte block on the 64-bit unix port).
    set_aside = 0            # readings held aside (azure_edge/aside.py) because they jammed it
    _aside_at = 0            # when to move them back to the outbox (time.time())
    aside_retry = 86400      # seconds between those retries (bundle: set_aside_retry)
    _jam_head = -1           # which head closed the link last, and how many times in a row
    _jam_count = 0
    idle = None              # fn() the device runs while a connect waits (Device: due tasks)
    reboot_requested = False
    last_error = None        # the last connect failure's one-line diagnosis
    _oom = 0                 # connects failed with MemoryError in a row
    # Instance attributes cost a slot each, and the 38th grows the table by 160 B (64-bit): the
    # agent's two (du, adu) fit only with the defaults that never change kept here.
    auth_backoff_cap = 600   # seconds; the backoff's cap after the gateway refused the credentials
    du = None                # the update agent's settings (bundle "adu"); None: no agent
    adu = None               # its deployment, trial or trust probe under way (azure_edge/adu.py)

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
        self._gone = 0           # readings that left the outbox head since boot: its identity
        self.backoff_cap = backoff_cap
        if auth_backoff_cap != Client.auth_backoff_cap:
            self.auth_backoff_cap = auth_backoff_cap  # else it stays on the class (no dict slot)
        self.on_c2d = None       # fn(body: bytes, properties: dict)
        self.on_desired = None   # fn(desired: dict, whole: bool); whole: the twin GET's document
        self.interval = 10       # telemetry seconds; the app reads it, the twin can set it
        # Static reported properties (firmware, board, runtime); None: none. A function in it
        # (the adapter's idf_heap) is called at each report.
        self.info = {}
        self.connected = False
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
        self._replies = []
        self._prefix = topics.telemetry(cs.device_id, cs.module_id).encode()
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
        self.methods = {"ping": _ping, "set_interval": self._set_interval, "reboot": self._reboot}

    # --- connection ------------------------------------------------------------------

    def connect(self):
        """One connect attempt: TLS, MQTT CONNECT, subscriptions, twin GET. Raises on failure."""
        # Each wait of the connect (TCP, TLS, CONNACK, SUBACK) gives the device's own work a
        # turn: readings stay on time while a gateway that does not answer is waited for.
        mqtt.net.IDLE = self.idle
        try:
            mqtt.open_link(self.mqtt, self._password())  # one attempt: retries and backoff are ours
            subs = [(topics.METHODS_FILTER, 0), (topics.TWIN_RES_FILTER, 0),
                    (topics.DESIRED_FILTER, 0)]
            if not self.cs.module_id:
                subs.append((topics.c2d_filter(self.cs.device_id), 1))
            refused = mqtt.subscribe(self.mqtt, subs, self._recv_timeout)
        finally:
            mqtt.net.IDLE = None
        if refused:
            _setback("refused", self, refused)  # one line: what the device goes without
        self.connected = True
        # When the link came up: one that closes soon after, with nothing acknowledged, counts
        # as a failed connect (setback.lost). _failures goes back to 0 with a PUBACK.
        self._retry_at = ticks_ms()
        if self.last_error:
            self.last_error = None
        # Desired patches arrive only while connected: fetch the whole twin every time.
        self._twin_tries = 0
        self._get_twin()

    def _get_twin(self):
        self._twin_at = None
        self._twin_rid = self._next_rid()
        self._publish(topics.twin_get(self._twin_rid).encode(), b"", b"")

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
            _setback("lost", self, err)  # backs off from a link that keeps closing

    def _try_connect(self):
        if ticks_diff(ticks_ms(), self._retry_at) < 0:
            return
        try:
            self.connect()
        except _LINK_ERRORS + (ValueError,) as e:
            self._drop_link()
            _setback("connect_failed", self, e)
            return
        if self._oom:
            self._oom = 0
        self.log("connected to %s:%d as %s" % (self.cs.connect_host, self.port, self.mqtt.client_id))
        self.reconnects += 1

    # --- the loop ----------------------------------------------------------------------

    def step(self, timeout=0.2):
        """Serve the link for about `timeout` seconds: connect, renew, receive, drain."""
        if self.adu is not None:
            self.adu.step(self)  # its next chunk or check; its reports go out below
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
            if self.set_aside and time.time() >= self._aside_at:
                _setback("retry", self)  # readings held aside go back to the outbox's tail
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
        # The backlog streams out with up to _WINDOW publishes awaiting their PUBACKs; each ack
        # lets the next reading go, so the link stays busy instead of idling a round trip per
        # reading (a send at once waits for each). A reading leaves the outbox only once
        # acknowledged, _ACK_BATCH at a time so the head file is not rewritten per reading.
        box = self.outbox
        if self._jam_count >= self.set_aside_after and len(box) > 1:
            # Is it the head the gateway refuses, or every reading? The next step drains.
            return _setback("probe", self)
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
                self._publish(self._prefix, rec[:cut], rec[cut + 1:], pid)
                n += 1
                record = rec = None
                while n - self._acked >= _WINDOW:
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
                _setback("jammed", self)
        if not n and len(box):
            box.peek()  # records() stops at a damaged head record; peek() skips past it

    def _publish(self, prefix, bag, body, pid=0):
        # One PUBLISH (topic: prefix + bag; QoS 1 with a packet id, else QoS 0) built whole and
        # written once, so one TLS record, without waiting for a PUBACK. MiniMQTT's publish()
        # writes three records and waits for each PUBACK; the board's build leaves it out.
        tlen = len(prefix) + len(bag)
        rem = 2 + tlen + (2 if pid else 0) + len(body)
        n = 2 if rem < 0x80 else 3 if rem < 0x4000 else 4
        pkt = bytearray(n + rem)
        pkt[0] = 0x32 if pid else 0x30  # PUBLISH, QoS 1 or 0
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
        if pid:
            pkt[i] = pid >> 8
            pkt[i + 1] = pid & 0xFF
            i += 2
        mv[i:] = body
        mqtt.send(self.mqtt, pkt)

    def _send_now(self, bag, body, qos):
        # A reading sent at once (connected, nothing queued): for QoS 1 wait for its PUBACK.
        pid = mqtt.next_pid(self.mqtt) if qos else 0
        self._publish(self._prefix, bag, body, pid)
        if pid:
            self._puback(pid)

    def _await_ack(self, pid0):
        # Brokers acknowledge QoS 1 in the order they received the publishes (MQTT 3.1.1
        # section 4.6): the next ack is for pid0 + acked.
        self._puback((pid0 + self._acked - 1) % 0xFFFF + 1)
        self._acked += 1
        self.sent += 1
        if self._acked - self._popped >= _ACK_BATCH:
            self._pop_acked()

    def _puback(self, pid):
        # Wait for the PUBACK of `pid`, serving inbound messages meanwhile; within the
        # keepalive, so a dead link is seen as soon as an idle one's ping would see it.
        stamp = ticks_ms()
        while True:
            got = mqtt.puback(self.mqtt)
            if got == pid:
                self._failures = 0  # the gateway takes readings: the link is good
                return
            if got is None and ticks_diff(ticks_ms(), stamp) > self._recv_timeout * 1000:
                raise MMQTTException("no PUBACK from the gateway in %d s" % self._recv_timeout)

    def _pop_acked(self):
        # Records leave the head in order: those acked, less any the full outbox dropped.
        box = self.outbox
        n = self._acked - self._popped - (getattr(box, "dropped", 0) - self._drops)
        if n > 0:
            box.pop(n)
            self._popped += n
            self._gone += n

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
        bag = topics.encode_properties(props).encode()
        rem = 4 + len(self._prefix) + len(bag) + len(body)  # topic length, topic, packet id, body
        size = rem + (2 if rem < 0x80 else 3 if rem < 0x4000 else 4)  # fixed header, length
        if size > _MAX_PACKET:
            raise ValueError("message is a %d-byte MQTT packet; the gateway takes at most %d:"
                             " send a smaller body" % (size, _MAX_PACKET))
        if self.connected and not len(self.outbox):
            try:
                self._send_now(bag, body, qos)
                self.sent += 1
                return mid
            except _LINK_ERRORS as e:
                self._lost(e)
        if qos or self.queue_qos0:
            self.outbox.append(bag + _NL + body)
        return mid

    # --- methods, C2D, twin ------------------------------------------------------------

    def register(self, name, handler):
        """Add a direct method: handler(payload) returns (status, result) with JSON-able result."""
        self.methods[name] = handler

    def report(self, props):
        """Queue a reported-properties patch (sent after the current step)."""
        self._reply(topics.twin_reported(self._next_rid()), json.dumps(props))

    def _on_message(self, _client, topic, msg):
        # Runs inside MiniMQTT's receive path: never raise, or the message would be redelivered.
        try:
            if not mqtt.linked(self.mqtt):
                # Before CONNACK the gateway has not accepted us: nothing it sends counts yet.
                self.log("ignored a message on %s sent before CONNACK" % topic[:64])
                return
            if self.mqtt.skipped:
                _setback("oversize", self, topic, self.mqtt.max_in)
                return
            if topic.startswith(topics.METHOD_PREFIX):
                self._on_method(topic, msg)
            elif topic.startswith(topics.TWIN_RES_PREFIX) or topic.startswith(topics.DESIRED_PREFIX):
                self._on_twin(topic, msg)
            else:
                props = topics.parse_c2d(topic)
                if props is None:
                    self.log("ignored message on unexpected topic " + topic[:64])
                elif self.on_c2d:
                    self.on_c2d(msg, props)
        except Exception as e:
            self.log("bad message on %s: %s" % (topic[:64], _short(e)))

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

    def _on_twin(self, topic, msg):
        if topic.startswith(_REPORTED_OK):
            return  # a reported patch accepted: the common answer, with nothing to do
        # The rest of the twin's code (azure_edge/twin.py) is loaded for each message, not kept.
        try:
            run_and_unload("twin", "on_message", self, topic, msg)
        except MemoryError:
            self._twin_at = _later(5000)  # no room to handle it now: fetch the whole twin again
            raise

    def _set_interval(self, payload):
        return run_and_unload("twin", "set_interval", self, payload)

    def _reboot(self, _payload):
        self.reboot_requested = True
        return 200, {"rebooting": True}

    def _reply(self, topic, body):
        if len(self._replies) >= _MAX_REPLIES:
            self.log("too many answers waiting; dropped the oldest")
            self._replies.pop(0)
        self._replies.append((topic, body))

    def _flush_replies(self):
        while self._replies and self.connected:
            topic, body = self._replies[0]
            self._publish(topic.encode(), b"", body.encode())
            self._replies.pop(0)

    def _next_rid(self):
        self._rid += 1
        return str(self._rid)


_BAD = object()


def _setback(fn, *args):
    # Failure handling (azure_edge/setback.py) is loaded only while it runs: a connect that
    # failed, a lost link, a jammed outbox head, an oversized message.
    try:
        run_and_unload("setback", fn, *args)
    except MemoryError:
        # Too little heap even for that: connect again in 5 s, forget the oversized message,
        # and reset if it goes on (the outbox is on flash).
        c = args[0]
        c._retry_at = _later(5000)
        c.mqtt.skipped = 0
        c._oom += 1
        if c._oom >= OOM_RESET:
            c.reboot_requested = True


def _model(model_id):
    # IoT Plug and Play: the model id rides in the username's query (url-encoded).
    if not model_id:
        return ""
    from azure_edge.url import quote
    return "&model-id=" + quote(model_id)


def _ping(_payload):
    return 200, {"pong": clock.unix_time()}


def _short(err):
    if isinstance(err, mqtt.MALFORMED):
        return "protocol error: malformed input from the gateway (%s)" % type(err).__name__
    # MiniMQTT's exceptions carry (text, code): say the text only.
    text = (str(err.args[0]) if hasattr(err, "code") and err.args else str(err)).strip().replace("\n", " ")
    return type(err).__name__ + (": " + text[:100] if text else "")


def _later(ms):
    return ticks_add(ticks_ms(), ms)
