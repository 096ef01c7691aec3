"""amqtt 0.12 turned into edgeHub's MQTT head: auth and topic plugins plus a Broker subclass.

The plugins (EdgeAuthPlugin, EdgeTopicPlugin, EdgeEventsPlugin) use amqtt's plugin system
as intended. The Broker subclass covers what amqtt cannot do through plugins:
- CONNACK codes other than 0 and 5 (4 for a malformed username or token, 3 at the cap);
- the client cap as a refusal (amqtt's max_connections makes the next client wait);
- `$iothub/...` publishes (amqtt closes any publish to a `$` topic) and per-connection
  delivery of hub answers (amqtt would broadcast them to every subscriber of the filter);
- closing the connection on a QoS 2 publish, an oversize message, a refused publish and
  a missed keep-alive (amqtt completes QoS 2, accepts any size, drops refused publishes
  silently and never times out a silent client);
- PUBACK only once a message is handled (stored), as edgeHub acknowledges after its
  store: amqtt acknowledges on receipt;
- a time limit for the CONNECT after the TLS handshake;
- no session state between connections, so a CONNECT that fails auth cannot wipe the
  session of the identity it claims (amqtt deletes it before authenticating).
These override private amqtt methods: pyproject pins amqtt to 0.12.x for that reason.
"""
import asyncio
import logging
import math
from functools import partial
from dataclasses import dataclass
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.events import BrokerEvents
from amqtt.mqtt.connack import ConnackPacket
from amqtt.mqtt.constants import QOS_1, QOS_2
from amqtt.mqtt.puback import PubackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.base import BaseAuthPlugin, BasePlugin, BaseTopicPlugin
from amqtt.session import INCOMING

from edgekit.gateway import auth, tls
from edgekit.gateway.core import MAX_MESSAGE

log = logging.getLogger(__name__)
SUBSCRIBE_FAILED = 0x80
CONNECT_TIMEOUT = 30  # seconds from TLS handshake to CONNECT


def _peer(session):
    return f"{session.remote_address}:{session.remote_port}"


def _peer_chain(session):
    return tls.presented_chain(getattr(session, "ssl_object", None))


class EdgeAuthPlugin(BaseAuthPlugin):
    """Authenticates CONNECTs with auth.check_connect; the verdict rides on the session."""

    @dataclass
    class Config:
        gateway: Any = None

    async def authenticate(self, *, session):
        chain = _peer_chain(session)
        verdict = self.config.gateway.check_connect(session.client_id, session.username, session.password,
                                                    chain[0] if chain else None, peer_chain=chain)
        session.edge_verdict = verdict
        return verdict.ok


class EdgeTopicPlugin(BaseTopicPlugin):
    """Allows an identity its own telemetry, the $iothub requests and its own filters only."""

    @dataclass
    class Config:
        gateway: Any = None

    async def topic_filtering(self, *, session=None, topic=None, action=None):
        verdict = getattr(session, "edge_verdict", None)
        if verdict is None or not verdict.ok or topic is None:
            return False
        if action == Action.PUBLISH:
            return auth.may_publish(verdict.identity, topic)
        if action == Action.SUBSCRIBE:
            return auth.may_subscribe(verdict.identity, topic)
        return False  # RECEIVE: nothing is broadcast between devices


class EdgeEventsPlugin(BasePlugin):
    """Delivers queued C2D messages once the SUBACK for the C2D filter is out."""

    @dataclass
    class Config:
        gateway: Any = None

    async def on_broker_client_subscribed(self, *, client_id, topic, qos):
        conn = self.config.gateway.connections.get(client_id)
        if conn is not None:
            await self.config.gateway.after_subscribe(conn, topic)


class GatewayHandler(BrokerProtocolHandler):
    """amqtt's broker protocol handler with edgeHub's limits on incoming PUBLISH."""

    def __init__(self, plugins_manager, gateway, loop=None):
        super().__init__(plugins_manager, loop=loop)
        self.gateway = gateway
        self.conn = None
        self._unacked = {}  # id(incoming QoS 1 message) -> future set once it is handled

    async def _handle_qos1_message_flow(self, app_message):
        if app_message.direction != INCOMING:
            await super()._handle_qos1_message_flow(app_message)
            return
        handled = self._loop.create_future()
        self._unacked[id(app_message)] = handled
        try:
            await self.session.delivered_message_queue.put(app_message)
            accepted = await handled
        finally:
            self._unacked.pop(id(app_message), None)
        if accepted:
            puback = PubackPacket.build(app_message.packet_id)
            await self._send_packet(puback)
            app_message.puback_packet = puback

    def handled(self, app_message, accepted):
        """The broker has handled an incoming message: PUBACK it (QoS 1) when accepted."""
        if app_message.qos == QOS_1:
            fut = self._unacked.get(id(app_message))
            if fut is not None and not fut.done():
                fut.set_result(accepted)

    async def send_connack(self, code):
        """Answer the CONNECT with this return code (session present is always 0)."""
        await self._send_packet(ConnackPacket.build(0, code))

    async def handle_publish(self, publish_packet):
        why = None
        if publish_packet.qos == QOS_2:
            why = "QoS 2 publish (IoT Hub supports QoS 0 and 1 only)"
        elif len(publish_packet.data or b"") > MAX_MESSAGE:
            why = f"message of {len(publish_packet.data)} bytes is over IoT Hub's 256 KiB"
        if why is None:
            await super().handle_publish(publish_packet)
            return
        if self.conn is not None:
            self.gateway.refused_publish(self.conn, publish_packet.topic_name or "", why)
        await self.handle_connection_closed()

    def handle_read_timeout(self):
        # Nothing heard for 1.5 x keep-alive: the client is gone (MQTT 3.1.1 section 3.1.2.10).
        if self.conn is not None:
            self.gateway.say(f"{self.conn.client_id}: keep-alive expired")
        asyncio.ensure_future(self.handle_connection_closed())


class GatewayBroker(Broker):
    """The amqtt Broker with edgeHub's connection handling (see the module docstring)."""

    def __init__(self, config, gateway, ssl_context):
        plugins = {f"{__name__}.{cls.__name__}": {"gateway": gateway}
                   for cls in (EdgeAuthPlugin, EdgeTopicPlugin, EdgeEventsPlugin)}
        config = dict(config, plugins=plugins)
        super().__init__(config)
        self.gateway = gateway
        self._edge_ssl_context = ssl_context

    def _create_ssl_context(self, listener):
        # Ours: TLS 1.2+, the gateway's chain, client certificates optional but verified.
        return self._edge_ssl_context

    async def _create_server_instance(self, listener_name, listener_type, address, port, ssl_context):
        # TLS through tls.py (any client certificate, judged at CONNECT), not asyncio's ssl.
        return await tls.start_server(partial(self.stream_connected, listener_name=listener_name),
                                      address, port, ssl_context, reuse_address=True)

    def bound_port(self, listener="default"):
        """The TCP port a listener got (useful with port 0)."""
        return self._servers[listener].instance.sockets[0].getsockname()[1]

    async def _initialize_client_session(self, reader, writer, remote_address, remote_port):
        try:
            # A client that opens TLS and never sends CONNECT must not hold a slot forever.
            handler, session = await asyncio.wait_for(
                BrokerProtocolHandler.init_from_connect(reader, writer, self.plugins_manager), CONNECT_TIMEOUT)
        except (AMQTTError, NoDataError, MQTTError, asyncio.TimeoutError) as exc:
            try:
                await writer.close()  # amqtt leaves the socket open on these
            except OSError:
                pass  # already broken
            raise AMQTTError(exc) from exc
        # Every connection starts afresh; device SDKs subscribe again after each CONNECT.
        session.parent = 0
        if session.keep_alive > 0:
            session.keep_alive = math.ceil(session.keep_alive * 1.5)
        return handler, session

    async def _handle_client_session(self, reader, writer, client_session, handler, server, listener_name):
        handler = GatewayHandler(self.plugins_manager, self.gateway, loop=self._loop)
        peer = _peer(client_session)
        await self._authenticate(client_session, self.listeners_config[listener_name])
        verdict = getattr(client_session, "edge_verdict", None) or auth.Verdict(auth.NOT_AUTHORIZED, "no verdict")
        client_session.transitions.connect()
        handler.attach(client_session, reader, writer)
        if not verdict.ok:
            self.gateway.refused(client_session.client_id, peer, verdict)
            try:
                await handler.send_connack(verdict.code)
                await writer.close()
            except OSError:
                pass  # the client reset the connection after (or before) its CONNACK
            return
        await handler.send_connack(auth.ACCEPTED)
        conn = await self.gateway.connected(verdict, handler, peer)
        handler.conn = client_session.edge_conn = conn
        client_id = client_session.client_id
        self._sessions[client_id] = (client_session, handler)
        try:
            await self.plugins_manager.fire_event(BrokerEvents.CLIENT_CONNECTED, client_id=client_id,
                                                  client_session=client_session)
            await handler.start()
            await self._client_message_loop(client_session, handler)
        finally:
            await self._stop_handler(handler)
            if self._sessions.get(client_id, (None, None))[0] is client_session:
                del self._sessions[client_id]
            self.gateway.disconnected(conn)

    async def add_subscription(self, subscription, session):
        topic_filter, qos = subscription
        if not await self._topic_filtering(session, topic_filter, Action.SUBSCRIBE):
            self.gateway.say(f"{session.client_id}: subscription to {topic_filter[:100]!r} refused")
            return SUBSCRIBE_FAILED
        qos = min(qos, 1)
        conn = getattr(session, "edge_conn", None)
        if conn is not None:
            self.gateway.subscribed(conn, topic_filter, qos)
        # Not added to amqtt's broadcast table: nothing is relayed between devices.
        return qos

    async def _handle_message_delivery(self, client_session, handler, wait_deliver):
        message = wait_deliver.result()
        if message is None:
            return True
        accepted = await self._handle_device_message(client_session, handler, message)
        handler.handled(message, accepted)
        return accepted

    async def _handle_device_message(self, client_session, handler, message):
        conn = handler.conn
        topic = message.topic or ""
        if not topic or "#" in topic or "+" in topic:
            self.gateway.refused_publish(conn, topic, "publish to an invalid topic name")
            return False
        if not await self._topic_filtering(client_session, topic, Action.PUBLISH):
            self.gateway.refused_publish(conn, topic, "not allowed to publish there (own telemetry "
                                                      "and $iothub requests only)")
            return False
        return await self.gateway.on_publish(conn, topic, message.data)
