# The lean boot of a deployment (docs/updates.md, "Heap"). The agent (azure_edge/adu.py) takes a
# deployment while connected only as far as writing it to flash (DATA/job.json) and asking for
# a reset; start.boot() finds the job before the application, its MQTT client or its outbox
# load, and runs it here: the signature checked, the files downloaded (network up, no MQTT),
# the application installed into its slot and switched to, or the failure recorded. The
# device then resets into its normal boot, where the agent reports the result at connect.
#
# Every step is recorded in DATA/adu.json before it is taken, so a power cut anywhere leads
# back here at the next boot, and on from where it was (the download resumes with Range).
import json
import os

from azure_edge import log, unload

JOB = "/job.json"
PENDING = ("job", "download", "install", "trial")


def read(d, name=JOB):
    # Written by the agent (adu.save); .new: cut between remove and rename (FAT).
    for p in (d + name, d + name + ".new"):
        try:
            with open(p) as f:
                job = json.load(f)
            if isinstance(job, dict):
                return job
        except (OSError, ValueError):
            pass
    return None


def drop(d):
    for p in (d + JOB, d + JOB + ".new"):
        try:
            os.remove(p)
        except OSError:
            pass


class _Lean:
    """The client a Job (azure_edge/adu_job.py) runs with here: no link, so no reports (the
    agent reports the recorded result at the next connect)."""
    adu = None
    reboot_requested = False
    connected = False

    def __init__(self, du, host):
        self.du = du
        self.cs = self
        self.connect_host = host

    def report(self, props):
        pass


def run(d):
    """Apply the deployment DATA/job.json holds, if the agent's record says it is under way.
    The Job's client (reboot_requested: switched to a trial), or None when there was nothing to
    do (a job already ended, or a stale one) or no network (tried again after the next connect)."""
    job = read(d)
    st = read(d, "/adu.json") or {}  # (adu.load, without the agent's code for it)
    phase = st.get("phase")
    if job is None or st.get("wf") != job.get("wf") or phase not in PENDING:
        drop(d)  # ended before the cut that kept it, or replaced before it was recorded
        return None
    if phase == "trial":  # cut between the record and the switch, or after the switch
        from azure_edge.trial import read as boot_json
        b = boot_json(d)
        unload("trial")
        if b.get("try") or b.get("why"):
            drop(d)
            return None
        st["phase"] = "install"  # not switched: install and switch again (the files are kept)
    c = _Lean(job["du"], job.get("gw"))
    job = job["svc"]
    try:
        if not _network(c.du.get("b")):
            return None
        _apply(c, st, job)
    except MemoryError:
        job = st = c.adu = None
        _failed(c, d, 0x7E000305, "not enough heap for the deployment")  # adu.E_HEAP
    except Exception as e:  # noqa: BLE001 (the device must boot on: the deployment fails)
        job = st = c.adu = None
        _failed(c, d, 0x7E000304, "%s: %s" % (type(e).__name__, e))  # adu.E_INSTALL
    unload("adu", "adu_job", "adu_fetch", "adu_hash", "slots", "trust")
    drop(d)
    return c


def _apply(c, st, svc):
    from azure_edge import run_and_unload
    d = c.du["d"]
    resume = st["phase"] != "job"
    # A new deployment's one file is asked for before the manifest's signature check, which runs
    # while the request crosses the link; only the Job reads the answer, after the check. Not for
    # a firmware image (adu_ota may refuse it before any byte is asked for): a glance at the
    # unchecked text only skips this.
    early = None
    if not resume and "edgekit/firmware:1" not in str(svc.get("updateManifest")):  # adu.FIRMWARE
        early = run_and_unload("adu_fetch", "early", svc, c)
    try:
        try:
            m = run_and_unload("adu_verify", "deployment", svc, c.du)
        except (KeyError, TypeError, AttributeError):
            m = (0, 0x7E000303, "malformed update manifest")  # adu.FAILURE, adu.E_FILES
        from azure_edge import adu_job
        adu_job.start(c, st, svc, m, st["wf"], resume, early)
    finally:
        if early and getattr(c.adu, "early", None) is not early:
            early[1].close()  # refused: the request is dropped unread
    svc = m = early = None
    while c.adu is not None and not c.reboot_requested:
        c.adu.step(c)


def _failed(c, d, ext, msg):
    import gc
    unload("adu_verify", "adu_roots", "adu_job", "adu_fetch", "adu_hash", "slots", "trust", "bundle")
    gc.collect()
    from azure_edge.adu import FAILURE, _fail, load
    _fail(c, load(d), FAILURE, ext, msg)


def _network(b):
    # The network as the normal boot joins it (azure_edge/startup.py), with the Wi-Fi settings of
    # the bundle in folder `b` read for this only (CircuitPython falls back on settings.toml's, as
    # port_circuitpython.connect_wifi does, where its supervisor may have joined already). Not
    # joined in a few tries: the application boots (it runs offline), and the agent asks for this
    # boot again once connected.
    import sys
    if sys.implementation.name == "micropython" and "adafruit_ticks" not in sys.modules:
        import time  # MicroPython's ticks are adafruit_ticks' (as net.install sets them)
        sys.modules["adafruit_ticks"] = time
    if sys.platform != "esp32" and sys.implementation.name != "circuitpython":
        return True  # the host's network is up (the simulated board's too), as port.load says
    from azure_edge import bundle, port as ports
    port = ports.load()
    ssid = pw = None
    try:
        cfg = bundle.load(b or bundle.find(None), port.RUNTIME)[0]
        ssid, pw = cfg["wifi_ssid"], cfg["wifi_password"]
    except (bundle.BundleError, OSError, ValueError):
        if port.RUNTIME != "circuitpython":
            return False
    cfg = bundle = None
    unload("bundle", "connstr")
    try:
        for _ in range(5):
            if port.connect_wifi(ssid, pw):
                log("network up")
                return True
        log("update: Wi-Fi '%s' not joined; the deployment waits for the next connect" % ssid)
        return False
    finally:
        port = None
        unload("port", "port_esp32", "port_circuitpython")  # (the link stays up without them)
