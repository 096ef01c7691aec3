# Backlog drain, device side (MicroPython): the firmware client queues `readings` telemetry
# readings while the gateway is away (they go to the outbox on flash), then connects and
# serves its loop the way app.run() does until the outbox is empty.
# BENCH (JSON env): bundle, readings. Prints JSON lines.
import json
import os
import time

from azure_edge import app

cfg = json.loads(os.getenv("BENCH"))
client, port, dog = app.start()
for n in range(1, cfg["readings"] + 1):
    client.send_telemetry({"seq": n, "t": 21.5})  # not connected yet: into the outbox
print(json.dumps({"queued": len(client.outbox)}))
start = time.time_ns()
while not client.connected or len(client.outbox):
    client.step(0.2)
    dog.feed()
end = time.time_ns()
client.disconnect()
print(json.dumps({"done": True, "start_ns": start, "end_ns": end, "sent": client.sent,
                  "reconnects": client.reconnects}))
