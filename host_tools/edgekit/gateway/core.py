"""The running gateway: who is connected, and IoT Hub's answers to what devices and the hub ask.

The protocol head (protocol.py) calls in when devices connect, subscribe and publish; the control
interface (control.py) calls the hub-side coroutines. Everything runs on one asyncio loop.
Device-bound messages go straight to the one connection of the target identity: the
`$iothub/...` topics are the same for every device, so a broadcast would leak them.
"""
import asyncio
import itertools
import json
import time
import uuid

from edgekit.gateway import auth, c2d, c2d_delivery, registry, topics, twin_limits, upstream
from edgekit.gateway.owners import Owners
from edgekit.gateway.sessions import Sessions, classify, fold
from edgekit.gateway.store import Store, device_view, merge_patch, now_iso
from edgekit.printable import printable

MAX_MESSAGE = 256 * 1024
REAUTH_INTERVAL = 300  # edgeHub ConnectionReauthenticator: every 5 minutes
METHOD_CONNECT_TIMEOUT = 0  # IoT Hub's connectTimeoutInSeconds default: 404 at once when offline
QUEUED_METHOD_DELAY = 3  # InvokeMethodHandler: a queued call goes out 3 s after the device subscribes
RETAIN_PROPERTY = "mqtt-retain"  # ProtocolGatewayMessageConverter / Util.CompleteMessageFromPacket
MODEL_ID_PROPERTY = "modelId"  # edgeHub SystemProperties.ModelId, from the username's model-id


class HubError(ValueError):
    """A hub-side action IoT Hub would refuse; status is the HTTP status IoT Hub answers with."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class Connection:
    """One accepted MQTT connection: its identity, protocol handler and subscriptions."""

    def __init__(self, identity, handler, peer, method, subscriptions=None, persistent=False, model_id=None):
        self.identity = identity
        self.handler = handler
        self.peer = peer
        self.method = method
        self.subscriptions = dict(subscriptions or {})  # filter -> granted QoS
        self.persistent = persistent  # CleanSession=0: subscriptions are kept in DATA/sessions.json
        self.model_id = model_id
        self.since = now_iso()
        self.unsynced = []  # store tokens of telemetry written, not yet committed (Gateway.commit)

    @property
    def client_id(self):
        return self.identity.client_id

    def subscribed(self, topic_filter):
        """True when the device subscribed to exactly this filter."""
        return topic_filter in self.subscriptions


class Gateway:
    """State and IoT Hub semantics of one `serve`."""

    def __init__(self, data_dir, hostname, max_clients=100, out=None, reauth_interval=REAUTH_INTERVAL,
                 method_connect_timeout=METHOD_CONNECT_TIMEOUT, online=True, ttl=upstream.TTL):
        self.data_dir = data_dir
        self.hostname = hostname
        self.max_clients = max_clients
        self.reauth_interval = reauth_interval
        self.method_connect_timeout = method_connect_timeout
        self.registry = registry.Watcher(data_dir)
        self.store = Store(data_dir)
        self.sessions = Sessions(data_dir)
        self.owners = Owners(data_dir)
        self._reconciled = None  # the registry document the kept state was last checked against
        self._opening = {}  # client id -> (persistent, restored subscriptions) between CONNECT and connected()
        self.connections = {}  # client id -> Connection
        self._methods = {}  # rid -> (client id, future)
        self._rids = itertools.count(1)
        self.c2d = c2d_delivery.Delivery(self._deliver_next_c2d)
        self.store.on_c2d_expired = lambda device_id, mid: self.c2d.finished(device_id, mid, c2d_delivery.EXPIRED)
        self._out = out or (lambda line: print(line, flush=True))
        # IoT Hub reachable or not (upstream.py); online=False is `serve --upstream offline`.
        self.upstream = upstream.Upstream(data_dir, self.store, online=online, ttl=ttl, say=self.say)
        if not online:
            self.say(f"upstream offline from the start: telemetry is held (time to live {ttl:g} s) until "
                     "'edgekit gateway upstream online'")
        try:
            self.current_registry()  # state of identities removed while stopped goes now
        except registry.RegistryError:
            pass

    def say(self, text):
        """One line of the live console (and serve.log); control characters a peer sent are escaped."""
        self._out(time.strftime("%H:%M:%S ") + printable(text))

    def current_registry(self):
        """The registry now; state of identities removed (or removed and added again) since goes first."""
        doc = self.registry.current()
        if doc is not self._reconciled and self.upstream.online:  # offline, edgeHub hears of no removal
            held = set(self.store.twins) | set(self.store.c2d) | set(self.sessions.clients())
            for client_id in self.owners.stale(registry.generations(doc), held):
                self._forget(client_id)
            self._reconciled = doc
        return doc

    def _forget(self, client_id):
        # IoT Hub deletes a device's twin, queued C2D and sessions with it (modules' too).
        self.store.forget_twin(client_id)
        self.sessions.delete(client_id)
        if "/" not in client_id:
            self.store.forget_c2d(client_id)
            self.c2d.forget(client_id)
        conn = self.connections.get(client_id)
        if conn is not None:
            conn.handler.close("its identity was removed")
        self.say(f"{client_id}: removed from the registry; its twin, queued C2D and session are deleted")

    def close(self):
        """Release files; pending method calls fail."""
        for _, fut in self._methods.values():
            if not fut.done():
                fut.set_exception(HubError(503, "the gateway is shutting down"))
        self.c2d.stop()
        self.upstream.close()
        self.store.close()

    # --- connections -----------------------------------------------------------------------

    def check_connect(self, client_id, username, password, peer_der, peer_chain=None):
        """Decide a CONNECT (auth.Verdict), including the client cap (CONNACK 3).

        peer_chain: the certificates the client presented (DER, leaf first; tls.peer_chain).
        """
        try:
            current = self.current_registry()
        except registry.RegistryError as e:
            return auth.Verdict(auth.SERVER_UNAVAILABLE, str(e))
        doc = self.upstream.scope_for_auth(current)  # offline: the device scope cache, as synced before
        verdict = auth.check_connect(doc, client_id, username, password, peer_der, time.time(),
                                     gateway_host=self.hostname, peer_chain=peer_chain)
        if not verdict.ok and doc is not current:
            verdict = self._offline_refusal(verdict, current, client_id, username, password, peer_der, peer_chain)
        if verdict.warning:
            self.say("warning: " + verdict.warning)
        if verdict.ok and client_id not in self.connections and len(self.connections) >= self.max_clients:
            return auth.Verdict(auth.SERVER_UNAVAILABLE,
                                f"the gateway already has {self.max_clients} clients (edgeHub's cap); "
                                "disconnect one or raise --max-clients")
        return verdict

    def _offline_refusal(self, verdict, current, client_id, username, password, peer_der, peer_chain):
        # DeviceScopeAuthenticator: not in the cache (or not matching it) -> RefreshServiceIdentity, which
        # cannot reach IoT Hub -> the fallback authenticator (NullAuthenticator in Scope mode, the cloud
        # one in CloudAndScope) fails too: CONNACK 5. Say why when the registry would have accepted it.
        later = auth.check_connect(current, client_id, username, password, peer_der, time.time(),
                                   gateway_host=self.hostname, peer_chain=peer_chain)
        if later.ok:
            return auth.Verdict(verdict.code, f"{verdict.reason} (in the gateway's device scope cache, synced "
                                "before IoT Hub went away; the identity's current registration is fetched only "
                                "once the upstream is back)")
        return verdict

    def refused(self, client_id, peer, verdict):
        """Show a refused CONNECT on the console."""
        self.say(f"refused {client_id or '?'} from {peer}: CONNACK {verdict.code}, {verdict.reason}")

    def open_session(self, client_id, clean_session):
        """Establish the MQTT session of an accepted CONNECT; True when a stored one is resumed.

        As MqttAdapter.EstablishSessionStateAsync: CleanSession=1 deletes a stored session and
        starts afresh; CleanSession=0 resumes the stored one (session present 1) or starts one.
        """
        if clean_session:
            self.sessions.delete(client_id)
            self._opening[client_id] = (False, {})
            return False
        stored = self.sessions.get(client_id)
        if stored is None:
            self.sessions.save(client_id, {})
        self._opening[client_id] = (True, stored or {})
        return stored is not None

    async def connected(self, verdict, handler, peer):
        """Register an accepted connection; an older one of the same identity is closed, as edgeHub does."""
        client_id = verdict.identity.client_id
        persistent, subs = self._opening.pop(client_id, (False, {}))
        conn = Connection(verdict.identity, handler, peer, verdict.method, subs, persistent,
                          _model_id(verdict, getattr(handler, "credentials", None)))
        old = self.connections.get(conn.client_id)
        self.connections[conn.client_id] = conn
        if old is not None:
            self.say(f"{conn.client_id}: a new connection replaces the one from {old.peer}")
            old.handler.close("taken over by a new connection")
        self.say(f"connected {conn.client_id} ({verdict.reason}) from {peer}"
                 + (f", session resumed with {len(subs)} subscription(s)" if persistent and subs else ""))
        return conn

    async def resume(self, conn):
        """After CONNACK: deliver what a resumed session is owed (queued and unacknowledged C2D)."""
        await self.after_subscribe(conn, list(conn.subscriptions))

    def link_closed(self, conn, why):
        """Forget a closed connection (unless a newer one already replaced it)."""
        if why != "disconnected":
            self.say(f"{conn.client_id}: {why}")
        if self.connections.get(conn.client_id) is conn:
            del self.connections[conn.client_id]
            self.say(f"disconnected {conn.client_id}")

    def disconnected(self, conn):
        """Forget a closed connection (kept for callers of the older name)."""
        self.link_closed(conn, "closed")

    def subscribed(self, conn, grants):
        """Record one SUBSCRIBE's granted [(filter, QoS), ...] by kind, as SessionStateParser does.

        Unknown filters are ignored with one line; the session keeps one filter per kind
        (sessions.fold) and a persistent one is written once for the whole packet.
        """
        for topic_filter, _ in grants:
            if classify(topic_filter) is None:
                self.say(f"{conn.client_id}: subscription to {topic_filter[:100]!r} ignored (not a filter edgeHub "
                         "knows)")
        conn.subscriptions = fold(conn.client_id, conn.subscriptions, grants)
        if conn.persistent:
            self.sessions.save(conn.client_id, conn.subscriptions)

    def unsubscribed(self, conn, topic_filters):
        """Drop subscriptions (UNSUBSCRIBE)."""
        for topic_filter in topic_filters:
            conn.subscriptions.pop(topic_filter, None)
        if conn.persistent:
            self.sessions.save(conn.client_id, conn.subscriptions)

    async def after_subscribe(self, conn, topic_filters):
        """Deliver queued C2D messages when the device subscribes to its C2D filter."""
        own = topics.c2d_filter(conn.identity.device_id)
        if not conn.identity.module_id and own in topic_filters and conn.subscribed(own):
            self.c2d.kick(conn.identity.device_id)

    def refused_publish(self, conn, topic, why):
        """Show a publish that is acknowledged and dropped."""
        self.say(f"{conn.client_id}: publish dropped: {why} ({topic[:100]!r})")

    async def reauthenticate(self):
        """One pass of ConnectionReauthenticator: close connections whose credentials no longer pass."""
        for conn in list(self.connections.values()):
            verdict = await conn.handler.authenticate()  # a worker thread: chain checks are slow
            if not verdict.ok:
                self.say(f"closing {conn.client_id}: re-authentication failed ({verdict.reason})")
                conn.handler.close(f"re-authentication failed: {verdict.reason}")

    async def reauthenticate_forever(self):
        """Run reauthenticate() every reauth_interval seconds, and at once when the registry changes.

        ConnectionReauthenticator has both: the periodic timer (expired tokens) and the device scope
        cache's ServiceIdentityUpdated/Removed events, which drop a changed identity right away.
        """
        try:
            doc = self.current_registry()
        except registry.RegistryError:
            doc = None
        last = time.monotonic()
        while True:
            await asyncio.sleep(min(1.0, self.reauth_interval))
            try:
                current = self.current_registry()  # the same object while the file is unchanged
            except registry.RegistryError:
                current = doc  # unreadable for a moment (being written): wait for the next look
            due = time.monotonic() - last >= self.reauth_interval
            if due or current is not doc:
                last = time.monotonic() if due else last
                await self.reauthenticate()
            doc = current

    # --- device to gateway ------------------------------------------------------------------

    async def on_device_publish(self, conn, topic, data, retain=False):
        """A PUBLISH from a device, as edgeHub routes it; it is acknowledged unless the link closes."""
        if not topic or "#" in topic or "+" in topic:
            self.refused_publish(conn, topic, "invalid topic name")
            return
        why = _twin_fault(topic, self._query(topic))
        if why:
            # MessagingServiceClient.ProcessTwinAsync throws; the publish processor's fault closes the link.
            conn.handler.close(f"{why} (edgeHub closes the link)")
            return
        if not auth.may_publish(conn.identity, topic):
            self.refused_publish(conn, topic, "no IoT Hub operation for this topic (own telemetry and $iothub "
                                              "requests only)")
            return
        await self.on_publish(conn, topic, data, retain=retain)

    async def on_will(self, conn, topic, payload, retain):
        """A will on abnormal close: routed only as the sender's own telemetry, never to anyone else."""
        own = topics.telemetry(conn.identity.device_id, conn.identity.module_id)
        if not (topic.startswith(own) or topic == own[:-1]):
            self.say(f"{conn.client_id}: will on {topic[:100]!r} not routed (only its own telemetry is)")
            return
        self.say(f"{conn.client_id}: will routed as its telemetry")
        self._telemetry(conn, topic, bytes(payload), retain=retain)
        await self.commit(conn)

    async def on_publish(self, conn, topic, data, retain=False):
        """Handle an authorized publish."""
        data = bytes(data or b"")
        if topic.startswith("$iothub/twin/GET/"):
            return await self._twin_get(conn, topic)
        if topic.startswith("$iothub/twin/PATCH/properties/reported/"):
            return await self._twin_reported(conn, topic, data)
        if topic.startswith("$iothub/methods/res/"):
            return self._method_response(conn, topic, data)
        return self._telemetry(conn, topic, data, retain=retain)

    async def commit(self, conn):
        """Return once every telemetry record of conn handled so far is on disk (one group fsync);
        StoreError when one of them is not.

        The protocol head calls it after a run of a link's publishes and only then sends their
        PUBACKs, in order: edgeHub acknowledges once its store holds the message.
        """
        tokens, conn.unsynced = conn.unsynced, []
        for token in tokens:  # the first waits for the fsync; it covers the rest
            await self.store.commit_telemetry(token)

    def _query(self, topic):
        try:
            return topics.query(topic)
        except ValueError:
            return {}

    def _telemetry(self, conn, topic, data, retain=False):
        try:
            props = topics.telemetry_properties(topic, conn.identity.device_id, conn.identity.module_id)
        except ValueError as e:
            self.refused_publish(conn, topic, f"bad property bag: {e}")
            return False
        if props is None:  # e.g. a raw '/' in the bag: {params} is one topic segment
            self.refused_publish(conn, topic, "matches none of edgeHub's telemetry templates")
            return False
        if retain:
            props[RETAIN_PROPERTY] = "true"
        if conn.model_id:
            props[MODEL_ID_PROPERTY] = conn.model_id
        size = len(data) + sum(len(k.encode()) + len(str(v).encode()) for k, v in props.items())
        if size > MAX_MESSAGE:
            self.refused_publish(conn, topic, f"message of {size} bytes (body and properties) is over IoT Hub's "
                                              "256 KiB")
            return False
        record = {"device": conn.identity.device_id, "module": conn.identity.module_id,
                  "properties": props, "time": now_iso()}
        try:
            record["body"] = data.decode("utf-8")
        except UnicodeDecodeError:
            record["body"] = data.hex()
            record["body_encoding"] = "hex"  # not UTF-8: kept whole, not mangled
        token = self.upstream.write_telemetry(record)  # held at the gateway while IoT Hub is away
        if token is not None:
            conn.unsynced.append(token)  # on disk at commit(conn), before its PUBACK
        shown = record["body"] if len(record["body"]) <= 200 else record["body"][:200] + "..."
        bag = topics.encode_properties(props)
        self.say(f"telemetry {conn.client_id}: {shown}" + (f"  [{bag[:120]}]" if bag else ""))
        return True

    def _rid(self, conn, topic):
        try:
            rid = topics.query(topic).get("$rid")
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
        await self.deliver(conn, topics.twin_response(status, rid, version), body)

    async def _twin_get(self, conn, topic):
        rid = self._rid(conn, topic)
        if rid:
            # StoringTwinManager.GetTwinAsync: from IoT Hub, else (offline) from the twin store.
            twin = self.store.twin(conn.client_id) if self.upstream.online else \
                self.upstream.cached_twin(conn.client_id)
            await self._twin_response(conn, 200, rid, json.dumps(device_view(twin)).encode())
        return True

    async def _twin_reported(self, conn, topic, data):
        rid = self._rid(conn, topic)
        try:
            patch = json.loads(data)
        except ValueError:
            patch = None
        if not isinstance(patch, dict):
            self.say(f"{conn.client_id}: reported patch is not a JSON object: answered 400")
            body = json.dumps({"message": "reported properties must be a JSON object"}).encode()
            if rid:
                await self._twin_response(conn, 400, rid, body)
            return True
        twin = self.store.twin(conn.client_id) if self.upstream.online else \
            self.upstream.cached_twin(conn.client_id)
        why = twin_limits.refusal(twin["reported"], patch, "reported", merge_patch)
        if why:
            # ReportedPropertiesValidator throws; DeviceMessageHandler answers 400 with an empty body.
            self.say(f"{conn.client_id}: reported patch refused, 400: {why}")
            if rid:
                await self._twin_response(conn, 400, rid, b"")
            return True
        if not self.upstream.online:
            # StoringTwinManager.UpdateReportedPropertiesAsync: stored, answered, synced when IoT Hub is back.
            self.upstream.hold_reported(conn.client_id, patch)
            self.say(f"twin {conn.client_id}: reported {json.dumps(patch)[:150]} held until the upstream is back")
            if rid:
                await self._twin_response(conn, 204, rid, b"")
            return True
        merge_patch(twin["reported"], patch)
        twin["reported"]["$version"] += 1
        await self.store.save_twin(conn.client_id)
        self.say(f"twin {conn.client_id}: reported {json.dumps(patch)[:150]} -> $version "
                 f"{twin['reported']['$version']}")
        if rid:  # without $rid edgeHub applies the patch and answers nothing
            # MessagingServiceClient.ProcessTwinAsync: 204 with the $rid only. IoT Hub itself adds
            # $version here; edgeHub's response carries no version.
            await self._twin_response(conn, 204, rid, b"")
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

    async def deliver(self, conn, topic, body, qos=None, wait=False):
        """Publish to one connection at QoS min(1, subscribed); with wait, return once acknowledged.

        Returns False when the link was already closing (without wait; with wait it raises).
        """
        if qos is None:
            qos = max((q for f, q in conn.subscriptions.items() if _matches(f, topic)), default=0)
        try:
            await conn.handler.publish(topic, body, min(1, qos), wait=wait)
        except ConnectionError:
            if wait:
                raise
            # The link is closing (DISCONNECT read, reset): what it was owed is not sent, as in edgeHub.
            self.say(f"{conn.client_id}: not sent, the link is closing ({topic[:80]!r})")
            return False
        return True

    # --- hub side ---------------------------------------------------------------------------

    def _known(self, device_id, module_id=None):
        doc = self.current_registry()
        ident = registry.lookup(doc, device_id, module_id)
        if ident is None:
            name = device_id + ("/" + module_id if module_id else "")
            raise HubError(404, f"no identity '{name}' in the registry{registry.did_you_mean(doc, device_id, module_id)}"
                                "; 'edgekit gateway device list' shows them, 'edgekit gateway device add' adds one")
        return ident

    def _online(self, ident, topic_filter, what):
        conn = self.connections.get(ident.client_id)
        if not self.upstream.online:
            # The device's cloud link goes with the gateway's: to IoT Hub it is not connected.
            raise HubError(404, f"'{ident.client_id}' is behind a gateway whose upstream is offline, so IoT Hub "
                                f"cannot reach it with {what} (IoT Hub answers 404 DeviceNotOnline)")
        if conn is None or not conn.subscribed(topic_filter):
            state = "is not connected" if conn is None else f"has not subscribed to {topic_filter}"
            raise HubError(404, f"'{ident.client_id}' {state}, so it cannot receive {what} "
                                "(IoT Hub answers 404 DeviceNotOnline)")
        return conn

    async def _wait_online(self, ident, topic_filter, what, connect_timeout):
        # InvokeMethodHandler.InvokeMethod: a call to a device that is not there yet waits for it to
        # connect and subscribe, up to the request's connect timeout, then fails with 404.
        deadline = time.monotonic() + connect_timeout
        waited = False
        while True:
            try:
                conn = self._online(ident, topic_filter, what)
            except HubError:
                if time.monotonic() >= deadline:
                    raise
                waited = True
                await asyncio.sleep(0.05)
                continue
            if waited:  # ProcessInvokeMethodSubscriptionInternal's Task.Delay(3 s)
                await asyncio.sleep(QUEUED_METHOD_DELAY)
            return conn

    async def invoke_method(self, device_id, name, payload=None, timeout=30, module_id=None, connect_timeout=None):
        """Call a direct method; return (status, payload) or raise HubError (404 offline, 504 timeout).

        connect_timeout (seconds, default the gateway's method_connect_timeout) is how long a call to
        a device that is offline or not subscribed waits for it before the 404.
        """
        if not name or "/" in name or "#" in name or "+" in name:
            raise HubError(400, f"method name {name!r} must be non-empty, without '/', '#' or '+'")
        if not 1 <= timeout <= 300:
            raise HubError(400, "method timeout must be between 1 and 300 seconds, as in IoT Hub")
        ident = self._known(device_id, module_id)
        if connect_timeout is None:
            connect_timeout = self.method_connect_timeout
        conn = await self._wait_online(ident, topics.METHODS_FILTER, "direct methods", connect_timeout)
        rid = format(next(self._rids), "x")
        fut = asyncio.get_running_loop().create_future()
        self._methods[rid] = (ident.client_id, fut)
        try:
            self.say(f"method {name} -> {ident.client_id} ($rid={rid})")
            if not await self.deliver(conn, f"$iothub/methods/POST/{name}/?$rid={rid}",
                                      json.dumps(payload).encode()):
                raise HubError(404, f"'{ident.client_id}' disconnected before the call reached it "
                                    "(IoT Hub answers 404 DeviceNotOnline)")
            status, answer = await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise HubError(504, f"'{ident.client_id}' did not answer method '{name}' within {timeout:g} s "
                                "(IoT Hub answers 504 GatewayTimeout)")
        finally:
            self._methods.pop(rid, None)
        self.say(f"method {name} <- {ident.client_id}: {status}")
        return status, answer

    def get_twin(self, device_id, module_id=None):
        """The twin of a registered identity: {"desired": {...}, "reported": {...}}, and "tags" once set."""
        ident = self._known(device_id, module_id)
        return json.loads(json.dumps(self.store.twin(ident.client_id)))

    async def update_twin(self, device_id, desired_patch, module_id=None):
        """Merge a desired patch, bump desired $version, push it to the device if it listens; return the version."""
        if not isinstance(desired_patch, dict):
            raise HubError(400, "a desired patch must be a JSON object, e.g. '{\"interval\": 5}'")
        ident = self._known(device_id, module_id)
        twin = self.store.twin(ident.client_id)
        why = twin_limits.refusal(twin["desired"], desired_patch, "desired", merge_patch)
        if why:
            raise HubError(400, why)
        merge_patch(twin["desired"], desired_patch)
        twin["desired"]["$version"] += 1
        version = twin["desired"]["$version"]
        await self.store.save_twin(ident.client_id)
        self.say(f"twin {ident.client_id}: desired {json.dumps(desired_patch)[:150]} -> $version {version}")
        conn = self.connections.get(ident.client_id)
        if not self.upstream.online:
            self.say(f"twin {ident.client_id}: desired $version {version} waits for the gateway's upstream")
        elif conn is not None and conn.subscribed(topics.DESIRED_FILTER):
            body = dict(desired_patch)
            body["$version"] = version
            await self.deliver(conn, f"$iothub/twin/PATCH/properties/desired/?$version={version}",
                               json.dumps(body).encode())
        return version

    async def update_tags(self, device_id, tags_patch, module_id=None):
        """Merge a tags patch into an identity's twin and return the tags (null deletes a tag).

        Tags are IoT Hub's own (a twin's "tags", set by the service side, at most 8 KB): no device is
        told, and a device's twin GET never carries them (store.device_view).
        """
        if not isinstance(tags_patch, dict):
            raise HubError(400, "a tags patch must be a JSON object, e.g. '{\"site\": \"lab\"}'")
        ident = self._known(device_id, module_id)
        twin = self.store.twin(ident.client_id)
        why = twin_limits.refusal(twin.get("tags", {}), tags_patch, "tags", merge_patch)
        if why:
            raise HubError(400, why)
        merge_patch(twin.setdefault("tags", {}), tags_patch)
        await self.store.save_twin(ident.client_id)
        self.say(f"twin {ident.client_id}: tags {json.dumps(tags_patch)[:150]}")
        return json.loads(json.dumps(twin["tags"]))

    async def send_c2d(self, device_id, body, properties=None, system=None):
        """Queue a cloud-to-device message and return {"mid", "state"} at once, as IoT Hub does.

        Delivery runs beside (c2d_delivery): the call never waits for the device, so a device
        that never acknowledges holds no hub-side caller. c2d_state() tells what became of it.
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
        if len(self.store.pending_c2d(ident.device_id)) >= c2d_delivery.MAX_QUEUED:
            raise HubError(403, f"'{ident.device_id}' already has {c2d_delivery.MAX_QUEUED} C2D messages queued "
                                "(IoT Hub's limit: 403 DeviceMaximumQueueDepthExceeded); wait until it takes some")
        self.store.queue_c2d(ident.device_id, {"mid": props["$.mid"], "body": body, "properties": props})
        self.say(f"c2d -> {ident.device_id}: {body[:120]}")
        self.c2d.kick(ident.device_id)
        return {"mid": props["$.mid"], "state": c2d_delivery.QUEUED}

    def c2d_state(self, device_id, mid):
        """What became of a C2D message: queued, delivered, expired or unknown."""
        ident = self._known(device_id)
        queued = {m["mid"] for m in self.store.pending_c2d(ident.device_id)}
        return {"mid": mid, "state": self.c2d.state(ident.device_id, mid, queued)}

    async def _deliver_next_c2d(self, device_id):
        # One message at a time, oldest first; it leaves the queue on the device's PUBACK only.
        pending = self.store.pending_c2d(device_id)
        conn = self.connections.get(device_id)
        sub = topics.c2d_filter(device_id)
        if not pending or conn is None or not conn.subscribed(sub) or not self.upstream.online:
            return False  # offline: it stays queued in IoT Hub
        msg = pending[0]
        topic = topics.c2d_topic(device_id, msg["properties"])
        try:
            await self.deliver(conn, topic, msg["body"].encode(), min(1, conn.subscriptions[sub]), wait=True)
        except Exception as e:  # the device went away before its PUBACK: keep it queued
            self.say(f"c2d to {device_id} not acknowledged ({type(e).__name__}); kept queued")
            return False
        self.store.ack_c2d(device_id, msg["mid"])
        self.c2d.finished(device_id, msg["mid"], c2d_delivery.DELIVERED)
        return True

    async def set_upstream(self, state=None):
        """Lose or regain IoT Hub (`edgekit gateway upstream offline|online`); return upstream.summary().

        Going offline takes the device scope cache and twin cache as they are. Coming back, as edgeHub's
        DeviceConnectivityManager raises DeviceConnected: the held telemetry goes to IoT Hub in order
        (past the TTL dropped), each identity's pending reported patches as one patch, connected
        devices get the desired changes they missed, queued C2D is delivered, and the registry as it
        is now applies (connections it no longer accepts are closed).
        """
        if state not in (None, upstream.ONLINE, upstream.OFFLINE):
            raise HubError(400, f"upstream state {state!r} is neither 'online' nor 'offline'")
        if state == upstream.OFFLINE and self.upstream.go_offline(self.current_registry()):
            self.say("upstream offline: devices keep the gateway; telemetry is held "
                     f"(time to live {self.upstream.ttl:g} s), twins answered from the cache")
        elif state == upstream.ONLINE and not self.upstream.online:
            await self._upstream_back()
        return self.upstream.summary()

    async def expire_forever(self):
        """Drop held telemetry past the time to live as it ages (serve runs this beside the head).

        edgeHub's MessageStore.CleanupProcessor runs every max(30 s, min(TTL/2, 30 min)), but its
        MessageIterator never hands an expired message to the endpoint, so IoT Hub gets the same.
        """
        while True:
            await asyncio.sleep(min(1.0, self.upstream.ttl / 4))
            if self.upstream.held:
                self.upstream.expire()

    async def _upstream_back(self):
        cached = self.upstream.end_outage()
        sent = self.upstream.forward()
        for client_id, patch in self.upstream.take_reported().items():
            if registry.lookup(self.current_registry(), *_split_client_id(client_id)) is None:
                continue  # removed meanwhile: IoT Hub refuses the update
            twin = self.store.twin(client_id)
            merge_patch(twin["reported"], patch)
            twin["reported"]["$version"] += 1
            await self.store.save_twin(client_id)
            self.say(f"twin {client_id}: reported held during the outage synced -> $version "
                     f"{twin['reported']['$version']}")
        for conn in list(self.connections.values()):
            old = cached.get(conn.client_id)
            if old is None or not conn.subscribed(topics.DESIRED_FILTER):
                continue
            new = self.store.twin(conn.client_id)["desired"]
            patch = upstream.diff(old["desired"], new)  # SyncTwinAndSendDesiredPropertyUpdates
            if patch:
                await self.deliver(conn, f"$iothub/twin/PATCH/properties/desired/?$version={new['$version']}",
                                   json.dumps(patch).encode())
        for device_id in list(self.store.c2d):
            self.c2d.kick(device_id)
        self.say(f"upstream online: {sent} held message(s) forwarded, {self.upstream.expired} expired in all")
        await self.reauthenticate()  # the scope cache refreshed: removed or re-keyed identities go

    def status(self):
        """Connected identities, for `edgekit gateway status` and tests."""
        return [{"client_id": c.client_id, "peer": c.peer, "auth": c.method, "since": c.since,
                 "model_id": c.model_id, "subscriptions": sorted(c.subscriptions)}
                for c in self.connections.values()]


def _split_client_id(client_id):
    device_id, _, module_id = client_id.partition("/")
    return device_id, module_id or None


def _twin_fault(topic, query):
    """Why edgeHub's twin handling would throw on this publish, or None."""
    if not topic.startswith("$iothub/twin/"):
        return None
    if topic.startswith("$iothub/twin/GET/"):
        return None if query.get("$rid") else "twin GET without $rid"
    if topic.startswith("$iothub/twin/PATCH/properties/reported/"):
        return None
    return "twin operation not supported"


def _matches(topic_filter, topic):
    """MQTT topic filter match for the filters edgeHub grants ('#' at the end only)."""
    if topic_filter.endswith("#"):
        return topic.startswith(topic_filter[:-1])
    return topic == topic_filter


def _model_id(verdict, credentials):
    """The Plug and Play model id of a connection: from the verdict, or the username's model-id key."""
    model_id = getattr(verdict, "model_id", None)
    if model_id or not credentials or not credentials[1] or "?" not in credentials[1]:
        return model_id
    try:
        query = topics.decode_properties(credentials[1][credentials[1].find("?") + 1:])
    except ValueError:
        return None
    return query.get("model-id") or None
