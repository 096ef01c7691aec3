"""The network rig the device benchmarks share: a demo PKI, TLS mosquitto, a paho hub,
and per-run device bundles. All of it comes from the tests' helpers (tests/device_helpers.py)."""
import json
from pathlib import Path

from bench import common  # noqa: F401  (puts tests/ on sys.path)
from device_helpers import HUB, Hub, Mosquitto, make_pki, write_bundle

from azure_edge import sas, topics  # noqa: E402  (bench.common puts firmware/ on the path)


class Rig:
    """mosquitto with TLS (and mutual TLS) on free ports, and a hub on it. Use as a context manager."""

    def __init__(self, workdir, pki=None):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pki, self.server = pki or make_pki(self.dir / "pki")
        self.broker = Mosquitto(self.dir / "mosquitto", self.pki, self.server)
        self.hub = None
        self._bundles = 0

    def __enter__(self):
        self.broker.start()
        try:
            self.hub = Hub(self.broker.port, self.pki.root_cert)
            self.hub.start()
        except BaseException:
            self.broker.stop()
            raise
        return self

    def __exit__(self, *exc):
        try:
            if self.hub:
                self.hub.stop()
        finally:
            self.broker.stop()

    def bundle(self, device, port=None, **config):
        """A fresh bundle folder for `device` (made by `edgekit bundle`'s own function)."""
        self._bundles += 1
        where = self.dir / "bundles" / str(self._bundles)
        return write_bundle(where, self.pki, port or self.broker.port, device=device, **config)

    def identity(self, device, bundle):
        """What a baseline client needs to log in as `device` with the bundle's CA."""
        cfg = json.loads((Path(bundle) / "config.json").read_text())
        key = cfg["connection_string"].split("SharedAccessKey=")[1].split(";")[0]
        token = sas.generate(sas.resource_uri(HUB, device), key, 2 ** 31 - 1)
        return {"host": "localhost", "port": self.broker.port, "client_id": device,
                "username": topics.username(HUB, device), "password": token,
                "ca": str(Path(bundle) / cfg["ca"]), "prefix": topics.telemetry(device)}

    def count(self, device):
        """Telemetry messages the hub has from `device`."""
        mark = "devices/%s/" % device
        with self.hub.lock:
            return sum(1 for t, _p, _b in self.hub.telemetry if t.startswith(mark))
