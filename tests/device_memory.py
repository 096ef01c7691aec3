# Heap check run under the real MicroPython: boot as the device does, send 500 readings,
# then serve until the hub has called a method and patched the twin. Prints JSON lines.
import gc
import json

from azure_edge import app

client, port, dog = app.start()
while not client.connected:
    client.step(0.2)
heap = {}
for n in range(1, 501):
    client.send_telemetry({"seq": n, "t": 21.5})
    if n % 50 == 0:
        client.step(0.2)
    if n in (10, 500):
        gc.collect()
        heap[n] = gc.mem_alloc()
print(json.dumps({"heap_after_10": heap[10], "heap_after_500": heap[500], "sent": client.sent}))
while client.interval != 3:  # the hub's desired patch sets it
    client.step(0.2)
for _ in range(25):  # serve the method call that follows
    client.step(0.2)
gc.collect()
print(json.dumps({"done": True, "heap_end": gc.mem_alloc()}))
