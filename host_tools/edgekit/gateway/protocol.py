"""edgeHub's MQTT protocol head: one asyncio task per device link, amqtt's packet codec underneath.

edgeHub is a protocol gateway (Azure/azure-iot-protocol-gateway, MqttAdapter.cs), not a broker:
every packet a device sends maps to one IoT Hub operation, and nothing is relayed between
devices. So this is a small loop of our own instead of amqtt's Broker: the Broker's retained
messages, wills, broadcast table and session store are exactly what edgeHub does not have.
amqtt is used only for what it does well, decoding and encoding MQTT 3.1.1 packets (its public
packet classes in amqtt.mqtt.*), which pyproject pins for.

Per link (MqttAdapter.cs method names in brackets):
- the fixed header is read first, and a packet over MAX_PACKET is refused before its body
  is read (DotNetty MqttDecoder maxMessageSize);
- CONNECT within connect_timeout [CheckConnectionTimeout], else the link closes; the first
  packet must be CONNECT [ChannelRead];
- publishes are handled in order by one worker; the socket is not read while MAX_PENDING of
  them wait [IsReadAllowed], and PUBACK follows handling [PublishToServerAsync]: the worker
  reads ahead what is queued, and one commit (one fsync) makes the run durable before its
  PUBACKs go, in order;
- a will is kept and, on an abnormal close only, handled as the sender's own publish [Shutdown,
  CompletePublishAsync]; retain is never stored.
"""
import asyncio

from amqtt.adapters import BufferReader, StreamReaderAdapter
from amqtt.errors import MQTTError, NoDataError
from amqtt.mqtt import packet as mp
from amqtt.mqtt.connack import ConnackPacket
from amqtt.mqtt.connect import ConnectPacket
from amqtt.mqtt.pingresp import PingRespPacket
from amqtt.mqtt.puback import PubackPacket
from amqtt.mqtt.publish import PublishPacket
from amqtt.mqtt.suback import SubackPacket
from amqtt.mqtt.subscribe import SubscribePacket
from amqtt.mqtt.unsuback import UnsubackPacket
from amqtt.mqtt.unsubscribe import UnsubscribePacket

from edgekit.gateway import auth, tls

MAX_PACKET = 262_144  # edgeHub appsettings_hub.json mqttSettings.MaxInboundMessageSize
# MqttAdapter.IsReadAllowed stops reading when a sending client's publish backlog reaches its
# MaxPendingMessages: 100 in edgeHub's MessagingServiceClient. MaxPendingInboundAcknowledgements
# (16, appsettings_hub.json) counts the device's PUBACKs awaiting processing instead; this loop
# handles each PUBACK as it reads it, so that backlog never builds up.
MAX_PENDING = 100
MAX_KEEPALIVE = 600  # edgeHub: MaxKeepAliveTimeout 10 minutes; 0 also means this
CONNECT_TIMEOUT = 60  # protocol gateway Settings.ConnectArrivalTimeout
UNACCEPTABLE_PROTOCOL = 1
DRAIN_TIMEOUT = 10  # seconds a closing link waits for the publishes it already read

_TIMEOUT = getattr(asyncio, "timeout", None)  # Python 3.11+
_DECODERS = {mp.CONNECT: ConnectPacket, mp.PUBLISH: PublishPacket, mp.PUBACK: PubackPacket,
             mp.SUBSCRIBE: SubscribePacket, mp.UNSUBSCRIBE: UnsubscribePacket}


class LinkClosed(ConnectionError):
    """The device link closed before a QoS 1 delivery was acknowledged."""


def keepalive_timeout(keepalive):
    """Seconds of silence before the link is dropped: 1.5 x keep-alive, at most 10 min, 0 = 10 min."""
    timeout = keepalive * 1.5
    return MAX_KEEPALIVE if timeout == 0 or timeout > MAX_KEEPALIVE else timeout


async def read_packet(reader):
    """(fixed header, decoded packet or None); the body is only read when it is within MAX_PACKET."""
    header = await mp.MQTTFixedHeader.from_stream(StreamReaderAdapter(reader))
    if header is None:
        raise NoDataError("the device closed the connection")
    size = header.remaining_length + len(header.to_bytes())  # MqttDecoder counts the fixed header too
    if size > MAX_PACKET:
        raise MQTTError(f"packet of {size} bytes is over edgeHub's {MAX_PACKET}")
    body = await reader.readexactly(header.remaining_length)
    cls = _DECODERS.get(header.packet_type)
    if cls is None:
        return header, None
    try:
        return header, await cls.from_stream(BufferReader(body), fixed_header=header)
    except (NoDataError, MQTTError, ValueError, UnicodeDecodeError, IndexError) as e:
        raise MQTTError(f"malformed packet of type {header.packet_type} ({e})")


class DeviceLink:
    """One device's MQTT connection: the reading loop, the publish worker and outgoing packets."""

    def __init__(self, gateway, reader, writer, connect_timeout=CONNECT_TIMEOUT):
        self.gateway = gateway
        self.reader = reader
        self.writer = writer
        self.connect_timeout = connect_timeout
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.peer = f"{peer[0]}:{peer[1]}"
        self.conn = None
        self.will = None  # (topic, payload, retain) until a clean DISCONNECT
        self.credentials = None  # (client id, username, password, peer der) for re-authentication
        self.peer_chain = []  # the certificates the device presented, leaf first
        self.model_id = None
        self._inbound = asyncio.Queue()
        self._tasks = set()
        self._room = asyncio.Semaphore(MAX_PENDING)
        self._next_id = 0
        self._unacked = {}  # packet id -> future of an outgoing QoS 1 publish
        self._closing = None  # why the link closes; None while open
        self._task = None
        self._abnormal = True

    # --- the link's life --------------------------------------------------------------------

    async def run(self):
        """Serve the link until it closes; never raises."""
        worker = None
        self._task = asyncio.current_task()
        try:
            if not await self._connect():
                return
            worker = asyncio.ensure_future(self._work())
            await self._read_loop()
        except asyncio.TimeoutError:  # before OSError: TimeoutError is one since Python 3.11
            self._close_reason("keep-alive expired" if self.conn else "no CONNECT in time")
        except (NoDataError, asyncio.IncompleteReadError, ConnectionError, OSError):
            self._close_reason("connection lost")
        except MQTTError as e:
            self._close_reason(str(e))
        except asyncio.CancelledError:  # close() from outside, or the gateway stopping
            self._close_reason("the gateway is stopping")
        finally:
            self._task = None
            await self._finish(worker)

    def close(self, why, abnormal=True):
        """Close the link from outside (takeover, re-authentication); the will goes if abnormal."""
        self._close_reason(why, abnormal)
        # Cancel the link's task: it may wait in a read or for back-pressure room, and a TLS
        # close would only end that read once the device answers the close_notify.
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()

    def _close_reason(self, why, abnormal=True):
        if self._closing is None:
            self._closing = why
            self._abnormal = abnormal

    async def _finish(self, worker):
        if worker is not None:
            # CompletePublishAsync: the publishes already read are still handled before the link goes.
            try:
                await asyncio.wait_for(self._inbound.join(), DRAIN_TIMEOUT)
            except asyncio.TimeoutError:
                self.gateway.say(f"{self.conn.client_id}: {self._inbound.qsize()} publish(es) not handled in "
                                 f"{DRAIN_TIMEOUT} s after the link closed; dropped")
            worker.cancel()
            try:
                await worker
            except (asyncio.CancelledError, Exception):
                pass  # the worker's own errors were already reported as the close reason
        for fut in self._unacked.values():
            if fut is not None and not fut.done():
                fut.set_exception(LinkClosed(self._closing or "closed"))
        self._unacked.clear()
        if self.conn is not None:
            if self._abnormal and self.will is not None:
                await self.gateway.on_will(self.conn, *self.will)
            self.gateway.link_closed(self.conn, self._closing or "closed")
        elif self._closing:
            self.gateway.say(f"{self.peer}: closed before CONNECT ({self._closing})")
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 1)
        except (asyncio.TimeoutError, ConnectionError, OSError):
            self.writer.transport.abort()  # reset, or a device that never answers the TLS close

    async def _connect(self):
        header, packet = await asyncio.wait_for(read_packet(self.reader), self.connect_timeout)
        if header.packet_type != mp.CONNECT:
            self._close_reason(f"first packet is type {header.packet_type}, not CONNECT")
            return False
        vh, payload = packet.variable_header, packet.payload
        if vh.proto_name != "MQTT":  # MqttDecoder.DecodeConnectPacket: closed, no CONNACK
            self._close_reason(f"protocol name {vh.proto_name!r} is not MQTT")
            return False
        if vh.proto_level != 4:
            self.gateway.say(f"refused {self.peer}: CONNACK 1, protocol {vh.proto_name!r} level "
                             f"{vh.proto_level} (edgeHub speaks MQTT 3.1.1, level 4)")
            await self._send(ConnackPacket.build(0, UNACCEPTABLE_PROTOCOL))
            return False
        client_id = "" if payload.client_id_is_random else payload.client_id
        self.peer_chain = tls.peer_chain(self.writer)
        self.credentials = (client_id, payload.username, payload.password,
                            self.peer_chain[0] if self.peer_chain else None)
        verdict = await self.authenticate()
        if not verdict.ok:
            self.gateway.refused(client_id, self.peer, verdict)
            await self._send(ConnackPacket.build(0, verdict.code))
            return False
        present = self.gateway.open_session(verdict.identity.client_id, vh.clean_session_flag)
        self.keepalive = keepalive_timeout(vh.keep_alive)
        if vh.will_flag:
            self.will = (payload.will_topic or "", bytes(payload.will_message or b""), vh.will_retain_flag)
        await self._send(ConnackPacket.build(1 if present else 0, auth.ACCEPTED))
        tls.authenticated(self.writer)  # from here max_clients bounds it, not the waiting count
        self.conn = await self.gateway.connected(verdict, self, self.peer)
        self._background(self.gateway.resume(self.conn))
        return True

    async def _read_loop(self):
        while self._closing is None:
            await self._room.acquire()  # back-pressure: no read while MAX_PENDING publishes wait
            self._room.release()
            header, packet = await self._read_within(self.keepalive)
            kind = header.packet_type
            if kind == mp.PUBLISH:
                if packet.qos not in (0, 1, 2):  # MqttDecoder: "Unexpected QoS value"
                    self._close_reason("PUBLISH with QoS 3")
                    break
                await self._room.acquire()
                self._inbound.put_nowait(packet)
            elif kind == mp.PUBACK:
                fut = self._unacked.pop(packet.variable_header.packet_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(True)
            elif kind == mp.SUBSCRIBE:
                await self._subscribe(packet)
            elif kind == mp.UNSUBSCRIBE:
                self.gateway.unsubscribed(self.conn, packet.payload.topics)
                await self._send(UnsubackPacket.build(packet.variable_header.packet_id))
            elif kind == mp.PINGREQ:
                await self._send(PingRespPacket.build())
            elif kind == mp.DISCONNECT:
                self._close_reason("disconnected", abnormal=False)
            else:
                self._close_reason(f"unexpected packet type {kind} (edgeHub closes the link)")

    async def _read_within(self, seconds):
        # The keep-alive deadline of one read. asyncio.timeout (3.11+) only arms a timer, where
        # wait_for starts a task per packet: a draining device pays that on every reading.
        if _TIMEOUT is None:
            return await asyncio.wait_for(read_packet(self.reader), seconds)
        async with _TIMEOUT(seconds):
            return await read_packet(self.reader)

    async def _subscribe(self, packet):
        # Util.AddSubscriptions: every filter granted at min(requested, max QoS to the client);
        # the gateway records the whole packet at once (one session write per SUBSCRIBE).
        grants = [(topic_filter, min(qos, 1)) for topic_filter, qos in packet.payload.topics]
        self.gateway.subscribed(self.conn, grants)
        await self._send(SubackPacket.build(packet.variable_header.packet_id, [q for _, q in grants]))
        self._background(self.gateway.after_subscribe(self.conn, [f for f, _ in grants]))

    def _background(self, coro):
        # C2D delivery waits for the device's PUBACK, which this link's reading loop must read:
        # so it runs beside the loop, never inside it.
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _work(self):
        # Read-ahead with one commit: each publish is handled as it comes (telemetry written, not
        # yet on disk); when no more are queued, one group fsync covers the run, and only then go
        # their PUBACKs, in order. A run is at most MAX_PENDING long: the reading loop stops there.
        run = []  # (packet, handled) awaiting the commit
        while True:
            packet = await self._inbound.get()
            run.append((packet, await self._handle_publish(packet)))
            if not self._inbound.empty():
                continue  # more already read: handle them before the commit
            try:
                await self._acknowledge(run)
            finally:
                for _ in run:
                    self._room.release()
                    self._inbound.task_done()
                run = []

    async def _handle_publish(self, packet):
        # True when the hub side took it (acknowledge after the commit), False when it failed.
        try:
            await self.gateway.on_device_publish(self.conn, packet.topic_name or "", bytes(packet.data or b""),
                                                 retain=packet.retain_flag)
            return True
        except (ConnectionError, OSError):
            return False  # the device is gone: nothing to acknowledge to
        except Exception as e:
            # The hub side failed (a full disk, say): nothing is acknowledged, and like edgeHub's
            # faulted publish processor (ShutdownOnPublishToServerFaultAction) the link closes.
            self.close(f"publish not handled ({type(e).__name__}: {e})")
            return False

    async def _acknowledge(self, run):
        try:
            await self.gateway.commit(self.conn)  # no PUBACK before the store holds the message
        except Exception as e:  # the fsync failed: none of the run is stored
            self.close(f"publish not handled ({type(e).__name__}: {e})")
            return
        pubacks = []
        for packet, handled in run:
            if not handled:
                continue
            if (packet.qos or 0) == 1:
                pubacks.append(PubackPacket.build(packet.packet_id).to_bytes())
            elif packet.qos == 2:
                # PublishToServerAsync: the message is sent on, then "QoS 2 is not supported" closes the link.
                self.close("QoS 2 publish (edgeHub forwards it, then closes the link)")
        if not pubacks:
            return
        try:
            # One write, so one TLS record for the run's PUBACKs: a device decrypts each record it
            # reads, and on a microcontroller that work is what a drain is made of.
            self.writer.write(b"".join(pubacks))
            await self.writer.drain()
        except (ConnectionError, OSError):
            pass  # the PUBACKs could not go out: the device is gone, the hub side is done

    async def authenticate(self):
        """check_connect with this link's CONNECT credentials: at CONNECT and at every re-authentication.

        It runs in a worker thread: building a certificate chain is signature work a client chooses
        the size of, and the loop must keep serving the other links meanwhile.
        """
        return await asyncio.to_thread(self.gateway.check_connect, *self.credentials, peer_chain=self.peer_chain)

    # --- to the device ----------------------------------------------------------------------

    async def _send(self, packet):
        self.writer.write(packet.to_bytes())
        await self.writer.drain()

    async def publish(self, topic, body, qos, wait=True):
        """Send a PUBLISH; with QoS 1 and wait, return once the device acknowledged it."""
        if self._closing is not None:
            raise LinkClosed(self._closing)
        packet_id = None
        fut = None
        if qos:
            self._next_id = self._next_id % 65535 + 1
            packet_id = self._next_id
            # Only a waiting caller gets a future: one nobody awaits would be reported as never retrieved.
            fut = asyncio.get_running_loop().create_future() if wait else None
            self._unacked[packet_id] = fut
        await self._send(PublishPacket.build(topic, bytes(body), packet_id, False, qos, False))
        if fut is not None and wait:
            await fut


class ProtocolHead:
    """The MQTT listener: a DeviceLink per TLS connection."""

    def __init__(self, gateway, ssl_context, connect_timeout=CONNECT_TIMEOUT, admission=None):
        self.gateway = gateway
        self.ssl_context = ssl_context
        self.admission = admission  # admission.Admission: connections not yet authenticated
        self.connect_timeout = connect_timeout
        self.server = None
        self._reauth = None
        self._links = set()

    async def start(self, host, port):
        """Listen; return the bound port (useful with port 0)."""
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._loop_error)
        self.server = await tls.start_server(self._serve, host, port, self.ssl_context, admission=self.admission)
        self._reauth = asyncio.ensure_future(self.gateway.reauthenticate_forever())
        return self.server.sockets[0].getsockname()[1]

    def _loop_error(self, loop, context):
        # Whatever asyncio reports about a connection (a failed write, an unretrieved error): one line.
        exc = context.get("exception")
        what = f"{type(exc).__name__}: {exc}" if exc else context.get("message", "error")
        self.gateway.say(f"connection error: {what}"[:300])

    async def _serve(self, reader, writer):
        link = DeviceLink(self.gateway, reader, writer, self.connect_timeout)
        task = asyncio.current_task()
        self._links.add(task)
        try:
            await link.run()
        except Exception as e:  # last resort: one line, never a traceback on the console
            self.gateway.say(f"{link.peer}: link failed ({type(e).__name__}: {e})")
        finally:
            self._links.discard(task)

    async def stop(self):
        """Stop listening and close every link."""
        if self._reauth is not None:
            self._reauth.cancel()
        if self.server is not None:
            self.server.close()
        for task in list(self._links):
            task.cancel()
        if self._links:
            await asyncio.gather(*self._links, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()
