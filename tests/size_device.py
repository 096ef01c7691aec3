# A device for the size-edge test: the real firmware (app.start and its Client) offers two
# readings whose PUBLISH packets are exactly the gateway's limit and one byte over it, then
# keeps the link served. Console: "accepted <packet bytes>" or "refused <packet bytes>: <why>".
import sys
import time

sys.path.append("/lib")

from azure_edge import app, topics  # noqa: E402

LIMIT = 262144

client, _port, dog = app.start()
while not client.connected:
    client.step(0.2)
for extra in (0, 1):
    mid = client._boot + "-" + str(client._seq + 1)  # the $.mid send_telemetry will give it
    bag = topics.encode_properties({"$.mid": mid, "$.ct": "application/json", "$.ce": "utf-8"})
    head = b'{"seq": -1, "pad": "'
    tlen = len(client._prefix) + len(bag)
    # Fixed header 1, remaining length 3 (a packet this size), topic length 2, packet id 2.
    body_len = LIMIT - (1 + 3 + 2 + tlen + 2) + extra
    body = head + b"x" * (body_len - len(head) - 2) + b'"}'
    size = 1 + 3 + 2 + tlen + 2 + len(body)
    try:
        client.send_telemetry(body)
        print("accepted %d" % size)
    except ValueError as e:
        print("refused %d: %s" % (size, e))
    body = None
end = time.time() + 3
while time.time() < end:
    client.step(0.2)
print("size test done")
