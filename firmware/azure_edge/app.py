# The device's whole life: boot, Wi-Fi, time, connect, then the telemetry loop.
# firmware/main.py (MicroPython) and firmware/code.py (CircuitPython) call run().
import gc
import sys
import time

from azure_edge import VERSION, unload


def log(msg):
    print("[edgekit] " + msg)


def run(read_sensors=None, bundle_path=None):
    """Run the device forever. read_sensors() may return a dict merged into each reading."""
    client, port, dog = start(bundle_path)
    linked = None
    seq = 0
    due = time.time()
    begin = time.time()
    while True:
        client.step(0.2)
        dog.feed()
        if client.connected is not linked:
            linked = client.connected
            port.status("connected" if linked else "offline")
        if client.reboot_requested:
            client.step(0.2)  # let the method answer go out first
            log("rebooting on request")
            port.reset()
        if time.time() >= due:
            due = time.time() + client.interval
            seq += 1
            reading = {"seq": seq, "uptime": int(time.time() - begin),
                       "free_heap": port.free_heap(), "rssi": port.rssi(),
                       "temperature": port.cpu_temperature()}
            if read_sensors:
                try:
                    reading.update(read_sensors() or {})
                except Exception as e:
                    log("read_sensors failed: %r" % e)
            try:
                client.send_telemetry(reading)
            except ValueError as e:
                log("reading not sent: %s" % e)


def start(bundle_path=None):
    """Boot: bundle, Wi-Fi, clock, TLS; return (client, port adapter, watchdog), not yet connected."""
    # Long-lived code first, boot-only code after it: freed, the latter leaves one hole that
    # MiniMQTT fills rather than many small ones between the code that stays.
    from azure_edge import port as ports
    ports.load()
    from azure_edge import startup  # boot-only code; unloaded below

    cfg, ident, ctx, port, dog = startup.prepare(bundle_path)
    # Start-up code is done: give its heap back before MiniMQTT loads (13 KB on MicroPython).
    startup = None
    unload("startup", "bundle", "connstr", "port")
    gc.collect()
    from azure_edge.client import Client
    gc.collect()
    try:
        client = Client(ident, ctx, port.socket_pool(), port=cfg["port"], sas_ttl=cfg["sas_ttl"],
                        sas_margin=cfg["sas_margin"], keepalive=cfg["keepalive"],
                        outbox=_outbox(cfg), log=log, backoff_cap=cfg["backoff_cap"],
                        queue_qos0=cfg["queue_qos0"], set_aside_after=cfg["set_aside_after"])
    except ValueError as e:
        halt(str(e))
    client.on_c2d = _print_c2d
    client.interval = cfg["interval"]
    client.info = {"firmware": VERSION, "board": cfg["board"] or port.NAME,
                   "runtime": port.RUNTIME, "rssi": port.rssi()}
    log("gateway %s:%d, hub %s" % (client.cs.connect_host, cfg["port"], ident.host_name))
    gc.collect()
    return client, port, dog


def _print_c2d(body, props):
    log("C2D message, %d bytes, properties %s" % (len(body), props))


def _outbox(cfg):
    path = cfg.get("outbox_path") or cfg["bundle_path"] + "/outbox"
    try:
        from azure_edge.outbox import Outbox
        return Outbox(path, max_bytes=cfg["outbox_bytes"])
    except ImportError:
        pass
    except OSError as e:
        # e.g. CIRCUITPY is read-only to code.py unless boot.py remounts it for writing.
        log("outbox %s not writable (%s): queuing in RAM, lost on reset" % (path, e))
    from azure_edge.memqueue import MemoryQueue
    return MemoryQueue(cfg["outbox_bytes"])


def halt(msg):
    """Log why the device cannot start, forever (exit on a PC): nothing to do without a bundle."""
    # Say so every 30 s rather than die silently.
    while True:
        log("cannot start: " + msg)
        if sys.implementation.name == "cpython":
            sys.exit(2)  # on a PC, a clear exit beats a silent wait
        time.sleep(30)
