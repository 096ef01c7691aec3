"""Backlog drain: queued readings delivered after a reconnect, under MicroPython, TLS, QoS 1.

Twice: against mosquitto (the hub, paho, subscribes to it directly), and against `edgekit
gateway serve` in its default profile, the emulator of a real edgeHub (the hub is its store).
The device reaches either through edgekit.faultproxy.FaultProxy adding 5 ms each way (10 ms
RTT, as Wi-Fi has). The clock runs from the start of the connect to the hub holding the last
reading. Baselines through the same proxy, same readings and topics: paho-mqtt on CPython with
pipelined QoS 1 (the ceiling), the bare MicroPython publisher stop-and-wait (one PUBACK awaited
per reading), and the same bare publisher pipelined (what MicroPython itself can do). Every
pipelined client keeps the firmware's window, 128 publishes, in flight.
"""
import json
import subprocess
import threading
import time

import paho.mqtt.client as paho
from edgekit.faultproxy import FaultProxy

from bench.common import BenchError, board_lib, last_record, launch, micropython, mp_env, ratio, wait_until
from bench.rig import EmulatorRig, Rig, StoreArrivals

ONE_WAY_DELAY = 0.005
HEAP = "192K"  # speed, not memory, is measured here
WINDOW = 128  # firmware/azure_edge/client.py _WINDOW: publishes awaiting their PUBACK at once
# edgeHub stops reading a client's socket while this many of its publishes await processing
# (MaxPendingInboundAcknowledgements in the protocol gateway's MqttAdapter settings).
EMULATOR_GOAL = 0.8  # the drain through `gateway serve`, as a share of mosquitto's
EDGEHUB_PENDING = 100  # MaxPendingMessages of edgeHub's MessagingServiceClient (MqttAdapter.IsReadAllowed)


class Arrivals:
    """Counts telemetry per device at the hub and stamps the last arrival (ns)."""

    def __init__(self, hub):
        self.lock = threading.Lock()
        self.seen = {}
        inner = hub.client.on_message

        def on_message(c, u, m):
            if "/messages/events/" in m.topic:
                device = m.topic.split("/")[1]
                with self.lock:
                    count, _ = self.seen.get(device, (0, 0))
                    self.seen[device] = (count + 1, time.time_ns())
            inner(c, u, m)
        hub.client.on_message = on_message

    def wait(self, device, count, timeout):
        """ns of the `count`-th arrival from device; BenchError on timeout."""
        def done():
            with self.lock:
                got, last = self.seen.get(device, (0, 0))
            return last if got >= count else None
        return wait_until(done, timeout, f"{count} readings from {device} at the hub", poll=0.005)


def _device_run(board, module, cfg):
    return subprocess.Popen([micropython(), "-X", "heapsize=" + HEAP, "-c", launch(module)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=mp_env(board, **cfg))


def _finish(proc, what, timeout):
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise BenchError(f"drain: {what} did not finish in {timeout} s: {out[-400:]}")
    rec = last_record(out, "done")
    if proc.returncode or rec is None:
        raise BenchError(f"drain: {what} failed: {out[-600:]}")
    return rec


def _paho(identity, port, readings):
    """paho-mqtt on CPython, QoS 1 with the firmware's window in flight; returns start ns."""
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=identity["client_id"])
    c.username_pw_set(identity["username"], identity["password"])
    c.tls_set(ca_certs=identity["ca_pem"])
    # paho's default of 20 in flight would cap the baseline below the firmware it is compared with.
    c.max_inflight_messages_set(WINDOW)
    c.max_queued_messages_set(0)
    start = time.time_ns()
    c.connect("localhost", port)
    c.loop_start()
    infos = []
    for n in range(1, readings + 1):
        bag = "%24.mid=bench-" + str(n) + "&%24.ct=application%2Fjson&%24.ce=utf-8"
        infos.append(c.publish(identity["prefix"] + bag, json.dumps({"seq": n, "t": 21.5}), qos=1))
    return c, infos, start


def _drain(rig, arrivals, board, target_port, readings, timeout):
    """The four drains through the proxy to one rig; {name: rate} plus the firmware's sent count."""
    out = {}
    # The firmware: readings queued while away, drained after connecting.
    device = "drain-firmware"
    bundle = rig.bundle(device, port=target_port, outbox_bytes=4 * 1024 * 1024, interval=3600)
    proc = _device_run(board, "mp_drain", {"bundle": str(bundle), "readings": readings})
    rec = _finish(proc, "the firmware", timeout)
    last = arrivals.wait(device, readings, 30)
    out["firmware"] = _rate(readings, rec["start_ns"], last)
    out["firmware"]["sent"] = rec["sent"]

    # Stop-and-wait, then pipelined with the firmware's window: the bare MicroPython publisher.
    for name, window in (("stop_and_wait", 1), ("bare_pipelined", WINDOW)):
        device = "drain-" + name.replace("_", "-")
        bundle = rig.bundle(device)
        cfg = dict(rig.identity(device, bundle), mode="drain", messages=readings,
                   window=window, first=1, port=target_port)
        rec = _finish(_device_run(board, "baseline_bare", cfg), name, timeout)
        last = arrivals.wait(device, readings, 30)
        out[name] = _rate(readings, rec["start_ns"], last)

    # The ceiling: paho-mqtt on CPython, pipelined.
    device = "drain-paho"
    bundle = rig.bundle(device)
    ident = dict(rig.identity(device, bundle), ca_pem=rig.pki.root_cert)
    client, _infos, start = _paho(ident, target_port, readings)
    try:
        last = arrivals.wait(device, readings, timeout)
    finally:
        client.loop_stop()
        client.disconnect()
    out["paho_pipelined"] = _rate(readings, start, last)
    fw = out["firmware"]["readings_per_s"]
    out["ratio_to_paho"] = ratio(fw, out["paho_pipelined"]["readings_per_s"])
    out["ratio_to_stop_and_wait"] = ratio(fw, out["stop_and_wait"]["readings_per_s"])
    return out


def edgehub_bound(readings, rtt_s, emulated_rate):
    """edgeHub's 100 pending publishes per client, as a back-of-envelope beside the measurement.

    If each batch of 100 costs one round trip of the link (a device that keeps 100 in flight, or a
    gateway as slow as the link), a drain moves at most 100 per RTT: max_readings_per_s,
    min_seconds. edgeHub acks a publish once its router has taken it, so with the firmware's 128
    in flight the cap is 100 per edgeHub processing time; implied_ms_per_batch is that time at the
    rate measured through the emulator.
    """
    return {"pending": EDGEHUB_PENDING, "max_readings_per_s": round(EDGEHUB_PENDING / rtt_s, 1),
            "min_seconds": round(readings / EDGEHUB_PENDING * rtt_s, 3),
            "implied_ms_per_batch": round(1000 * EDGEHUB_PENDING / emulated_rate, 2)}


def run(workdir, quick=False, log=print):
    """Measure against mosquitto (top-level figures) and the emulator ('emulator'); return the
    'drain' section of results.json."""
    readings = 100 if quick else 1000
    timeout = 60 if quick else 240
    workdir.mkdir(parents=True, exist_ok=True)
    board = board_lib(workdir / "board")
    out = {"readings": readings, "rtt_ms": ONE_WAY_DELAY * 2000, "heap": HEAP, "window": WINDOW,
           "clock": "connect start to the hub holding the last reading"}
    with Rig(workdir / "rig") as rig:
        with FaultProxy("127.0.0.1", rig.broker.port, delay=ONE_WAY_DELAY) as proxy:
            out.update(_drain(rig, Arrivals(rig.hub), board, proxy.port, readings, timeout))
    with EmulatorRig(workdir / "emulator") as emu:
        with FaultProxy("127.0.0.1", emu.port, delay=ONE_WAY_DELAY) as proxy:
            emulated = _drain(emu, StoreArrivals(emu.gw.data), board, proxy.port, readings, timeout)
    emulated["profile"] = "edgekit gateway serve, default profile; clock ends when its store holds the reading"
    # Issue 26 part 4: the emulator must not be what slows a drain down, judged against mosquitto
    # in the same run because the machine's load moves both.
    emulated["ratio_to_mosquitto"] = ratio(emulated["firmware"]["readings_per_s"], out["firmware"]["readings_per_s"])
    emulated["goal_met"] = bool(emulated["ratio_to_mosquitto"] is not None
                                and emulated["ratio_to_mosquitto"] >= EMULATOR_GOAL)
    out["emulator"] = emulated
    out["edgehub_pending"] = edgehub_bound(readings, ONE_WAY_DELAY * 2, emulated["firmware"]["readings_per_s"])
    out["goal_met"] = bool(out["ratio_to_paho"] >= 0.5 and out["ratio_to_stop_and_wait"] >= 10)
    for label, figures in (("mosquitto", out), ("emulator", emulated)):
        for name in ("firmware", "paho_pipelined", "stop_and_wait", "bare_pipelined"):
            log("drain: %-9s %-15s %8.1f readings/s (%.2f s)"
                % (label, name, figures[name]["readings_per_s"], figures[name]["seconds"]))
    bound = out["edgehub_pending"]
    log("drain: edgeHub's 100 pending at %.0f ms RTT, one RTT per 100: at most %.0f readings/s, %d readings"
        " in >= %.2f s; the emulator's rate is 100 per %.1f ms"
        % (out["rtt_ms"], bound["max_readings_per_s"], readings, bound["min_seconds"], bound["implied_ms_per_batch"]))
    return out


def _rate(readings, start_ns, last_ns):
    seconds = (last_ns - start_ns) / 1e9
    if seconds <= 0:
        raise BenchError("drain: the hub's last arrival precedes the start (clock trouble)")
    return {"seconds": round(seconds, 3), "readings_per_s": round(readings / seconds, 1)}
