"""Heap: the smallest `-X heapsize` at which the real MicroPython runs the full device from .mpy.

The device connects over verified TLS to mosquitto, sends `messages` telemetry readings at
QoS 1, has its twin fetched and reported, and answers one direct method. Baselines in the
same run: a bare publisher (raw TLS socket, hand-built MQTT: the floor) and MiniMQTT alone
over the firmware's socket adapter (its publish() kept). Each subject reports its code heap
(everything imported, after a collect) apart from its working heap (the smallest heap that
works, minus code).
Firmware and MiniMQTT are measured again with their code run in place from a ROMFS image,
as on a board whose firmware has a ROMFS partition (`edgekit deploy --romfs`), and their code
heap once more on a 32-bit MicroPython (bench/heap32.py), as a plain ESP32 is 32-bit.
"""
import json
import re
import subprocess
import time
from pathlib import Path

from bench import heap32
from bench.common import (KIB, BenchError, baseline_board, board_lib, last_record, launch,
                          micropython, mp_env, mp_start, mp_stop, ratio)
from bench.rig import Rig
from device_helpers import romfs_block_bytes, romfs_image

FLOOR_K, CEILING_K = 8, 256
TRIAL_TIMEOUT = 25
# "<subject>_romfs": the same code run in place from a ROMFS image (see bench.common).
# "firmware_adu": the same device with the update agent on (the bundle's "adu" entry), idle: no
# deployment in its twin. Its steady heap beside the firmware's is the agent's cost at rest.
SUBJECTS = ("firmware", "firmware_adu", "minimqtt", "bare", "firmware_romfs", "minimqtt_romfs")
_MODULES = {"firmware": "mp_heap_device", "minimqtt": "baseline_minimqtt", "bare": "baseline_bare"}
ADU = {"manufacturer": "edgekit", "model": "esp32"}
# The same figures before the agent's idle path (5b22538: the agent, adu.py, loaded at every boot
# and connect), measured by this code on that tree: a new pool of names (~7 KiB) and 92 names.
ADU_IDLE_BEFORE = {"commit": "5b22538", "steady_over_agent_off_bytes": 8960, "names_over_agent_off": 92,
                   "min_heapsize_bytes": 89 * KIB, "agent_off_min_heapsize_bytes": 77 * KIB,
                   "idle_path_bytes_64bit": 1824, "idle_path_names": 108, "idle_path_bytes_32bit": 1376}
class Heap:
    """Runs the subjects on the board tree (the MiniMQTT baseline on its own copy) against one rig."""

    def __init__(self, rig, board, workdir, messages, minimqtt_board=None):
        self.rig = rig
        # The MiniMQTT baseline runs from its own copy of the tree (bench.common.baseline_board).
        self.boards = {"firmware": board, "minimqtt": minimqtt_board or board, "bare": board}
        self.images = {b: romfs_image(b) for b in set(self.boards.values())}
        self.blocks = {image: romfs_block_bytes(image) for image in self.images.values()}
        self.romfs = self.images[board]
        self.dir = workdir
        self.messages = messages
        self.trials = 0

    def code_bytes(self, subject):
        """Heap held after the subject's imports and a collect (roomy heap)."""
        cfg = {"mode": "imports"}
        module, romfs, board = self._module(subject)
        out = subprocess.run([micropython(), "-X", "heapsize=%d" % self._heap(subject, CEILING_K),
                              "-c", launch(module, romfs)],
                             capture_output=True, text=True, timeout=60, env=mp_env(board, romfs, **cfg))
        rec = last_record(out.stdout, "code")
        if out.returncode or rec is None:
            raise BenchError(f"heap: {subject} imports failed: {(out.stdout + out.stderr)[-400:]}")
        return rec["code"]

    def trial(self, subject, heap_k):
        """Run the subject once at heap_k KiB; its 'done' record on success, else None."""
        self.trials += 1
        device = "heap-%s-%d-%d" % (subject, heap_k, self.trials)
        bundle = self.rig.bundle(device, interval=3600, **({"adu": ADU} if subject == "firmware_adu" else {}))
        module, romfs, board = self._module(subject)
        firmware = module == _MODULES["firmware"]
        cfg = {"mode": "full" if firmware else "heap", "messages": self.messages,
               "bundle": str(bundle)}
        if not firmware:
            cfg.update(self.rig.identity(device, bundle))
        log_path = self.dir / ("%s.log" % device)
        proc = mp_start(board, module, "%d" % self._heap(subject, heap_k), cfg, log_path, romfs)
        try:
            done = self._drive(firmware, proc, log_path)
        finally:
            mp_stop(proc)
        if done is None:
            return None
        # PUBACK means mosquitto has them; the hub gets them a moment later.
        end = time.monotonic() + 5
        while self.rig.count(device) < self.messages and time.monotonic() < end:
            time.sleep(0.02)
        if done is not None and romfs:
            done["heap_total"] -= self._block(romfs)  # the image: in flash on a board
        return done if self.rig.count(device) >= self.messages else None

    def _module(self, subject):
        if subject == "firmware_adu":
            return _MODULES["firmware"], None, self.boards["firmware"]
        base = subject[:-6] if subject.endswith("_romfs") else subject
        board = self.boards[base]
        return _MODULES[base], self.images[board] if base != subject else None, board

    def _heap(self, subject, heap_k):
        # Bytes for -X heapsize: a ROMFS run also holds the image, in one block left out of the figures.
        return heap_k * KIB + self._block(self._module(subject)[1])

    def _block(self, romfs):
        return self.blocks[romfs] if romfs else 0

    def _drive(self, firmware, proc, log_path):
        hub = self.rig.hub
        if firmware:
            hub.reported.clear()
            ready = _wait_record(proc, log_path, "ready")
            if ready is None:
                return None
            end = time.monotonic() + TRIAL_TIMEOUT
            while not hub.reported and time.monotonic() < end:
                time.sleep(0.02)
            if not hub.reported:
                return None  # the twin was not fetched and reported
            rid = 1000 + self.trials
            try:
                status, _ = hub.call("bench", {}, rid=rid, timeout=TRIAL_TIMEOUT)
            except AssertionError:
                return None
            if status != 200:
                return None
            version = 10 + self.trials
            hub.publish("$iothub/twin/PATCH/properties/desired/?$version=%d" % version,
                        json.dumps({"interval": 3, "$version": version}))
            done = _wait_record(proc, log_path, "done")
            if done:
                done.update({k: ready[k] for k in ("boot", "connected", "steady")})
                done.update(_qstrs(log_path.read_text(errors="replace")))
            return done
        return _wait_record(proc, log_path, "done")

    def minimum(self, subject, floor_k, ceiling_k, step_k):
        """Bisect for the smallest heap (KiB, multiple of step_k) that works; (KiB, its record)."""
        top = self.trial(subject, ceiling_k)
        if top is None:
            raise BenchError(f"heap: {subject} does not run even at {ceiling_k}K (see {self.dir})")
        lo, hi, best = floor_k, ceiling_k, top  # invariant: hi works
        rec = self.trial(subject, lo)
        if rec is not None:
            return lo, rec
        while hi - lo > step_k:
            mid = (lo + hi) // 2 // step_k * step_k
            if mid <= lo:
                mid = lo + step_k
            rec = self.trial(subject, mid)
            if rec is not None:
                hi, best = mid, rec
            else:
                lo = mid
        # Heap use varies a little run to run: confirm once; step up until it holds.
        while True:
            rec = self.trial(subject, hi)
            if rec is not None:
                return hi, rec
            hi += step_k
            if hi > ceiling_k:
                return ceiling_k, best


# Console lines that mean this heap is too small (the client retries instead of dying).
_FAILED = ("MemoryError", "Traceback", "retrying in", "link to gateway lost")


def _wait_record(proc, log_path, key):
    end = time.monotonic() + TRIAL_TIMEOUT
    while time.monotonic() < end:
        text = log_path.read_text(errors="replace")
        rec = last_record(text, key)
        if rec is not None:
            return rec
        if any(mark in text for mark in _FAILED) or proc.poll() is not None:
            return None
        time.sleep(0.02)
    return None


# Every name a module loads is interned for good, in pools that double: 20, 40, 80, ... entries.
# Once the pools are full the next name costs a whole new pool (640 entries: about 7 KiB on the
# 64-bit unix port, about 4 KiB on a 32-bit board), so the room left before that step is a figure.
_QSTR_POOL0 = 20


def _qstrs(text):
    m = re.search(r"n_pool=(\d+), n_qstr=(\d+)", text)
    if not m:
        return {}
    pools, n = int(m.group(1)), int(m.group(2))
    return {"qstrs": n, "qstr_room": _QSTR_POOL0 * (2 ** pools - 1) - n}


def _der(pem_path, out):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    out.write_bytes(x509.load_pem_x509_certificate(Path(pem_path).read_bytes()).public_bytes(Encoding.DER))


def _romfs_available():
    out = subprocess.run([micropython(), "-c", "import vfs;print(hasattr(vfs,'rom_ioctl'))"],
                         capture_output=True, text=True, timeout=30)
    return out.stdout.strip() == "True"


def run(workdir, quick=False, log=print):
    """Measure; return the 'heap' section of results.json."""
    messages = 20 if quick else 100
    step_k = 8 if quick else 1
    workdir.mkdir(parents=True, exist_ok=True)
    board = board_lib(workdir / "board")
    minimqtt_board = baseline_board(board, workdir / "board-minimqtt")
    out = {"messages": messages, "resolution_bytes": step_k * KIB,
           "interpreter": "MicroPython 1.29 unix port (64-bit), code as .mpy"}
    with Rig(workdir / "rig") as rig:
        _der(rig.pki.root_cert, workdir / "ca.der")  # the bundle's root, for heap32.idle
        h = Heap(rig, board, workdir, messages, minimqtt_board)
        for subject in SUBJECTS:
            code = h.code_bytes(subject)  # firmware_adu: the same imports (the agent loads at boot)
            min_k, rec = h.minimum(subject, FLOOR_K, CEILING_K, step_k)
            fig = {"min_heapsize_bytes": min_k * KIB, "code_bytes": code}
            if rec:
                # The usable heap at the minimum is the peak the run needed (fragmentation included).
                fig["peak_bytes"] = rec["heap_total"]
                fig["working_bytes"] = rec["heap_total"] - code
                fig["steady_bytes"] = rec["steady"]
                fig["connected_bytes"] = rec["connected"]
                fig["boot_bytes"] = rec["boot"]
                if "qstrs" in rec:
                    fig["qstrs"] = rec["qstrs"]
                    fig["qstr_room"] = rec["qstr_room"]
            out[subject] = fig
            log("heap: %-14s min heap %3d KiB, code %6d B, working %6s B" % (
                subject, min_k, code, fig.get("working_bytes")))
        out["trials"] = h.trials
    out["code_32bit"] = heap32.section(board, log)
    # The agent on, idle (issue 24: at most 1 KiB over the agent off), and its idle path alone on
    # the 32-bit build (bench/heap32.py idle: the device cannot run there).
    fa = out.pop("firmware_adu")
    fw = out["firmware"]
    idle = heap32.idle(board, workdir / "ca.der")
    out["adu_idle"] = {
        "min_heapsize_bytes": fa["min_heapsize_bytes"], "steady_bytes": fa.get("steady_bytes"),
        "qstrs": fa.get("qstrs"), "qstr_room": fa.get("qstr_room"),
        "steady_over_agent_off_bytes": fa["steady_bytes"] - fw["steady_bytes"]
        if fa.get("steady_bytes") is not None and fw.get("steady_bytes") is not None else None,
        "names_over_agent_off": fa["qstrs"] - fw["qstrs"] if fa.get("qstrs") and fw.get("qstrs") else None,
        "idle_path_bytes_64bit": idle[64]["bytes"], "idle_path_names": idle[64].get("names"),
        "idle_path_bytes_32bit": idle[32]["bytes"],
        "method": ("steady: the heap bench's device (boot, connect, twin GET and report, 100 readings) "
                   "with the bundle's adu entry, less the same device without it; idle_path: its boot "
                   "steps and one connect's twin alone on top of the firmware's imports, a pool of "
                   "names with room (bench/heap32.py idle), 64-bit and on the 32-bit WASI build"),
        "before": ADU_IDLE_BEFORE,
    }
    a = out["adu_idle"]
    log("heap: agent on, idle: steady %s B over the agent off, %s names more (room %s)" % (
        a["steady_over_agent_off_bytes"], a["names_over_agent_off"], fa.get("qstr_room")))
    fw, mq, bare = out["firmware"], out["minimqtt"], out["bare"]
    out["min_heapsize_bytes"] = fw["min_heapsize_bytes"]
    out["code_bytes"] = fw["code_bytes"]
    out["working_bytes"] = fw.get("working_bytes")
    out["steady_bytes"] = fw.get("steady_bytes")
    out["qstrs"] = fw.get("qstrs")
    out["qstr_room"] = fw.get("qstr_room")
    out["peak_bytes"] = fw.get("peak_bytes")
    out["ratio_to_bare"] = ratio(fw["min_heapsize_bytes"], bare["min_heapsize_bytes"])
    out["ratio_to_minimqtt"] = ratio(fw["min_heapsize_bytes"], mq["min_heapsize_bytes"])
    out["azure_layer_adds"] = ratio(fw["min_heapsize_bytes"] - mq["min_heapsize_bytes"],
                                    mq["min_heapsize_bytes"])
    out["code_ratio_to_minimqtt"] = ratio(fw["code_bytes"], mq["code_bytes"])
    # TLS on the GC heap: the bare publisher's growth from boot to connected, its SSLContext and
    # SSLSocket objects (mbedTLS's structs inside, extmod/modtls_mbedtls.c) and its socket.
    # What mbedTLS allocates itself (record buffers, certificates) is not in any figure here:
    # libc's calloc on the unix port's standard variant, the IDF heap on esp32 (README).
    if bare.get("connected_bytes") is not None:
        out["tls_session_bytes"] = bare["connected_bytes"] - bare["boot_bytes"]
    fr, mr = out.pop("firmware_romfs"), out.pop("minimqtt_romfs")
    out["romfs"] = {
        "available_in_this_build": _romfs_available(),
        "measured": True,
        "method": ("the lib tree as a ROMFS image (mpremote's builder) mounted with vfs.VfsRom and "
                   "imported in place; the image's own heap block stands for the flash partition "
                   "and is left out of every figure"),
        "image_bytes": h.romfs.stat().st_size,
        "firmware": fr,
        "minimqtt": mr,
        "min_heapsize_bytes": fr["min_heapsize_bytes"],
        "code_bytes": fr["code_bytes"],
        "working_bytes": fr.get("working_bytes"),
        "saving_bytes": fw["min_heapsize_bytes"] - fr["min_heapsize_bytes"],
        "ratio_to_minimqtt": ratio(fr["min_heapsize_bytes"], mr["min_heapsize_bytes"]),
        "azure_layer_adds": ratio(fr["min_heapsize_bytes"] - mr["min_heapsize_bytes"],
                                  mr["min_heapsize_bytes"]),
    }
    out["goals"] = {
        "min_heapsize_le_64KiB": fw["min_heapsize_bytes"] <= 64 * KIB,
        "working_le_16KiB": (out["working_bytes"] or 1e9) <= 16 * KIB,
        "layer_adds_le_25pct": (out["azure_layer_adds"] or 1e9) <= 0.25,
        "romfs_min_heapsize_le_64KiB": out["romfs"]["min_heapsize_bytes"] <= 64 * KIB,
        "romfs_working_le_16KiB": (out["romfs"]["working_bytes"] or 1e9) <= 16 * KIB,
        "romfs_layer_adds_le_25pct": (out["romfs"]["azure_layer_adds"] or 1e9) <= 0.25,
    }
    return out
