# Boot-only steps: read the bundle, join Wi-Fi, set the clock, build the TLS context, open the
# outbox. The bundle parser goes as soon as it has parsed; app.start() unloads this module
# before MiniMQTT loads.
import gc
import time

from azure_edge import VERSION, clock, log, port as ports, run_and_unload, unload
from azure_edge.app import halt

WATCHDOG_MS = 120000  # a stuck loop resets the chip; long enough for a slow TLS handshake


class Identity:
    """The connection string's parts the client needs; the parser itself is unloaded."""


def prepare(bundle_path=None):
    """Return (config, identity, TLS context, port adapter, watchdog, outbox); halts on a bad
    bundle."""
    from azure_edge import bundle

    port = ports.load()
    log("edgekit %s, %s on %s" % (VERSION, port.RUNTIME, port.NAME))
    try:
        bundle_path = bundle.find(bundle_path)
        cfg, cs = bundle.load(bundle_path, port.RUNTIME)
        cfg["bundle_path"] = bundle_path
    except bundle.BundleError as e:
        halt(str(e))
    ident = Identity()
    for k in ("host_name", "device_id", "module_id", "shared_access_key",
              "shared_access_key_name", "gateway_host_name", "connect_host", "x509"):
        setattr(ident, k, getattr(cs, k))
    # Parsed: the bundle reader and the connection string parser are done (their code is most
    # of the boot's), so they go before the TLS context and the outbox take their share.
    bundle = cs = None
    unload("bundle", "connstr")
    gc.collect()
    cfg["firmware"] = build_id()
    port.status("booting", cfg["led_pin"])
    dog = port.watchdog(WATCHDOG_MS)
    _join_wifi(port, cfg, dog)
    _set_clock(port, cfg, dog, need=not ident.x509)
    if cfg["adu"]:
        # The update agent (docs/updates.md): its settings, the roots it added, expiry dates.
        cfg["adu"] = run_and_unload("adu_boot", "setup", cfg)
    ctx = port.tls_context(cfg["ca"], cfg["cert"], cfg["key"])
    cfg["ca"] = cfg["cert"] = cfg["key"] = None
    # The outbox opens here, its recovery code coming and going while the heap still has room:
    # by the time the client's code loads, only the store's own code and state remain.
    return cfg, ident, ctx, port, dog, _outbox(cfg, ident)


def _outbox(cfg, ident):
    # State lives outside the bundle (azure_edge/state.py), so a deploy can never overwrite it.
    from azure_edge import state
    path = cfg.get("outbox_path")
    if not path:
        path = state.outbox_path(cfg["bundle_path"], ident.device_id, ident.module_id)
        state.migrate(cfg["bundle_path"] + "/outbox", path, log)
    state.prepare(path)
    files = state._exists(path)  # a file outbox, or one an earlier firmware left
    state = None
    unload("state")
    # MicroPython on ESP32 with a data partition labelled "outbox" (edgekit flash adds it): a
    # log on it erases flash about 30 times less than files on LittleFS (docs/outbox.md).
    # CPython, CircuitPython and boards flashed without it keep the file outbox. Inline, with
    # few new names: each is interned for good, even once this module is unloaded.
    try:
        import esp32
        found = [p for p in esp32.Partition.find(1, label="outbox") if p.ioctl(4, 0) > 1]  # 1: data
    except ImportError:
        found = None
    try:
        if found:
            from azure_edge import partlog
            box = partlog.PartLog(found[0], path)
            if files:
                # Readings queued in files before the partition came: into the log, then the
                # files go (partlog_recover.adopt, loaded only then).
                run_and_unload("partlog_recover", "adopt", box, cfg["outbox_bytes"], log)
            log("outbox on partition (%d KiB): %d queued" % (found[0].info()[3] >> 10, len(box)))
            if cfg["outbox_bytes"] > box.max_bytes:
                # The partition is the log's budget (docs/outbox.md): a larger one cannot be met.
                log("outbox_bytes %d is more than the outbox partition holds (%d bytes): the oldest"
                    " readings go beyond that" % (cfg["outbox_bytes"], box.max_bytes))
        else:
            from azure_edge.outbox import Outbox
            box = Outbox(path, max_bytes=cfg["outbox_bytes"])
        _restore(box)
        return box
    except ImportError:
        pass
    except OSError as e:
        # e.g. CIRCUITPY is read-only to code.py unless boot.py remounts it for writing.
        log("outbox %s not writable (%s): queuing in RAM, lost on reset" % (path, e))
    from azure_edge.memqueue import MemoryQueue
    return MemoryQueue(cfg["outbox_bytes"])


def _restore(box):
    # Readings set aside (azure_edge/aside.py) are tried again at every boot: back to the tail.
    import os
    try:
        os.stat(box.path + ".aside")
    except OSError:
        return  # none ever set aside
    from azure_edge import aside
    n = aside.restore(box)
    unload("aside")
    if n:
        log("%d reading(s) held aside moved back to the outbox, to try them again" % n)


def build_id():
    """VERSION plus the content hash `edgekit deploy` wrote to azure_edge/build.py ("src" when
    run from a checkout), so the reported `firmware` property names the exact build."""
    try:
        from azure_edge.build import BUILD
    except ImportError:
        BUILD = "src"
    unload("build")
    return VERSION + "+" + BUILD


def _join_wifi(port, cfg, dog):
    delay = 1
    while not port.connect_wifi(cfg["wifi_ssid"], cfg["wifi_password"]):
        log("Wi-Fi '%s' not joined; retrying in %d s" % (cfg["wifi_ssid"], delay))
        _sleep(delay, dog)
        delay = min(delay * 2, 60)
    rssi = port.rssi()
    log("network up" + (" (RSSI %d dBm)" % rssi if rssi is not None else ""))


def _set_clock(port, cfg, dog, need):
    delay = 1
    while True:
        if clock.is_set() or port.sync_time(cfg["ntp_host"]) and clock.is_set():
            return
        if not need:
            log("clock not set; X.509 still works, but certificate dates cannot be checked")
            return
        log("clock not set (NTP %s unreachable): SAS tokens would be refused; retrying in %d s"
            % (cfg["ntp_host"], delay))
        _sleep(delay, dog)
        delay = min(delay * 2, 60)


def _sleep(seconds, dog):
    end = time.time() + seconds
    while time.time() < end:
        dog.feed()
        time.sleep(0.5)
