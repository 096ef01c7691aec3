"""The gateway's link to IoT Hub, which can be lost: what edgeHub does while it is offline.

`serve --upstream offline` starts without it, `edgekit gateway upstream offline|online` flips it.
Downstream devices stay connected to the gateway either way (edgeHub's MQTT head does not depend on
its cloud link); what changes is what reaches IoT Hub, and when:

- authentication uses the device scope cache as it was when the link went down: an identity added
  (or given new keys) since is unknown to edgeHub until IoT Hub is back, one removed still gets in
  (Hub.Core/DeviceScopeAuthenticator.cs, DeviceScopeIdentitiesCache.cs);
- telemetry is acknowledged once stored at the gateway (DATA/held.jsonl), forwarded in order when
  the link returns, and dropped when older than the store-and-forward time to live
  (Hub.Core/storage/MessageStore.cs, Routing.Core/endpoints/StoringAsyncEndpointExecutor.cs);
- twin reads are answered from the twin cache, reported patches are answered 204 at once and sent
  as one merged patch when the link returns; desired patches made on the hub side meanwhile reach
  connected devices then, as the difference from what they had (Hub.Core/twin/StoringTwinManager.cs,
  ReportedPropertiesStore.cs);
- methods and C2D from IoT Hub cannot come down (core.py asks `online`).

DATA/upstream.json keeps the pending reported patches and the count of expired messages (0600:
nothing secret, but it is device data). The state itself is not kept: each `serve` starts with
--upstream (online by default).
"""
import copy
import json
import os
import time

from edgekit.certs.pem import write_atomic
from edgekit.gateway.store import StoreError, merge_patch, new_twin, now_iso, read_json_object, whole_records_end

HELD = "held.jsonl"
STATE = "upstream.json"
TTL = 7200  # edgeHub's storeAndForwardConfiguration.timeToLiveSecs default
ONLINE = "online"
OFFLINE = "offline"


def read_held(data_dir):
    """The telemetry held at the gateway, oldest first (works with the gateway stopped)."""
    path = os.path.join(os.fspath(data_dir), HELD)
    out = []
    try:
        with open(path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
    except FileNotFoundError:
        pass
    return out


def read_state(data_dir):
    """DATA/upstream.json: {"expired": n, "reported": {client id: patch}} (empty when none)."""
    doc = read_json_object(os.path.join(os.fspath(data_dir), STATE))
    return {"expired": int(doc.get("expired", 0)), "reported": dict(doc.get("reported", {}))}


def diff(old, new):
    """The patch that turns old into new: changed or added members, removed ones as null (JsonEx.Diff)."""
    patch = {}
    for k, v in new.items():
        if k not in old:
            patch[k] = v
        elif isinstance(v, dict) and isinstance(old[k], dict):
            sub = diff(old[k], v)
            if sub:
                patch[k] = sub
        elif old[k] != v:
            patch[k] = v
    for k in old:
        if k not in new:
            patch[k] = None
    return patch


def merge_keep_nulls(target, patch):
    """JsonEx.Merge(treatNullAsDelete: false): pending reported patches merged into one, nulls kept."""
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(target.get(k), dict):
            merge_keep_nulls(target[k], v)
        else:
            target[k] = copy.deepcopy(v)
    return target


class Upstream:
    """Whether IoT Hub is reachable, and what the gateway holds for it meanwhile."""

    def __init__(self, data_dir, store, online=True, ttl=TTL, say=print):
        self.data_dir = os.fspath(data_dir)
        self.store = store
        self.ttl = ttl
        self.say = say
        self.online = True
        self.scope = None  # the registry document as the device scope cache held it at the outage
        self.twins = None  # client id -> twin: edgeHub's twin cache while offline
        state = read_state(self.data_dir)
        self.expired = state["expired"]
        self.reported = state["reported"]  # client id -> merged reported patch not yet synced
        self._held_path = os.path.join(self.data_dir, HELD)
        self._held = os.open(self._held_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        end = whole_records_end(self._held)
        if os.lseek(self._held, 0, os.SEEK_END) != end:
            os.ftruncate(self._held, end)  # a torn line was never acknowledged
        self.held = read_held(self.data_dir)  # [{"stored": epoch, "record": {...}}], oldest first
        if not online:
            self.go_offline(None)

    @property
    def state(self):
        return ONLINE if self.online else OFFLINE

    def summary(self):
        """{"upstream", "held", "expired", "ttl", "reported"}: for the control op, the CLI and the web view."""
        return {"upstream": self.state, "held": len(self.held), "expired": self.expired, "ttl": self.ttl,
                "reported": sorted(self.reported)}

    def close(self):
        if self._held is not None:
            os.close(self._held)
            self._held = None

    # --- the outage ---------------------------------------------------------------------------

    def go_offline(self, registry_doc):
        """Take the scope cache and twin cache as they are now; False when already offline."""
        if not self.online:
            return False
        self.online = False
        self.scope = copy.deepcopy(registry_doc) if registry_doc is not None else None
        self.twins = copy.deepcopy(self.store.twins)
        return True

    def scope_for_auth(self, current_doc):
        """The registry document authentication uses: the cached scope while offline."""
        if self.online:
            return current_doc
        if self.scope is None:  # started offline: the scope cache is what was synced before the start
            self.scope = copy.deepcopy(current_doc)
        return self.scope

    # --- telemetry ----------------------------------------------------------------------------

    def add_telemetry(self, record):
        """Store a device's message: straight to IoT Hub when online, else held (on disk when this returns)."""
        if self.online and not self.held:
            return self.store.add_telemetry(record)
        self._hold(record)

    def write_telemetry(self, record):
        """The store's write_telemetry when online (its token: durable at Gateway.commit, before
        the PUBACK), else held, on disk when this returns (None)."""
        if self.online and not self.held:
            return self.store.write_telemetry(record)
        self._hold(record)
        return None

    async def add_telemetry_async(self, record):
        """add_telemetry for callers that use the store's group commit."""
        if self.online and not self.held:
            return await self.store.add_telemetry_async(record)
        self._hold(record)

    def _hold(self, record):
        entry = {"stored": time.time(), "record": record}
        line = json.dumps(entry, ensure_ascii=False).encode() + b"\n"
        end = os.lseek(self._held, 0, os.SEEK_END)
        try:
            n = os.write(self._held, line)
            if n != len(line):
                raise OSError(28, "short write")
            os.fdatasync(self._held)
        except OSError as e:
            os.ftruncate(self._held, end)
            raise StoreError(f"telemetry not stored in {self._held_path} ({e.strerror or e}); free some space, "
                             "then the device can send it again")
        self.held.append(entry)

    def expire(self, now=None):
        """Drop held messages older than the TTL (MessageStore's cleanup); return how many went."""
        now = time.time() if now is None else now
        keep = [e for e in self.held if now - e["stored"] < self.ttl]
        gone = len(self.held) - len(keep)
        if gone:
            self.held = keep
            self.expired += gone
            self._rewrite_held()
            self._save_state()
            self.say(f"upstream: {gone} held message(s) older than the {self.ttl:g} s time to live dropped "
                     f"({self.expired} expired so far)")
        return gone

    def forward(self):
        """The link is back: send what is held to IoT Hub, oldest first, and empty the store."""
        self.expire()
        sent = 0
        for entry in self.held:
            record = dict(entry["record"])
            record["held_since"] = record.get("time")  # received by the gateway then
            record["time"] = now_iso()  # received by IoT Hub now
            self.store.add_telemetry(record)
            sent += 1
        self.held = []
        self._rewrite_held()
        return sent

    def _rewrite_held(self):
        data = b"".join(json.dumps(e, ensure_ascii=False).encode() + b"\n" for e in self.held)
        write_atomic(self._held_path, data, private=True)
        os.close(self._held)
        self._held = os.open(self._held_path, os.O_RDWR | os.O_APPEND, 0o600)

    # --- twins --------------------------------------------------------------------------------

    def cached_twin(self, client_id):
        """The twin a GET is answered with while offline (edgeHub's twin store)."""
        if self.twins is None:
            self.twins = copy.deepcopy(self.store.twins)
        return self.twins.setdefault(client_id, new_twin())

    def hold_reported(self, client_id, patch):
        """A reported patch while offline: into the twin cache, and kept (merged) for IoT Hub."""
        merge_patch(self.cached_twin(client_id)["reported"], patch)
        merge_keep_nulls(self.reported.setdefault(client_id, {}), patch)
        self._save_state()

    def take_reported(self):
        """The merged reported patches to sync, per client; forgotten once taken."""
        out, self.reported = self.reported, {}
        self._save_state()
        return out

    def end_outage(self):
        """Back online: the twin cache as it was (to diff desired against); the caches are dropped."""
        twins, self.twins, self.scope = self.twins or {}, None, None
        self.online = True
        return twins

    def _save_state(self):
        write_atomic(os.path.join(self.data_dir, STATE),
                     json.dumps({"expired": self.expired, "reported": self.reported}).encode(), private=True)

