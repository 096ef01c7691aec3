# The public device API: what a user's main.py or code.py writes (docs/firmware-api.md).
# One Device wraps the client app.start() boots; handlers are plain functions, as in
# azure-iot-device (on_message_received, ...) and Adafruit's AzureIoT callbacks.
import time

from azure_edge import app

QUIET, INFO, DEBUG = 0, 1, 2
LEVELS = {"quiet": QUIET, "info": INFO, "debug": DEBUG}


class Device:
    """The board as an IoT Hub device (or module) behind its gateway.

    Boots at once (bundle, Wi-Fi, clock, TLS; halts with the reason on a bad bundle) but
    connects only in run() or step(), so handlers can be registered first. builtins=False
    drops the built-in methods (ping, set_interval, reboot) and reported properties.
    """

    def __init__(self, bundle_path=None, builtins=True):
        client, self.port, self._dog = app.start(bundle_path)
        self.client = client
        self.level = LEVELS.get(getattr(client, "log_level", "info"), INFO)
        self.status_every = getattr(client, "status_every", 60)
        client.log = self._client_log
        client.on_c2d = self._c2d
        client.on_desired = self._desired
        if not builtins:
            client.methods.clear()
            client.info = None
        self.on_message = None   # fn(body: bytes, properties: dict), for C2D messages
        self.on_desired = None   # fn(desired: dict, whole: bool); whole after each (re)connect
        self._tasks = []
        self._held = None        # sends made inside a handler, sent after it (see send)
        self._linked = None
        self._offline_at = time.time()
        self._status_at = 0

    # --- what the user registers -----------------------------------------------------

    def method(self, name, handler=None):
        """Register a direct method; use as @device.method("name") or method("name", fn).

        handler(payload) returns (status, result), or only result for status 200; result
        must be JSON-able. A handler that raises is answered with 500 and one console line.
        """
        if handler is None:
            return lambda fn: self.method(name, fn) or fn
        self.client.register(name, lambda payload: _answer(self._inside(handler, payload)))

    def every(self, seconds, fn):
        """Call fn() every `seconds` (None: the twin-settable telemetry interval), from run()."""
        self._tasks.append([fn, seconds, time.time()])
        return fn

    # --- what the user calls ----------------------------------------------------------

    def send(self, body, properties=None, content_type="application/json"):
        """Send telemetry now (queued while offline); body: dict/list (JSON), str or bytes.

        Returns the message's $.mid. Raises ValueError for a message over 256 KiB. Called
        from a handler, it sends once the handler returns (the link is busy receiving) and
        returns None.
        """
        if self._held is not None:
            self._held.append((body, properties, content_type))
            return None
        c = self.client
        queued = len(c.outbox)
        mid = c.send_telemetry(body, properties, content_type)
        if self.level:
            waiting = len(c.outbox)
            if waiting > queued:
                self._log("queued %s (%d waiting)" % (mid, waiting))
            else:
                self._log("sent %s" % mid)
            if self.level >= DEBUG:
                self._log("  body %r" % (body if len(str(body)) < 80 else str(body)[:80] + "..."))
        return mid

    def report(self, properties):
        """Patch the twin's reported properties (sent with the next step)."""
        self.client.report(properties)

    @property
    def connected(self):
        """True while the link to the gateway is up."""
        return self.client.connected

    # --- the loop ---------------------------------------------------------------------

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
        c.step(timeout)
        self._dog.feed()
        self._release()
        if c.connected is not self._linked:
            self._linked = c.connected
            self.port.status("connected" if c.connected else "offline")
            self._offline_at = time.time()
            self._status_at = self._offline_at + self.status_every
        if c.reboot_requested:
            c.step(0.2)  # let the method's answer go out first
            self._log("rebooting on request")
            self.port.reset()
        now = time.time()
        for task in self._tasks:
            if now >= task[2]:
                task[2] = now + (task[1] or c.interval)
                try:
                    task[0]()
                except Exception as e:
                    self._log("%s failed: %s" % (getattr(task[0], "__name__", "task"), _short(e)))
        if not c.connected and now >= self._status_at:
            self._status_at = now + self.status_every
            self._log(self.status_line())

    def status_line(self):
        """What the console says once a minute while offline."""
        c = self.client
        retry = max(0, _retry_in(c))
        return ("offline for %d s; %d readings queued; next retry in %d s; last error: %s"
                % (time.time() - self._offline_at, len(c.outbox), retry, c.last_error or "none"))

    # --- the client's callbacks ---------------------------------------------------------

    def _c2d(self, body, props):
        if self.level:
            self._log("C2D message, %d bytes, properties %s" % (len(body), props))
        if self.on_message:
            self._inside(self.on_message, body, props)

    def _desired(self, desired, whole=False):
        if self.level:
            self._log("desired properties $version=%s (%s)"
                      % (desired.get("$version"), "whole twin" if whole else "patch"))
        if self.on_desired:
            try:
                self._inside(self.on_desired, desired, whole)
            except Exception as e:
                self._log("on_desired failed: %s" % _short(e))

    def _inside(self, handler, *args):
        # Handlers run inside MiniMQTT's receive path: a publish there would wait for its
        # PUBACK in the middle of reading another packet, so their sends are held till after.
        if self._held is None:
            self._held = []
        try:
            return handler(*args)
        finally:
            if self._held == []:
                self._held = None

    def _release(self):
        held, self._held = self._held, None
        for body, props, ct in held or ():
            try:
                self.send(body, props, ct)
            except ValueError as e:
                self._log("message not sent: %s" % e)

    def _client_log(self, msg):
        # Quiet keeps the diagnoses and link events; it drops the line per method answered
        # unless the answer is an error.
        if self.level or not msg.startswith("method ") or " -> 5" in msg:
            app.log(msg)

    def _log(self, msg):
        app.log(msg)


def _answer(r):
    if isinstance(r, tuple) and len(r) == 2 and isinstance(r[0], int):
        return r
    return 200, r


def _retry_in(c):
    from adafruit_ticks import ticks_diff, ticks_ms
    return ticks_diff(c._retry_at, ticks_ms()) // 1000


def _short(err):
    text = str(err).strip().replace("\n", " ")
    return type(err).__name__ + (": " + text[:100] if text else "")
