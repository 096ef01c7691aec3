# Baseline (MicroPython): the floor. A raw TLS socket and hand-built MQTT 3.1.1 packets:
# CONNECT, then the same telemetry as the firmware at QoS 1, each packet in one write.
# `window` PUBLISHes may await their PUBACK at once: 1 is stop-and-wait.
# Run as `-c "import gc;gc.collect();B=gc.mem_alloc();import baseline_bare"`.
# BENCH (JSON env): mode ("imports", "heap" or "drain"), host, port, client_id, username,
# password, ca (DER file), prefix, messages, window, first (first seq number).
import gc
import json
import os
import socket
import ssl
import time

import __main__

_BASE = __main__.B
cfg = json.loads(os.getenv("BENCH"))


def used():
    gc.collect()
    return gc.mem_alloc() - _BASE


def field(b):
    return bytes((len(b) >> 8, len(b) & 255)) + b


def packet(kind, body):
    n = len(body)
    head = bytearray((kind,))
    while True:
        byte = n & 127
        n >>= 7
        head.append(byte | 128 if n else byte)
        if not n:
            return bytes(head) + body


def read_exact(s, n):
    buf = b""
    while len(buf) < n:
        part = s.read(n - len(buf))
        if not part:
            raise OSError("closed by broker")
        buf += part
    return buf


def read_packet(s):
    kind = read_exact(s, 1)[0]
    n = shift = 0
    while True:
        b = read_exact(s, 1)[0]
        n |= (b & 127) << shift
        shift += 7
        if b < 128:
            break
    return kind, read_exact(s, n) if n else b""


def connect():
    ai = socket.getaddrinfo(cfg["host"], cfg["port"], 0, socket.SOCK_STREAM)[0]
    raw = socket.socket(ai[0], socket.SOCK_STREAM)
    raw.connect(ai[-1])
    raw.setsockopt(6, 1, 1)  # TCP_NODELAY, as the firmware's adapter sets it
    with open(cfg["ca"], "rb") as f:
        ca = f.read()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=ca)
    ca = None
    s = ctx.wrap_socket(raw, server_hostname=cfg["host"])
    body = (field(b"MQTT") + b"\x04\xc2\x00\x3c" + field(cfg["client_id"].encode())
            + field(cfg["username"].encode()) + field(cfg["password"].encode()))
    s.write(packet(0x10, body))
    kind, ack = read_packet(s)
    if kind != 0x20 or ack[1] != 0:
        raise OSError("CONNACK %r" % ack)
    return s


def publish_all(s, first, count, window):
    prefix = cfg["prefix"]
    pending = 0
    n = first
    last = first + count
    while n < last or pending:
        while n < last and pending < window:
            topic = (prefix + "%24.mid=bench-" + str(n) + "&%24.ct=application%2Fjson&%24.ce=utf-8").encode()
            pid = n & 0xFFFF or 1
            body = field(topic) + bytes((pid >> 8, pid & 255)) + json.dumps({"seq": n, "t": 21.5}).encode()
            s.write(packet(0x32, body))
            n += 1
            pending += 1
        kind, _ = read_packet(s)
        if kind == 0x40:
            pending -= 1


if cfg["mode"] == "imports":
    print(json.dumps({"code": used()}))
elif cfg["mode"] == "heap":
    boot = used()
    s = connect()
    connected = used()
    publish_all(s, 1, cfg["messages"], 1)
    steady = used()
    total = gc.mem_alloc() + gc.mem_free()
    s.write(b"\xe0\x00")
    s.close()
    print(json.dumps({"done": True, "boot": boot, "connected": connected, "steady": steady,
                      "end": steady, "heap_total": total, "sent": cfg["messages"]}))
else:
    start = time.time_ns()
    s = connect()
    publish_all(s, cfg["first"], cfg["messages"], cfg["window"])
    end = time.time_ns()
    s.write(b"\xe0\x00")
    s.close()
    print(json.dumps({"done": True, "start_ns": start, "end_ns": end, "sent": cfg["messages"]}))
