# Device side of bench/update.py, run by the real micropython: one over-the-air update by the
# firmware's agent (azure_edge.adu: download from the cache, verify, install, switch slots),
# its /data on a LittleFS on the sim's counting NOR chip (host_tools/edgekit/sim/board/_simnor.py),
# or, as the baseline, a plain HTTP GET of the same file over the same link.
#
#   micropython mp_update.py LIB WORKDIR MODE ARG.json
#       MODE: update | take | apply | raw | raw_flash | base
#
# update: take, then apply in the same run (for the time). take: the agent takes the
# deployment while connected (written to flash, reset asked for); apply: the boot after that
# reset applies it, from the flash the last take left. base: everything but the update (for
# the smallest heap that works, by difference).
# Prints one JSON line: {"update": {...}}.
import gc
import json
import sys
import time
import vfs

LIB, WORK, MODE = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, LIB)
with open(sys.argv[4]) as _f:
    ARG = json.loads(_f.read())
from azure_edge import net
net.install()
from _simnor import Nor

# apply: the flash a take left (saved), as the reset after it finds it.
nor = Nor(WORK, "upd.img", blocks=ARG.get("blocks", 256), autosave=False)
if MODE != "apply":
    nor.wipe()
    vfs.VfsLfs2.mkfs(nor)
vfs.mount(vfs.VfsLfs2(nor), "/w")
DATA = "/w/data"


class Cs:
    connect_host = "127.0.0.1"


class C:
    def __init__(self):
        self.du = {"manufacturer": "contoso", "model": "sensor", "boots": 3, "minutes": 10,
                   "d": DATA, "b": ARG["adu_bundle"], "cache": ARG["cache"]}
        self.adu = None
        self.connected = True
        self._twin_rid = None
        self._replies = []
        self.reconnects = 1
        self.cs = Cs()
        self.port = 8883
        self.reboot_requested = False
        self.reports = []

    def report(self, props):
        self.reports.append(json.dumps(props))


def raw(to_flash=False):
    # HTTP/1.1 GET of the file, read to the end: what the agent's download cannot beat. to_flash:
    # written as it arrives to a file on the same LittleFS (headers and all), then closed.
    import socket
    host, port = ARG["cache"].split(":")
    t0 = time.ticks_ms()
    s = socket.socket()
    s.connect(socket.getaddrinfo(host, int(port))[0][-1])
    s.write(b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (ARG["path"].encode(), host.encode()))
    buf = bytearray(1024)
    mv = memoryview(buf)
    f = open("/w/raw.bin", "wb") if to_flash else None
    n = 0
    while True:
        k = s.readinto(buf)
        if not k:
            break
        n += k
        if f:
            f.write(mv[:k])
    s.close()
    if f:
        f.close()
    return {"ms": time.ticks_diff(time.ticks_ms(), t0), "received": n}


def take():
    # The agent takes the deployment while connected: written to flash, a reset asked for.
    from azure_edge import adu
    c = C()
    adu.on_twin(c, ARG["desired"], False)
    return c


def apply():
    # The deployment's own boot after that reset (azure_edge/adu_apply.py, as start.boot runs
    # it): checked, downloaded, installed, switched. Its client: reboot_requested once switched.
    from azure_edge import adu_apply
    return adu_apply.run(DATA)


def update():
    e0 = nor.erases
    p0 = nor.programmed
    t0 = time.ticks_ms()
    c = take()
    lean = apply() if c.reboot_requested else None
    ms = time.ticks_diff(time.ticks_ms(), t0)
    from azure_edge import adu
    state = adu.load(DATA)
    return {"ms": ms, "erases": nor.erases - e0, "programmed_bytes": nor.programmed - p0,
            "reboot": bool(lean and lean.reboot_requested), "phase": state.get("phase") if state else None,
            "last": json.loads(c.reports[-1]) if c.reports else None}


if MODE == "raw":
    out = raw()
elif MODE == "raw_flash":
    e0 = nor.erases
    out = raw(True)
    out["erases"] = nor.erases - e0
elif MODE == "update":
    out = update()
elif MODE == "take":
    out = {"reboot": take().reboot_requested}
elif MODE == "apply":
    lean = apply()
    out = {"reboot": bool(lean and lean.reboot_requested)}
else:
    from azure_edge import adu
    out = {}
gc.collect()
out["mode"] = MODE
print(json.dumps({"update": out}))
