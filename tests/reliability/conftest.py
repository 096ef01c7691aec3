"""Shared parts of the reliability scenarios: a gateway that can be killed and restarted on the
same port with the same data, the 50 ms sequence device under the real MicroPython, and the
hub-side accounting (sent, received, lost, duplicates, order)."""
import re
import shutil
import signal
import time
from pathlib import Path

import pytest

from device_helpers import DEVICE_HEAP, Device, build_board, free_port, readings_of, wait_for, write_bundle
from gateway_helpers import GatewayProcess, HOSTNAME

from edgekit.certs.demo import make_demo_pki

HERE = Path(__file__).resolve().parent
_HANDED = re.compile(r"^handed (\w+) (\d+)$", re.M)


class RestartableGateway(GatewayProcess):
    """GatewayProcess that keeps its MQTT port across restarts, as a real gateway does."""

    def __init__(self, workdir, pki=None):
        super().__init__(workdir, devices=(), pki=pki, port=free_port())
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.restarts = 0

    def kill(self):
        """SIGKILL: no goodbye to clients, gateway.json left behind (as after a power loss)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def restart(self, down_seconds=0.0, hard=True):
        """Kill (or stop) the gateway, stay down for down_seconds, start it again."""
        self.kill() if hard else self.stop()
        time.sleep(down_seconds)
        self.start()
        self.restarts += 1


def make_board(folder):
    """A MicroPython board tree (firmware compiled to .mpy) whose main.py is the sequence device."""
    board = build_board(folder)
    shutil.copy(HERE / "seq_device.py", board / "main.py")
    return board


def make_seq_bundle(gw, folder, device_id, port=None, **config):
    """Register device_id with gw and write its bundle (config tuned for the scenario)."""
    cs = gw.add_device(device_id, gateway_host=HOSTNAME)
    # The bundle's own interval: seq_device.py sends every 50 ms whatever it says.
    tuned = {"backoff_cap": 2, "keepalive": 5, "outbox_bytes": 262144}
    return write_bundle(folder, gw.pki, port or gw.listen_port, device=device_id, connection_string=cs,
                        quick=False, **dict(tuned, **config))


class SeqDevice:
    """The sequence device as a process; every boot logs to its own console file."""

    def __init__(self, board, bundle, heap=DEVICE_HEAP):
        self.board = board
        self.bundle = bundle
        self.heap = heap
        self.boots = []  # console paths, one per boot
        self.dev = None

    def start(self):
        log = self.bundle.parent / f"{self.bundle.name}-boot{len(self.boots) + 1}.log"
        self.boots.append(log)
        self.dev = Device("micropython", self.bundle, self.board, heap=self.heap, logfile=log)
        return self

    def kill(self):
        """SIGKILL, as a power cut: nothing the device had not made durable survives."""
        self.dev.proc.send_signal(signal.SIGKILL)
        self.dev.proc.wait(10)
        self.dev.log.close()

    def stop(self):
        if self.dev is not None:
            self.dev.stop()

    def alive(self):
        return self.dev.alive()

    def console(self, boot=-1):
        return Path(self.boots[boot]).read_text(errors="replace")

    def consoles(self):
        return "".join(Path(p).read_text(errors="replace") for p in self.boots)

    def handed(self):
        """{boot id: highest seq whose send_telemetry returned}; readings are handed 1, 2, ... in order."""
        out = {}
        for boot, seq in _HANDED.findall(self.consoles()):
            out[boot] = max(out.get(boot, 0), int(seq))
        return out

    def reconnects(self):
        """Successful connects after the first of each boot."""
        return sum(max(0, len(re.findall(r"\[edgekit\] connected to ", Path(p).read_text(errors="replace"))) - 1)
                   for p in self.boots)

    def wait_connected(self, timeout=30):
        wait_for(lambda: "[edgekit] connected to " in self.console(), timeout, "device connected")
        return self

    def wait_handed(self, n, timeout=30):
        """Until this boot has handed n readings."""
        wait_for(lambda: len(_HANDED.findall(self.console())) >= n, timeout, f"{n} readings handed")

    def check_healthy(self):
        text = self.consoles()
        assert "Traceback" not in text, text[-3000:]
        assert "dropped" not in text, "the outbox dropped readings: raise outbox_bytes"


def heap_after_connects(dev, got):
    """Heap in use (after a collection) at the first reading handed after each connect."""
    heap = {(b, s): h for b, s, h in got}
    out = []
    pending = False
    for line in dev.consoles().splitlines():
        if line.startswith("[edgekit] connected to "):
            pending = True
            continue
        m = _HANDED.match(line)
        if pending and m and (m.group(1), int(m.group(2))) in heap:
            out.append(heap[(m.group(1), int(m.group(2)))])
            pending = False
    return out


def arrivals(gw, device_id):
    """[(boot, seq, heap)] in the order the gateway stored them."""
    return [(r["boot"], r["seq"], r["heap"]) for r in readings_of(gw, device_id)]


def account(handed, got):
    """Compare what the device handed over with what arrived.

    handed: {boot: highest seq handed}; got: [(boot, seq, heap)] in arrival order.
    A boot hands 1, 2, 3... each only after the previous send_telemetry returned, so it sent
    every seq up to the larger of its highest handed and highest arrived (a reading cut off by
    a power cut may arrive without having been handed); lost counts those that never arrived.
    In order means: within each boot, first arrivals are strictly increasing.
    Returns a dict with sent, received, lost, duplicates, out_of_order, missing (up to ten lost
    (boot, seq) pairs) and max_heap (largest gc.mem_alloc() a reading reported).
    """
    seen = set()
    last = {}
    duplicates = out_of_order = 0
    for boot, seq, _heap in got:
        if (boot, seq) in seen:
            duplicates += 1
            continue
        seen.add((boot, seq))
        if seq <= last.get(boot, 0):
            out_of_order += 1
        last[boot] = seq
    top = dict(handed)
    for boot, seq in seen:
        top[boot] = max(top.get(boot, 0), seq)
    missing = [(b, s) for b, n in top.items() for s in range(1, n + 1) if (b, s) not in seen]
    return {"sent": sum(top.values()), "received": len(seen), "lost": len(missing),
            "duplicates": duplicates, "out_of_order": out_of_order, "missing": missing[:10],
            "max_heap": max((h for _b, _s, h in got), default=0)}


def wait_delivered(gw, device_id, dev, timeout=60):
    """Until every reading the device handed so far has arrived; returns the accounting."""
    def done():
        report = account(dev.handed(), arrivals(gw, device_id))
        return report if not report["lost"] else None
    try:
        return wait_for(done, timeout, "every handed reading at the gateway")
    except AssertionError:
        report = account(dev.handed(), arrivals(gw, device_id))
        raise LostReadings(f"readings lost: {report}\n--- console ---\n{dev.consoles()[-3000:]}", report)


class LostReadings(AssertionError):
    """Readings the device handed over never arrived; `report` has the figures."""

    def __init__(self, message, report):
        super().__init__(message)
        self.report = report


def summary(report, reconnects):
    """The one-line figures the scenarios print (and soak ends with)."""
    return ("sent={sent} received={received} lost={lost} duplicates={duplicates} "
            "reconnects={r} max_heap={max_heap}".format(r=reconnects, **report))


@pytest.fixture(scope="session")
def rel_pki(tmp_path_factory):
    """One demo PKI shared by every reliability gateway."""
    return make_demo_pki(tmp_path_factory.mktemp("rel-pki"), HOSTNAME, devices=[])


@pytest.fixture(scope="session")
def seq_board(tmp_path_factory):
    return make_board(tmp_path_factory.mktemp("seq-board"))
