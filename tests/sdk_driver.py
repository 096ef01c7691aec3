"""Drive Microsoft's azure-iot-device SDK from a test, one JSON request per line on stdin.

Runs under .venv-sdk/bin/python, never under the project's .venv: azure-iot-device 2.14 pins
paho-mqtt<2 while the project's own tools and tests use paho-mqtt 2, so the SDK gets its own
interpreter with exactly the dependencies Microsoft tested it with. Nothing of edgekit is
imported here: the SDK sees the gateway only as a device in the field would.

Request:  {"op": "create", ...} | {"op": "connect"} | {"op": "send", ...} | ... (see OPS)
Answer:   {"ok": value} or {"error": "ExceptionName: message"}, one line each.
The SDK logs at DEBUG into argv[1], so a failing test can show what the SDK did.
"""
import json
import logging
import queue
import sys

from azure.iot.device import IoTHubDeviceClient, IoTHubModuleClient, Message, MethodResponse, X509


class Device:
    """One SDK client with its handlers: C2D and desired patches are queued, methods answered."""

    def __init__(self, req):
        opts = {"server_verification_cert": open(req["ca"]).read(),
                "keep_alive": req.get("keep_alive", 30),
                "connection_retry_interval": req.get("retry_interval", 1)}
        if "sastoken_ttl" in req:
            opts["sastoken_ttl"] = req["sastoken_ttl"]
        cls = IoTHubModuleClient if req.get("module") else IoTHubDeviceClient
        if "cert" in req:
            x509 = X509(cert_file=req["cert"], key_file=req["key"])
            self.client = cls.create_from_x509_certificate(
                x509, hostname=req["hub"], device_id=req["device_id"], gateway_hostname=req["gateway"], **opts)
        else:
            self.client = cls.create_from_connection_string(req["connection_string"], **opts)
        self.c2d = queue.Queue()
        self.desired = queue.Queue()
        self.methods = queue.Queue()
        self.connects = 0

    def start(self):
        """Set the handlers: each one subscribes to its feature, which connects the client."""
        self.client.on_connection_state_change = self._on_state
        self.client.on_message_received = self._on_message
        self.client.on_method_request_received = self._on_method
        self.client.on_twin_desired_properties_patch_received = self.desired.put

    def _on_state(self):
        if self.client.connected:
            self.connects += 1

    def _on_message(self, message):
        self.c2d.put({"data": message.data.decode("utf-8", "replace"), "message_id": message.message_id,
                      "custom_properties": dict(message.custom_properties)})

    def _on_method(self, request):
        # Answer every call with what it carried, so the hub side sees a real round trip.
        self.methods.put(request.name)
        answer = {"method": request.name, "echo": request.payload}
        self.client.send_method_response(MethodResponse.create_from_method_request(request, 200, answer))


def _take(q, req):
    try:
        return q.get(timeout=req.get("timeout", 5))
    except queue.Empty:
        raise TimeoutError(f"nothing arrived in {req.get('timeout', 5)} s")


def _send(dev, req):
    msg = Message(req["body"], message_id=req.get("message_id"), content_type=req.get("content_type"),
                  content_encoding=req.get("content_encoding"))
    msg.custom_properties.update(req.get("properties", {}))
    dev.client.send_message(msg)


OPS = {
    "connect": lambda dev, req: dev.client.connect(),
    "disconnect": lambda dev, req: dev.client.disconnect(),
    "connected": lambda dev, req: dev.client.connected,
    "connects": lambda dev, req: dev.connects,
    "send": _send,
    "c2d": lambda dev, req: _take(dev.c2d, req),
    "desired": lambda dev, req: _take(dev.desired, req),
    "method": lambda dev, req: _take(dev.methods, req),
    "get_twin": lambda dev, req: dev.client.get_twin(),
    "report": lambda dev, req: dev.client.patch_twin_reported_properties(req["patch"]),
    "shutdown": lambda dev, req: dev.client.shutdown(),
}


def _describe(e):
    # The SDK wraps transport errors (ConnectionFailedError from an SSLError...): show the chain.
    parts = []
    while e is not None and len(parts) < 4:
        parts.append(f"{type(e).__name__}: {e}".rstrip(": "))
        e = e.__cause__ or e.__context__
    return " <- ".join(parts)


def main():
    logging.basicConfig(filename=sys.argv[1], level=logging.DEBUG,
                        format="%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s")
    dev = None
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if req["op"] == "create":
                dev, value = Device(req), None
                dev.start()  # dev is set first: a client that fails to connect can still shut down
            elif dev is None:
                raise RuntimeError("no SDK client: send create first")
            else:
                value = OPS[req["op"]](dev, req)
            answer = {"ok": value}
        except Exception as e:  # every failure goes back to the test, which decides
            logging.exception("op %s failed", req["op"])
            answer = {"error": _describe(e)}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
