"""Persistent MQTT sessions: the subscriptions of each identity that connected with CleanSession=0.

edgeHub keeps them in its store (SessionStatePersistenceProvider), so a device SDK that
reconnects with CleanSession=0 does not subscribe again. Here they live in DATA/sessions.json,
so they survive `serve` restarts too. Queued C2D messages are kept by the store, not here.
"""
import json
import os

from edgekit.certs.pem import write_atomic

SESSIONS_JSON = "sessions.json"


class Sessions:
    """client id -> {topic filter: granted QoS}, written through on every change."""

    def __init__(self, data_dir):
        self.path = os.path.join(os.fspath(data_dir), SESSIONS_JSON)
        try:
            with open(self.path) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            doc = {}  # none yet, or unreadable: every device starts with a fresh session
        self._doc = {k: dict(v) for k, v in doc.items() if isinstance(v, dict)} if isinstance(doc, dict) else {}

    def get(self, client_id):
        """The stored subscriptions of client_id, or None when it has no persistent session."""
        subs = self._doc.get(client_id)
        return dict(subs) if subs is not None else None

    def save(self, client_id, subscriptions):
        """Store (create or replace) client_id's session."""
        self._doc[client_id] = dict(subscriptions)
        self._write()

    def delete(self, client_id):
        """Forget client_id's session (CleanSession=1, as MqttAdapter.EstablishSessionStateAsync does)."""
        if self._doc.pop(client_id, None) is not None:
            self._write()

    def _write(self):
        write_atomic(self.path, json.dumps(self._doc, sort_keys=True).encode())
