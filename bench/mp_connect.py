# Connect benchmark, device side (MicroPython): N full connects of the firmware client
# (TLS, MQTT CONNECT, subscriptions, twin GET answered), each beside a bare TLS handshake to
# the same server with the same credentials, then the cost of SAS generation.
# BENCH (JSON env): bundle, connects, sas_runs. Prints one JSON line.
import json
import os
import socket
import time

from azure_edge import app, net, sas

cfg = json.loads(os.getenv("BENCH"))
client, port, dog = app.start()
host, tcp_port = client.cs.connect_host, client.port
folder = cfg["bundle"]
bcfg = json.load(open(folder + "/config.json"))


def read(name):
    if not name:
        return None
    with open(folder + "/" + name, "rb") as f:
        return f.read()


cert = read(bcfg.get("cert"))
if cert:
    from azure_edge.bundle import der_certs
    cert = der_certs(cert)  # the leaf, then its intermediates, one DER each
ctx = net.mp_context(read(bcfg["ca"]), cert, read(bcfg.get("key")))
answered = []
_deliver = client.mqtt.on_message


def _stamp(mqtt, topic, msg):
    # Stamp the twin answer as it arrives: loop() itself runs on to its timeout.
    if topic.startswith("$iothub/twin/res/"):
        answered.append(time.ticks_us())
    _deliver(mqtt, topic, msg)


client.mqtt.on_message = _stamp


def handshake():
    t0 = time.ticks_us()
    ai = socket.getaddrinfo(host, tcp_port, 0, socket.SOCK_STREAM)[0]
    raw = socket.socket(ai[0], socket.SOCK_STREAM)
    raw.connect(ai[-1])
    raw.setsockopt(6, 1, 1)  # TCP_NODELAY as the firmware sets it: else Nagle stalls the handshake
    s = ctx.wrap_socket(raw, server_hostname=host)
    t1 = time.ticks_us()
    s.close()
    return time.ticks_diff(t1, t0)


def full_connect():
    answered.clear()
    t0 = time.ticks_us()
    client.connect()
    t1 = time.ticks_us()
    end = time.ticks_add(t0, 15000000)
    while not answered and time.ticks_diff(end, time.ticks_us()) > 0:
        client.mqtt.loop(0.2)
    if not answered:
        raise OSError("no twin answer within 15 s")
    took = time.ticks_diff(answered[0], t0), time.ticks_diff(t1, t0)
    client.disconnect()
    return took


bare, full, connect_only = [], [], []
handshake()  # warm-up: DNS, first allocations
for _ in range(cfg["connects"]):
    bare.append(handshake())
    total, conn = full_connect()
    full.append(total)
    connect_only.append(conn)

signs = []
key = client.cs.shared_access_key
if key:
    uri = sas.resource_uri(client.cs.host_name, client.cs.device_id)
    for n in range(cfg["sas_runs"]):
        t0 = time.ticks_us()
        sas.generate(uri, key, 1700000000 + n)
        signs.append(time.ticks_diff(time.ticks_us(), t0))
print(json.dumps({"done": True, "bare_us": bare, "full_us": full, "connect_us": connect_only,
                  "sas_us": signs}))
