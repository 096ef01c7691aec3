"""Persistent MQTT sessions: which of edgeHub's subscription kinds each CleanSession=0 identity has on.

edgeHub keeps a device's session in its store (`Hub.Mqtt/SessionStateStoragePersistenceProvider.cs`
`SetAsync` -> `PersistToStore`, one record per identity), so a device SDK that reconnects with
CleanSession=0 does not subscribe again. What a session *does* is decided by the kind of each
filter (`Hub.Mqtt/SessionStateParser.cs` `GetDeviceSubscription`: methods, desired properties, C2D,
twin responses, module messages; anything else is ignored): edgeHub turns those kinds on for the
identity (`IDeviceListener.AddSubscription(DeviceSubscription)`), nothing per filter.

So a session here is at most one filter per kind (5 in all), not every filter a device ever sent:
three SUBSCRIBEs of 1,000 `$iothub/methods/POST/...` filters are one "methods" entry. Per kind the
filter the SDKs use is kept when the device sent it (it covers every narrower one), else the
latest. DATA/sessions.json is written once per SUBSCRIBE or UNSUBSCRIBE that changes something,
and it survives `serve` restarts. Queued C2D messages are kept by the store, not here.
"""
import json
import os
import re

from edgekit.certs.pem import write_atomic
from edgekit.gateway import topics
from edgekit.gateway.store import read_json_object

SESSIONS_JSON = "sessions.json"
_MODULE_MESSAGES = re.compile("^devices/.+/modules/.+/#$")
KINDS = ("methods", "desired", "c2d", "twin-response", "module-messages")


def classify(topic_filter):
    """What SessionStateParser.GetDeviceSubscription makes of a filter, or None (ignored).

    Only the kind matters to edgeHub; delivery still matches the filter itself, so a filter
    naming another device (classified C2D) never matches this device's own messages.
    """
    if topic_filter.startswith("$iothub/methods/POST/"):
        return "methods"
    if topic_filter.startswith("$iothub/twin/PATCH/properties/desired/"):
        return "desired"
    if topic_filter.endswith("messages/devicebound/#"):
        return "c2d"
    if topic_filter == "$iothub/twin/res/#":
        return "twin-response"
    if _MODULE_MESSAGES.match(topic_filter):
        return "module-messages"
    return None


def _usual(client_id, kind):
    # The filter the Azure SDKs and our firmware subscribe to for each kind.
    device_id = client_id.split("/", 1)[0]
    return {"methods": topics.METHODS_FILTER, "desired": topics.DESIRED_FILTER,
            "c2d": topics.c2d_filter(device_id), "twin-response": topics.TWIN_RES_FILTER}.get(kind)


def fold(client_id, subscriptions, grants):
    """subscriptions ({filter: QoS}, at most one per kind) after granting [(filter, QoS), ...].

    Unknown filters are left out. A kind's usual filter, once granted, stays until it is
    unsubscribed; any other filter of the kind replaces the previous one.
    """
    by_kind = {classify(f): (f, q) for f, q in subscriptions.items()}
    for topic_filter, qos in grants:
        kind = classify(topic_filter)
        if kind is None:
            continue
        held = by_kind.get(kind)
        usual = _usual(client_id, kind)
        if held is None or held[0] == topic_filter or held[0] != usual:
            by_kind[kind] = (topic_filter, qos)
    return {f: q for f, q in by_kind.values()}


class Sessions:
    """client id -> {topic filter: granted QoS} (one filter per kind), written through on change."""

    def __init__(self, data_dir):
        self.path = os.path.join(os.fspath(data_dir), SESSIONS_JSON)
        doc = read_json_object(self.path)  # none yet, or unreadable: every device starts afresh
        self._doc = {}
        self.writes = 0
        for client_id, kept in doc.items():
            if not isinstance(kept, dict):
                continue
            # Both this file's form ({kind: [filter, qos]}) and the older one ({filter: qos}).
            grants = [tuple(v) for k, v in kept.items() if k in KINDS and isinstance(v, list) and len(v) == 2]
            grants += [(k, v) for k, v in kept.items() if k not in KINDS and isinstance(v, int)]
            self._doc[client_id] = fold(client_id, {}, grants)

    def get(self, client_id):
        """The stored subscriptions of client_id, or None when it has no persistent session."""
        subs = self._doc.get(client_id)
        return dict(subs) if subs is not None else None

    def clients(self):
        """Client ids that have a stored session."""
        return list(self._doc)

    def save(self, client_id, subscriptions):
        """Store (create or replace) client_id's session; the file is written only when it changes."""
        subscriptions = dict(subscriptions)
        if self._doc.get(client_id) == subscriptions:
            return
        self._doc[client_id] = subscriptions
        self._write()

    def delete(self, client_id):
        """Forget client_id's session (CleanSession=1, as MqttAdapter.EstablishSessionStateAsync does)."""
        if self._doc.pop(client_id, None) is not None:
            self._write()

    def _write(self):
        doc = {cid: {classify(f): [f, q] for f, q in subs.items()} for cid, subs in self._doc.items()}
        write_atomic(self.path, json.dumps(doc, sort_keys=True).encode())
        self.writes += 1
