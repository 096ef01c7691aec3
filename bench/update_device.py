"""The smallest heap a deployment completes in on the whole device: firmware/main.py on the
real unix MicroPython (the board's /lib as deploy builds it), TLS mosquitto and a paho hub
(bench/rig.py), the files from a Connected Cache stand-in (bench/update.py's).

`first`: the factory application gets a deployment of v2 in its twin at connect. `second`: the
device already runs v2 from slot a (installed by a first deployment at a roomy heap) and gets
v3. Either completes when the hub has the agent's lastInstallResult 700 for the workflow: the
process is started again each time it exits, as a board resets (the install asks for a reset,
the lean boot after it too). A run that reports the deployment failed, or does not complete in
its time, does not fit. The figure is the -X heapsize bisected to 4 KiB, beside the device's
own: the same bundle with no deployment, sending readings for 20 s (base), and without the
agent (off), and running the update with its deployment still in the twin (after: ADU leaves it there);
apply: the deployment's own boot alone (azure_edge/adu_apply.py, from the flash a take left).

    python -m bench.update_device [first|second|base|off|after|apply|all] [heap_k]   (prints JSON)
"""
import json
import shutil
import sys
import time
from pathlib import Path

from bench import common  # noqa: F401  (puts tests/ on sys.path)
from bench.update import _Cache, _desired, _imported, _signer
from device_helpers import Device, build_board, readings_of

KIB = 1024
TIMEOUT_S = 60


class Lab:
    def __init__(self, workdir):
        from bench.rig import Rig
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data, self.roots = _signer(self.dir)
        self.board = build_board(self.dir / "board")
        self.cache = _Cache(self.data)
        self.rig = Rig(self.dir / "rig")
        self.runs = 0

    def __enter__(self):
        self.cache.start()
        self.rig.__enter__()
        return self

    def __exit__(self, *exc):
        self.rig.__exit__(*exc)
        self.cache.stop()

    def bundle(self, agent=True):
        adu = {"manufacturer": "contoso", "model": "sensor", "cache": "127.0.0.1:%d" % self.cache.port}
        b = self.rig.bundle("adu-heap", **(dict(adu=adu) if agent else {}), interval=5)
        shutil.copy(self.roots / "adu_roots.json", b / "adu_roots.json")
        return b

    def service(self, wid, version):
        main = (common.FIRMWARE_DIR / "main.py").read_text().replace(
            "app.run(read_sensors)", "print('[app] %s running')\napp.run(read_sensors)" % version)
        import io
        import tarfile
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
            info = tarfile.TarInfo("main.py")
            info.size = len(main.encode())
            t.addfile(info, io.BytesIO(main.encode()))
        tar = buf.getvalue()
        # imported into the gateway's data as `edgekit gateway update import` does; its cache serves it
        record = _imported(self.dir, self.data, tar, version)
        d = _desired(self.data, wid, record, self.cache.port)
        return d["deviceUpdate"]

    def deploy(self, bundle, wid, version, heap_k, timeout=TIMEOUT_S):
        """Run the device with deployment `wid` in its twin until the hub has its result; True
        when it was installed (700), False when reported failed or out of time."""
        hub = self.rig.hub
        with hub.lock:
            hub.desired = {"deviceUpdate": self.service(wid, version), "$version": self.runs + 2}
            hub.reported.clear()
        end = time.monotonic() + timeout
        boots = 0
        result = None
        dev = None
        try:
            while time.monotonic() < end and result is None:
                if dev is None or not dev.alive():
                    if dev is not None:
                        dev.stop()
                    boots += 1
                    self.runs += 1
                    dev = Device("micropython", bundle, self.board, heap="%dK" % heap_k,
                                 logfile=self.dir / ("console-%d.log" % self.runs))
                time.sleep(0.2)
                with hub.lock:
                    for r in hub.reported:
                        a = r.get("deviceUpdate", {}).get("agent", {})
                        if a.get("workflow", {}).get("id") != wid:
                            continue
                        code = a.get("lastInstallResult", {}).get("resultCode")
                        if a.get("state") == 255:
                            result = False
                        elif code == 700 and a.get("state") == 0:
                            result = True
                if result is None and (boots > 6 or dev.console().count("MemoryError") >= 5):
                    result = False  # a reset loop, or a device that keeps running out of heap
        finally:
            if dev is not None:
                dev.stop()
        return bool(result)

    def applies(self, bundle, heap_k):
        """The deployment's own boot alone (azure_edge/adu_apply.py): from the flash a take at a
        roomy heap left (saved once, restored for each try), does it install and switch?"""
        import json
        from azure_edge.state import data_dir
        data = Path(data_dir(str(bundle)))
        saved = self.dir / "taken"
        if not saved.exists():
            with self.rig.hub.lock:
                self.rig.hub.desired = {"deviceUpdate": self.service("wf-apply", "2.0"), "$version": 2}
            self.runs += 1
            dev = Device("micropython", bundle, self.board, heap="256K",
                         logfile=self.dir / ("console-%d.log" % self.runs))
            try:
                end = time.monotonic() + TIMEOUT_S
                while dev.alive() and time.monotonic() < end:
                    time.sleep(0.2)
            finally:
                dev.stop()
            if not (data / "job.json").exists():
                raise RuntimeError("no deployment taken at 256K")
            shutil.copytree(data, saved)
        shutil.rmtree(data)
        shutil.copytree(saved, data)
        self.runs += 1
        dev = Device("micropython", bundle, self.board, heap="%dK" % heap_k,
                     logfile=self.dir / ("console-%d.log" % self.runs))
        try:
            end = time.monotonic() + TIMEOUT_S
            while dev.alive() and time.monotonic() < end:
                time.sleep(0.2)
        finally:
            dev.stop()
        try:
            boot = json.loads((data / "boot.json").read_text())
        except (OSError, ValueError):
            return False
        return boot.get("try") == "a" and not (data / "job.json").exists()

    def idle(self, bundle, heap_k, seconds=20, keep=False):
        """The device with no deployment (keep: with the one it took last still in its twin, as
        ADU leaves it): connected and sending readings for `seconds`."""
        hub = self.rig.hub
        if not keep:
            with hub.lock:
                hub.desired = {"$version": self.runs + 2}
        self.runs += 1
        dev = Device("micropython", bundle, self.board, heap="%dK" % heap_k,
                     logfile=self.dir / ("console-%d.log" % self.runs))
        try:
            n0 = len(readings_of(hub, "adu-heap"))
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                if not dev.alive() or "MemoryError" in dev.console():
                    return False
                time.sleep(0.5)
            return dev.alive() and len(readings_of(hub, "adu-heap")) >= n0 + 2
        finally:
            dev.stop()


def _bisect(fits, lo, hi, step=4):
    if not fits(hi):
        return None
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def minimum(lab, which, lo=64, hi=160, log=print):
    """Smallest -X heapsize (KiB) for `which`: first, second, base (the agent on, no
    deployment), off (the same device without the agent) or after (the device running the
    update a first deployment installed, that deployment still in its twin as ADU leaves it), or
    apply (the deployment's own boot alone, from what the take left)."""
    n = [0]
    if which == "apply":
        lab.apply_bundle = lab.bundle()

    def fits(k):
        n[0] += 1
        b = lab.apply_bundle if which == "apply" else lab.bundle(which != "off")
        if which == "apply":
            ok = lab.applies(b, k)
        elif which in ("base", "off"):
            ok = lab.idle(b, k)
        elif which == "after":
            if not lab.deploy(b, "wf-h%da" % n[0], "2.0", 256):
                raise RuntimeError("the deployment failed at 256K")
            ok = lab.idle(b, k, keep=True)
        elif which == "first":
            ok = lab.deploy(b, "wf-h%d" % n[0], "2.0", k)
        else:
            if not lab.deploy(b, "wf-h%da" % n[0], "2.0", 256):
                raise RuntimeError("the first deployment failed at 256K")
            ok = lab.deploy(b, "wf-h%db" % n[0], "3.0", k)
        log("update_device: %s at %dK: %s" % (which, k, "fits" if ok else "no"))
        return ok
    return _bisect(fits, lo, hi)


if __name__ == "__main__":
    import tempfile
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    with tempfile.TemporaryDirectory() as tmp, Lab(tmp) as lab:
        if len(sys.argv) > 2:
            k = int(sys.argv[2])
            b = lab.bundle()
            if which == "first":
                print(lab.deploy(b, "wf-1", "2.0", k))
            elif which == "second":
                print(lab.deploy(b, "wf-1", "2.0", 256), lab.deploy(b, "wf-2", "3.0", k))
            else:
                print(lab.idle(b, k))
            for i in range(1, lab.runs + 1):
                text = (Path(tmp) / ("console-%d.log" % i)).read_text(errors="replace")
                print("--- boot %d\n%s" % (i, "\n".join(line for line in text.splitlines()
                                                      if "queued" not in line and "sent " not in line)[-1500:]))
        else:
            out = {w: minimum(lab, w) for w in (("off", "base", "after", "apply", "first", "second") if which == "all" else (which,))}
            print(json.dumps(out))
