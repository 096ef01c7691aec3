# Baseline (MicroPython): plain MiniMQTT over the firmware's socket adapter (azure_edge.net),
# no Azure layer: connect with the same identity, publish the same telemetry at QoS 1.
# Run as `-c "import gc;gc.collect();B=gc.mem_alloc();import baseline_minimqtt"`.
# BENCH (JSON env): mode ("imports" or "heap"), host, port, client_id, username, password,
# ca (DER file), prefix (telemetry topic up to the property bag), messages.
import gc
import json
import os

import __main__

_BASE = __main__.B
cfg = json.loads(os.getenv("BENCH"))


def used():
    gc.collect()
    return gc.mem_alloc() - _BASE


from azure_edge import net  # noqa: E402

net.install()
from adafruit_minimqtt.adafruit_minimqtt import MQTT  # noqa: E402

if cfg["mode"] == "imports":
    print(json.dumps({"code": used()}))
else:
    with open(cfg["ca"], "rb") as f:
        ctx = net.mp_context(f.read())
    mqtt = MQTT(broker=cfg["host"], port=cfg["port"], is_ssl=True, keep_alive=60,
                client_id=cfg["client_id"], username=cfg["username"], password=cfg["password"],
                socket_pool=net, ssl_context=ctx, use_binary_mode=True, socket_timeout=0.2,
                recv_timeout=10)
    boot = used()
    mqtt._connect()  # as the client connects: MiniMQTT as deploy ships it has no retry wrapper
    connected = used()
    for n in range(1, cfg["messages"] + 1):
        bag = "%24.mid=bench-" + str(n) + "&%24.ct=application%2Fjson&%24.ce=utf-8"
        mqtt.publish(cfg["prefix"] + bag, json.dumps({"seq": n, "t": 21.5}), qos=1)
    steady = used()
    total = gc.mem_alloc() + gc.mem_free()
    mqtt.disconnect()
    print(json.dumps({"done": True, "boot": boot, "connected": connected, "steady": steady,
                      "end": steady, "heap_total": total, "sent": cfg["messages"]}))
