# Heap benchmark, device side (MicroPython): the full firmware device as a user's main.py runs
# it, through the public API (azure_edge.device.Device, which boots with app.start()).
# Run as `-c "import gc;gc.collect();B=gc.mem_alloc();import mp_heap_device"` so B is the
# interpreter's heap before any of our code. BENCH (JSON env) holds: mode ("imports" or
# "full"), messages. Prints JSON lines the driver reads; "full" waits for the hub between
# "ready" and "done" (a method call and a desired patch).
import gc
import json
import os

import __main__

_BASE = __main__.B
cfg = json.loads(os.getenv("BENCH"))


def used():
    gc.collect()
    return gc.mem_alloc() - _BASE


if cfg["mode"] == "imports":
    # What stays loaded while the device runs (boot code, app included, is unloaded after boot).
    from azure_edge import device, port_host, client, outbox  # noqa: F401
    print(json.dumps({"code": used()}))
else:
    from azure_edge.device import Device

    dev = Device()
    client = dev.client
    boot = used()
    called = []

    @dev.method("bench")
    def bench_method(payload):
        called.append(1)
        return {"ok": True}

    while not client.connected:
        dev.step(0.2)
    connected = used()
    for n in range(1, cfg["messages"] + 1):
        dev.send({"seq": n, "t": 21.5})
    while getattr(client, "_twin_rid", None) is not None:  # twin GET answered, reported patched
        dev.step(0.2)
    dev.step(0.2)
    steady = used()
    print(json.dumps({"ready": True, "boot": boot, "connected": connected, "steady": steady,
                      "sent": client.sent}))
    while not called or client.interval != 3:  # the hub calls "bench" and patches interval
        dev.step(0.2)
    dev.step(0.2)  # the method's answer and the reported patch go out
    end = used()
    total = gc.mem_alloc() + gc.mem_free()
    import micropython
    micropython.qstr_info()  # the interned strings: one line the driver reads (bench/heap.py)
    client.disconnect()
    print(json.dumps({"done": True, "end": end, "heap_total": total, "sent": client.sent}))
