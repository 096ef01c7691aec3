# The device's boot: bundle, Wi-Fi, time, the outbox and the client, not yet connected.
# firmware/main.py (MicroPython) and firmware/code.py (CircuitPython) call run(); the
# public API (azure_edge.device.Device) boots through start() and then unloads this module.
import gc
import sys
import time

from azure_edge import log, run_and_unload, unload


def run(read_sensors=None, bundle_path=None):
    """Run the device forever, sending a reading every interval (the twin can change it).

    read_sensors() may return a dict merged into each reading. For methods, C2D, desired
    properties or your own messages, use azure_edge.device.Device (docs/firmware-api.md).
    """
    from azure_edge.reading import run
    run(read_sensors, bundle_path)


def start(bundle_path=None):
    """Boot: bundle, Wi-Fi, clock, TLS, outbox; return (client, port adapter, watchdog), not yet
    connected."""
    # Long-lived code first, boot-only code after it: freed, the latter leaves one hole that
    # MiniMQTT fills rather than many small ones between the code that stays.
    from azure_edge import port as ports
    ports.load()
    from azure_edge import startup  # boot-only code; unloaded below

    cfg, ident, ctx, port, dog, box = startup.prepare(bundle_path)
    # Start-up code is done (it unloaded the bundle parser itself): give its heap back before
    # MiniMQTT loads.
    startup = None
    unload("startup", "port")
    gc.collect()
    from azure_edge.client import Client
    gc.collect()
    try:
        client = Client(ident, ctx, port.socket_pool(), port=cfg["port"], sas_ttl=cfg["sas_ttl"],
                        sas_margin=cfg["sas_margin"], keepalive=cfg["keepalive"],
                        outbox=box, log=log, backoff_cap=cfg["backoff_cap"],
                        queue_qos0=cfg["queue_qos0"], model_id=cfg["model_id"],
                        set_aside_after=cfg["set_aside_after"])
    except ValueError as e:
        halt(str(e))
    client.interval = cfg["interval"]
    client.log_level = cfg["log_level"]
    client.status_every = cfg["status_every"]
    if cfg["set_aside_retry"] != client.aside_retry:
        client.aside_retry = cfg["set_aside_retry"]  # else it stays on the class (no dict slot)
    client.info = {"firmware": cfg["firmware"], "board": cfg["board"] or port.NAME,
                   "runtime": port.RUNTIME, "rssi": port.rssi(), "idf_heap": port.idf_heap}
    if cfg["adu"]:
        client.du = cfg["adu"]
        from azure_edge.mqtt import ADU_INBOUND
        client.mqtt.max_in = ADU_INBOUND  # the whole twin with a deployment in it
        run_and_unload("adu_boot", "boot", client)
    log("gateway %s:%d, hub %s" % (client.cs.connect_host, cfg["port"], ident.host_name))
    gc.collect()
    return client, port, dog


def halt(msg):
    """Log why the device cannot start, forever (exit on a PC): nothing to do without a bundle."""
    # Say so every 30 s rather than die silently.
    while True:
        log("cannot start: " + msg)
        if sys.implementation.name == "cpython":
            sys.exit(2)  # on a PC, a clear exit beats a silent wait
        time.sleep(30)
