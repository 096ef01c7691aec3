# The public device API: what a user's main.py or code.py writes (docs/firmware-api.md).
# One Device wraps the client app.start() boots; handlers are plain functions, as in
# azure-iot-device (on_message_received, ...) and Adafruit's AzureIoT callbacks. Kept small:
# its code sits in the heap beside the user's (2 KiB budget, bench/heap.py).
import time

from azure_edge import log, run_and_unload


class Device:
    """The board as an IoT Hub device (or module) behind its gateway.

    Boots at once (bundle, Wi-Fi, clock, TLS; halts with the reason on a bad bundle) but
    connects only in run() or step(), so handlers can be registered first. builtins=False
    drops the built-in methods (ping, set_interval, reboot) and reported properties.
    """

    def __init__(self, bundle_path=None, builtins=True):
        # Boot code (azure_edge.app) is unloaded once it has run: it is not needed again.
        c, self.port, self._dog = run_and_unload("app", "start", bundle_path)
        self.client = c
        self.level = ("quiet", "info", "debug").index(c.log_level)
        c.log = self._client_log
        c.on_c2d = self._c2d
        c.on_desired = self._desired
        c.idle = self._due  # readings stay on time while a connect waits
        if not builtins:
            c.methods.clear()
            c.info = None
        self.on_message = None   # fn(body: bytes, properties: dict), for C2D messages
        self.on_desired = None   # fn(desired: dict, whole: bool); whole after each (re)connect
        self._tasks = []
        self._held = None        # sends made inside a handler, sent after it (see send)
        self._linked = None
        self.offline_at = self._status_at = 0

    def method(self, name, handler=None):
        """Register a direct method; use as @device.method("name") or method("name", fn).

        handler(payload) returns (status, result), or only result for status 200; result
        must be JSON-able. A handler that raises is answered with 500 and one console line.
        """
        if handler is None:
            return lambda fn: self.method(name, fn) or fn

        def answer(payload):
            r = self._inside(handler, payload)
            return r if isinstance(r, tuple) and len(r) == 2 else (200, r)
        self.client.register(name, answer)

    def every(self, seconds, fn):
        """Call fn() every `seconds` (None: the twin-settable telemetry interval), from run()."""
        self._tasks.append([fn, seconds, 0])
        return fn

    def send(self, body, properties=None, content_type="application/json"):
        """Send telemetry now (queued while offline); body: dict/list (JSON), str or bytes.

        Returns the message's $.mid. Raises ValueError for a message over 256 KiB. Called
        from a handler, it sends once the handler returns (the link is busy receiving) and
        returns None.
        """
        if self._held is not None:
            self._held.append((body, properties, content_type))
            return None
        box = self.client.outbox
        n = len(box)
        mid = self.client.send_telemetry(body, properties, content_type)
        if self.level:
            log("queued %s (%d waiting)" % (mid, len(box)) if len(box) > n else "sent " + mid)
            if self.level > 1:
                log("  %r %r" % (properties, body))
        return mid

    def report(self, properties):
        """Patch the twin's reported properties (sent with the next step)."""
        self.client.report(properties)

    def run(self):
        """Serve the device forever: the link, the periodic work, the console."""
        while True:
            self.step()

    async def run_async(self):
        """The asyncio form of run(): yields to the other tasks between steps."""
        import asyncio
        while True:
            self.step(0.05)
            await asyncio.sleep(0)

    def step(self, timeout=0.2):
        """One turn of the loop: serve the link about `timeout` s, then the due periodic work."""
        c = self.client
        n = c.sent
        c.step(timeout)  # sends only what the outbox held: one line for those, not one each
        if self.level and c.sent > n:
            log("sent %d queued (%d left)" % (c.sent - n, len(c.outbox)))
        self._dog.feed()
        held, self._held = self._held, None
        for args in held or ():
            self._guard(self.send, *args)
        now = time.time()
        if c.connected is not self._linked:
            self._linked = c.connected
            self.port.status("connected" if c.connected else "offline")
            self.offline_at = now
            self._status_at = now + c.status_every
        if c.reboot_requested:
            c.step(0.2)  # let the method's answer go out first
            log("rebooting on request")
            self.port.reset()
        self._due()
        if not c.connected and now >= self._status_at:
            self._status_at = now + c.status_every
            # Loaded once a minute while offline, and unloaded: not worth its heap otherwise.
            log(run_and_unload("offline", "status", self))

    def _due(self):
        # The periodic work due now: from step(), and from inside a connect's waits. The next
        # run counts from when this one was due, so a task keeps its rate (no drift by the
        # length of a step); one that fell a whole period behind starts afresh, with no burst.
        self._dog.feed()
        now = time.time()
        for task in self._tasks:
            if now >= task[2]:
                nxt = task[2] + (task[1] or self.client.interval)
                task[2] = nxt if nxt > now else now + (task[1] or self.client.interval)
                self._guard(task[0])

    def _c2d(self, body, props):
        if self.level:
            log("C2D message, %d bytes, properties %s" % (len(body), props))
        if self.on_message:
            self._inside(self._guard, self.on_message, body, props)

    def _desired(self, desired, whole):
        if self.level:
            log("desired properties $version=%s (%s)"
                % (desired.get("$version"), "whole twin" if whole else "patch"))
        if self.on_desired:
            self._inside(self._guard, self.on_desired, desired, whole)

    def _inside(self, handler, *args):
        # Handlers run inside MiniMQTT's receive path: a publish there would wait for its
        # PUBACK in the middle of reading another packet, so their sends are held till after.
        if self._held is None:
            self._held = []
        return handler(*args)

    def _guard(self, fn, *args):
        try:
            fn(*args)
        except Exception as e:
            log("%s failed: %s: %s" % (getattr(fn, "__name__", "handler"), type(e).__name__, e))

    def _client_log(self, msg):
        # Quiet keeps the diagnoses and link events; it drops the line per method answered
        # unless the answer is an error.
        if self.level or msg[:7] != "method " or " -> 5" in msg:
            log(msg)
