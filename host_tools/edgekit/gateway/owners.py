"""Which registration of an identity the gateway's kept state belongs to (DATA/owners.json).

IoT Hub deletes a device's twin, its queued cloud-to-device messages and its sessions with the
device; a device created again under the same id starts with none of them (and a new
`generationId`, which is how IoT Hub tells the two apart). The registry gives each identity a
random generation when it is added (`device add --force` keeps it, as an update does); this file
records the generations the gateway last saw, so state whose identity is gone, or was removed and
added again, is found and dropped, also when that happened while `serve` was stopped.
"""
import json
import os

from edgekit.certs.pem import write_atomic
from edgekit.gateway.store import read_json_object

OWNERS_JSON = "owners.json"


class Owners:
    """client id -> generation, as of the last registry the gateway reconciled its state with."""

    def __init__(self, data_dir):
        self.path = os.path.join(os.fspath(data_dir), OWNERS_JSON)
        self._seen = read_json_object(self.path)

    def stale(self, generations, held):
        """Client ids in `held` (those with kept state) whose owner is gone or was replaced.

        generations: the registry's {client id: generation} now. State kept from before this file
        existed belongs to whoever holds the id now, as long as the id is registered.
        """
        gone = [cid for cid in held
                if cid not in generations or (cid in self._seen and self._seen[cid] != generations[cid])]
        gone += [cid for cid, gen in self._seen.items()
                 if cid not in gone and cid in generations and gen != generations[cid]]
        if generations != self._seen:
            self._seen = dict(generations)
            write_atomic(self.path, json.dumps(self._seen, sort_keys=True).encode())
        return gone
