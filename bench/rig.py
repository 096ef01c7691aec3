"""The network rigs the device benchmarks share, each with per-run device bundles: a demo PKI,
TLS mosquitto and a paho hub (Rig); or `edgekit gateway serve` in its default profile, the
emulator of a real edgeHub (EmulatorRig). All of it comes from the tests' helpers
(tests/device_helpers.py, tests/gateway_helpers.py)."""
import json
import time
from pathlib import Path

from bench import common  # noqa: F401  (puts tests/ on sys.path)
from device_helpers import HUB, QUICK, Hub, Mosquitto, make_pki, write_bundle
from edgekit import bundle as bundles
from gateway_helpers import GatewayProcess

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
        return _identity(device, bundle, self.broker.port)

    def count(self, device):
        """Telemetry messages the hub has from `device`."""
        mark = "devices/%s/" % device
        with self.hub.lock:
            return sum(1 for t, _p, _b in self.hub.telemetry if t.startswith(mark))


def _identity(device, bundle, port):
    cfg = json.loads((Path(bundle) / "config.json").read_text())
    key = cfg["connection_string"].split("SharedAccessKey=")[1].split(";")[0]
    token = sas.generate(sas.resource_uri(HUB, device), key, 2 ** 31 - 1)
    return {"host": "localhost", "port": port, "client_id": device,
            "username": topics.username(HUB, device), "password": token,
            "ca": str(Path(bundle) / cfg["ca"]), "prefix": topics.telemetry(device)}


class EmulatorRig:
    """`edgekit gateway serve` as a subprocess, in its default profile (what a user runs), with
    every bench device registered in its registry. Use as a context manager.

    pki: a DemoPKI (serve issues its own server certificate from its edge CA, as IoT Edge does).
    """

    def __init__(self, workdir, pki=None):
        self.dir = Path(workdir)
        (self.dir / "gateway").mkdir(parents=True, exist_ok=True)  # serve.log goes there
        self.gw = GatewayProcess(self.dir / "gateway", devices=("dev-x509",), pki=pki)
        self.pki = self.gw.pki
        self._bundles = 0

    def __enter__(self):
        self.gw.start()
        return self

    def __exit__(self, *exc):
        self.gw.stop()

    @property
    def port(self):
        return self.gw.port

    def bundle(self, device, port=None, x509=False, **config):
        """Register `device` (SAS, or X.509 CA-signed) and write its bundle, as a user would.

        An X.509 device carries its full chain (leaf and intermediate), as certGen's devices do:
        the gateway's trust bundle holds the root only.
        """
        self._bundles += 1
        cs = self.gw.add_device(device, x509_ca=x509)
        extra = {}
        if x509:
            _cert, chain, key, _ss, _ssk = self.pki.device_paths(device)
            extra = {"cert": chain, "key": key}
        folder, _ = bundles.make_bundle(device, cs, self.pki.root_cert,
                                        out_dir=self.dir / "bundles" / str(self._bundles), **extra)
        cfg_path = Path(folder) / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.update({"port": port or self.port}, **QUICK)
        cfg.update(config)
        cfg_path.write_text(json.dumps(cfg))
        return Path(folder)

    def identity(self, device, bundle):
        """What a baseline client needs to log in as `device` with the bundle's CA."""
        return _identity(device, bundle, self.port)


class StoreArrivals:
    """Counts telemetry per device in the emulator's store (DATA/telemetry.jsonl, written before
    the PUBACK) and stamps when a count is reached (ns): the emulator's side of drain.Arrivals."""

    def __init__(self, data_dir):
        self.path = Path(data_dir) / "telemetry.jsonl"
        self.offset = 0
        self.partial = b""
        self.seen = {}

    def _read(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        self.offset += len(chunk)
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()
        now = time.time_ns()
        for line in lines:
            try:
                device = json.loads(line)["device"]
            except (ValueError, KeyError, TypeError):
                continue  # a torn or foreign line is not a reading
            count, _ = self.seen.get(device, (0, 0))
            self.seen[device] = (count + 1, now)

    def wait(self, device, count, timeout):
        """ns when the store first held `count` readings from device; BenchError on timeout."""
        def done():
            self._read()
            got, last = self.seen.get(device, (0, 0))
            return last if got >= count else None
        return common.wait_until(done, timeout, f"{count} readings from {device} in the gateway's store",
                                 poll=0.005)
