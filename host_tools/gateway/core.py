"""The running gateway: who is connected, and IoT Hub's answers to what devices and the hub ask.

The broker (broker.py) calls on_* when devices connect, subscribe and publish; the control
interface (control.py) calls the hub-side coroutines. Everything runs on one asyncio loop.
Device-bound messages go straight to the one connection of the target identity: the
`$iothub/...` topics are the same for every device, so a broadcast would leak them.
"""
import asyncio
import itertools
import json
import time
import uuid

from azure_edge import topics
from azure_edge.url import quote

from edgekit.gateway import auth, c2d, registry
from edgekit.gateway.store import Store, merge_patch, now_iso

MAX_MESSAGE = 256 * 1024
_RID = b"$"


class HubError(ValueError):
    """A hub-side action IoT Hub would refuse; status is the HTTP status IoT Hub answers with."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class Connection:
    """One accepted MQTT connection: its identity, protocol handler and subscriptions."""

    def __init__(self, identity, handler, peer, method):
        self.identity = identity
        self.handler = handler
        self.peer = peer
        self.method = method
        self.subscriptions = {}  # filter -> granted QoS
        self.since = now_iso()

    @property
    def client_id(self):
        return self.identity.client_id

    def subscribed(self, topic_filter):
        """True when the device subscribed to exactly this filter."""
        return topic_filter in self.subscriptions


class Gateway:
    """State and IoT Hub semantics of one `serve`."""

    def __init__(self, data_dir, hostname, max_clients=100, out=None):
        self.data_dir = data_dir
        self.hostname = hostname
        self.max_clients = max_clients
        self.registry = registry.Watcher(data_dir)
        self.store = Store(data_dir)
        self.connections = {}  # client id -> Connection
        self._methods = {}  # rid -> (client id, future)
        self._rids = itertools.count(1)
        self._c2d_locks = {}
        self._out = out or (lambda line: print(line, flush=True))

    def say(self, text):
        """One line of the live console."""
        self._out(time.strftime("%H:%M:%S ") + text)

    def close(self):
        """Release files; pending method calls fail."""
        for _, fut in self._methods.values():
            if not fut.done():
                fut.set_exception(HubError(503, "the gateway is shutting down"))
        self.store.close()

    # --- connections -----------------------------------------------------------------------

    def check_connect(self, client_id, username, password, peer_der, peer_chain=None):
        """Decide a CONNECT (auth.Verdict), including the client cap (CONNACK 3).

        peer_chain: the certificates the client presented (DER, leaf first; tls.peer_chain).
        """
        try:
            doc = self.registry.current()
        except registry.RegistryError as e:
            return auth.Verdict(auth.SERVER_UNAVAILABLE, str(e))
        verdict = auth.check_connect(doc, client_id, username, password, peer_der, time.time(),
                                     gateway_host=self.hostname, peer_chain=peer_chain)
        if verdict.warning:
            self.say("warning: " + verdict.warning)
        if verdict.ok and client_id not in self.connections and len(self.connections) >= self.max_clients:
            return auth.Verdict(auth.SERVER_UNAVAILABLE,
                                f"the gateway already has {self.max_clients} clients (edgeHub's cap); "
                                "disconnect one or raise --max-clients")
        return verdict

    def refused(self, client_id, peer, verdict):
        """Show a refused CONNECT on the console."""
        self.say(f"refused {client_id or '?'} from {peer}: CONNACK {verdict.code}, {verdict.reason}")

    async def connected(self, verdict, handler, peer):
        """Register an accepted connection; an older one of the same identity is closed, as edgeHub does."""
        conn = Connection(verdict.identity, handler, peer, verdict.method)
        old = self.connections.get(conn.client_id)
        self.connections[conn.client_id] = conn
        if old is not None:
            self.say(f"{conn.client_id}: a new connection replaces the one from {old.peer}")
            await old.handler.handle_connection_closed()
        self.say(f"connected {conn.client_id} ({verdict.reason}) from {peer}")
        return conn

    def disconnected(self, conn):
        """Forget a closed connection (unless a newer one already replaced it)."""
        if self.connections.get(conn.client_id) is conn:
            del self.connections[conn.client_id]
            self.say(f"disconnected {conn.client_id}")

    def subscribed(self, conn, topic_filter, qos):
        """Record a granted subscription; queued C2D messages follow once SUBACK is out."""
        conn.subscriptions[topic_filter] = qos

    async def after_subscribe(self, conn, topic_filter):
        """Deliver queued C2D messages when the device subscribes to its C2D filter."""
        if not conn.identity.module_id and topic_filter == topics.c2d_filter(conn.identity.device_id):
            await self._flush_c2d(conn.identity.device_id)

    def refused_publish(self, conn, topic, why):
        """Show a publish that closes the connection."""
        self.say(f"closing {conn.client_id}: {why} ({topic[:100]!r})")

    # --- device to gateway ------------------------------------------------------------------

    async def on_publish(self, conn, topic, data):
        """Handle an authorized publish; return False when it is malformed (the connection closes)."""
        data = bytes(data or b"")
        if topic.startswith("$iothub/twin/GET/"):
            return await self._twin_get(conn, topic)
        if topic.startswith("$iothub/twin/PATCH/properties/reported/"):
            return await self._twin_reported(conn, topic, data)
        if topic.startswith("$iothub/methods/res/"):
            return self._method_response(conn, topic, data)
        return self._telemetry(conn, topic, data)

    def _telemetry(self, conn, topic, data):
        own = topics.telemetry(conn.identity.device_id, conn.identity.module_id)
        try:
            props = topics.decode_properties(topic[len(own):])
        except ValueError as e:
            self.refused_publish(conn, topic, f"bad property bag: {e}")
            return False
        record = {"device": conn.identity.device_id, "module": conn.identity.module_id,
                  "properties": props, "time": now_iso()}
        try:
            record["body"] = data.decode("utf-8")
        except UnicodeDecodeError:
            record["body"] = data.hex()
            record["body_encoding"] = "hex"  # not UTF-8: kept whole, not mangled
        self.store.add_telemetry(record)
        shown = record["body"] if len(record["body"]) <= 200 else record["body"][:200] + "..."
        bag = topics.encode_properties(props)
        self.say(f"telemetry {conn.client_id}: {shown}" + (f"  [{bag[:120]}]" if bag else ""))
        return True

    def _rid(self, conn, topic):
        q = topic[topic.find("?") + 1:] if "?" in topic else ""
        try:
            rid = topics.decode_properties(q).get("$rid")
        except ValueError:
            rid = None
        if not rid:
            self.say(f"{conn.client_id}: request without $rid ignored ({topic[:80]!r})")
        return rid

    async def _twin_response(self, conn, status, rid, body, version=None):
        if not conn.subscribed(topics.TWIN_RES_FILTER):
            self.say(f"{conn.client_id}: twin request answered nowhere: subscribe to "
                     f"{topics.TWIN_RES_FILTER} first")
            return
        topic = f"$iothub/twin/res/{status}/?$rid={quote(rid, _RID)}"
        if version is not None:
            topic += f"&$version={version}"
        await self.deliver(conn, topic, body, 0)

    async def _twin_get(self, conn, topic):
        rid = self._rid(conn, topic)
        if rid:
            twin = self.store.twin(conn.client_id)
            await self._twin_response(conn, 200, rid, json.dumps(twin).encode())
        return True

    async def _twin_reported(self, conn, topic, data):
        rid = self._rid(conn, topic)
        if not rid:
            return True
        try:
            patch = json.loads(data)
        except ValueError:
            patch = None
        if not isinstance(patch, dict):
            self.say(f"{conn.client_id}: reported patch is not a JSON object: answered 400")
            body = json.dumps({"message": "reported properties must be a JSON object"}).encode()
            await self._twin_response(conn, 400, rid, body)
            return True
        twin = self.store.twin(conn.client_id)
        merge_patch(twin["reported"], patch)
        twin["reported"]["$version"] += 1
        self.store.save_twins()
        self.say(f"twin {conn.client_id}: reported {json.dumps(patch)[:150]} -> $version "
                 f"{twin['reported']['$version']}")
        await self._twin_response(conn, 204, rid, b"", twin["reported"]["$version"])
        return True

    def _method_response(self, conn, topic, data):
        rest = topic[len("$iothub/methods/res/"):]
        status = rest.split("/", 1)[0]
        rid = self._rid(conn, topic)
        pending = self._methods.get(rid) if rid else None
        if not (status.isascii() and status.isdigit()) or pending is None or pending[0] != conn.client_id:
            self.say(f"{conn.client_id}: method response for no pending call ignored ({topic[:80]!r})")
            return True
        text = data.decode("utf-8", "replace")
        try:
            payload = json.loads(text) if text else None
        except ValueError:
            payload = text
        if not pending[1].done():
            pending[1].set_result((int(status), payload))
        return True

    async def deliver(self, conn, topic, body, qos):
        """Publish to one connection; returns when sent (QoS 0) or acknowledged (QoS 1)."""
        await conn.handler.mqtt_publish(topic, body, qos, False)

    # --- hub side ---------------------------------------------------------------------------

    def _known(self, device_id, module_id=None):
        ident = registry.lookup(self.registry.current(), device_id, module_id)
        if ident is None:
            name = device_id + ("/" + module_id if module_id else "")
            raise HubError(404, f"no identity '{name}' in the registry; add it with "
                                "'edgekit gateway device add'")
        return ident

    def _online(self, ident, topic_filter, what):
        conn = self.connections.get(ident.client_id)
        if conn is None or not conn.subscribed(topic_filter):
            state = "is not connected" if conn is None else f"has not subscribed to {topic_filter}"
            raise HubError(404, f"'{ident.client_id}' {state}, so it cannot receive {what} "
                                "(IoT Hub answers 404 DeviceNotOnline)")
        return conn

    async def invoke_method(self, device_id, name, payload=None, timeout=30, module_id=None):
        """Call a direct method; return (status, payload) or raise HubError (404 offline, 504 timeout)."""
        if not name or "/" in name or "#" in name or "+" in name:
            raise HubError(400, f"method name {name!r} must be non-empty, without '/', '#' or '+'")
        if not 1 <= timeout <= 300:
            raise HubError(400, "method timeout must be between 1 and 300 seconds, as in IoT Hub")
        ident = self._known(device_id, module_id)
        conn = self._online(ident, topics.METHODS_FILTER, "direct methods")
        rid = format(next(self._rids), "x")
        fut = asyncio.get_running_loop().create_future()
        self._methods[rid] = (ident.client_id, fut)
        try:
            self.say(f"method {name} -> {ident.client_id} ($rid={rid})")
            await self.deliver(conn, f"$iothub/methods/POST/{name}/?$rid={rid}",
                               json.dumps(payload).encode(), 0)
            status, answer = await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise HubError(504, f"'{ident.client_id}' did not answer method '{name}' within {timeout:g} s "
                                "(IoT Hub answers 504 GatewayTimeout)")
        finally:
            self._methods.pop(rid, None)
        self.say(f"method {name} <- {ident.client_id}: {status}")
        return status, answer

    def get_twin(self, device_id, module_id=None):
        """The twin of a registered identity: {"desired": {...}, "reported": {...}}."""
        ident = self._known(device_id, module_id)
        return json.loads(json.dumps(self.store.twin(ident.client_id)))

    async def update_twin(self, device_id, desired_patch, module_id=None):
        """Merge a desired patch, bump desired $version, push it to the device if it listens; return the version."""
        if not isinstance(desired_patch, dict):
            raise HubError(400, "a desired patch must be a JSON object, e.g. '{\"interval\": 5}'")
        ident = self._known(device_id, module_id)
        twin = self.store.twin(ident.client_id)
        merge_patch(twin["desired"], desired_patch)
        twin["desired"]["$version"] += 1
        version = twin["desired"]["$version"]
        self.store.save_twins()
        self.say(f"twin {ident.client_id}: desired {json.dumps(desired_patch)[:150]} -> $version {version}")
        conn = self.connections.get(ident.client_id)
        if conn is not None and conn.subscribed(topics.DESIRED_FILTER):
            body = dict(desired_patch)
            body["$version"] = version
            await self.deliver(conn, f"$iothub/twin/PATCH/properties/desired/?$version={version}",
                               json.dumps(body).encode(), 0)
        return version

    async def send_c2d(self, device_id, body, properties=None, system=None):
        """Queue a cloud-to-device message and deliver it if the device listens; return (mid, delivered).

        system: IoT Hub's system properties by their topic names (c2d.SYSTEM: $.mid, $.cid, $.ct, ...).
        """
        ident = self._known(device_id)
        props = {"$.mid": str(uuid.uuid4()), "$.to": f"/devices/{ident.device_id}/messages/devicebound"}
        try:
            props.update(c2d.system_properties(system))
        except c2d.C2DError as e:
            raise HubError(400, str(e))
        for k, v in (properties or {}).items():
            if not k or k.startswith("$"):
                raise HubError(400, f"property name {k!r} is reserved or empty; use your own names")
            props[k] = "" if v is None else str(v)
        if isinstance(body, bytes):
            body = body.decode("utf-8")
        if len(body.encode()) > 64 * 1024:
            raise HubError(400, "a C2D message body is limited to 64 KiB in IoT Hub")
        self.store.queue_c2d(ident.device_id, {"mid": props["$.mid"], "body": body, "properties": props})
        self.say(f"c2d -> {ident.device_id}: {body[:120]}")
        await self._flush_c2d(ident.device_id)
        delivered = all(m["mid"] != props["$.mid"] for m in self.store.pending_c2d(ident.device_id))
        return props["$.mid"], delivered

    async def _flush_c2d(self, device_id):
        lock = self._c2d_locks.setdefault(device_id, asyncio.Lock())
        async with lock:
            for msg in self.store.pending_c2d(device_id):
                conn = self.connections.get(device_id)
                sub = topics.c2d_filter(device_id)
                if conn is None or not conn.subscribed(sub):
                    return
                topic = f"devices/{device_id}/messages/devicebound/" + topics.encode_properties(msg["properties"])
                try:
                    await self.deliver(conn, topic, msg["body"].encode(), min(1, conn.subscriptions[sub]))
                except Exception as e:  # the device went away or did not ack: keep it queued
                    self.say(f"c2d to {device_id} not acknowledged ({type(e).__name__}); kept queued")
                    return
                self.store.ack_c2d(device_id, msg["mid"])

    def status(self):
        """Connected identities, for `edgekit gateway status` and tests."""
        return [{"client_id": c.client_id, "peer": c.peer, "auth": c.method, "since": c.since,
                 "subscriptions": sorted(c.subscriptions)} for c in self.connections.values()]

