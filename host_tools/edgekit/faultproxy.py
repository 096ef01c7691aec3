"""A TCP fault proxy on loopback: a delay line plus the faults a device meets on a real network.

Put it between a device and its gateway (the device connects to the proxy's port, TLS still
runs end to end, so the proxy never sees plaintext). It adds a fixed one-way delay without
breaking pipelining (every chunk is timestamped when read and released `delay` seconds later),
and it can, while running: drop every connection with a TCP RST, stall all traffic, swallow new
connections (half-open from the device's view), reset a connection part-way through a packet,
and read slowly.

    with FaultProxy("127.0.0.1", gw_port, delay=0.005) as proxy:   # +10 ms RTT
        connect_device_to(proxy.port)
        proxy.stall(30)

The asyncio loop runs in its own thread; every control method is safe to call from any thread.
"""
import asyncio
import socket
import struct
import threading
import time

import click

from edgekit.errors import UserError

_CHUNK = 65536
_RST = object()  # queued after the last bytes to forward: abort both sides once they are written


class FaultProxyError(ValueError):
    """The proxy cannot be set up as asked (bad address, port in use, bad value)."""


def parse_target(text):
    """'HOST:PORT' -> (host, port); FaultProxyError says what is wrong."""
    host, sep, port = (text or "").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FaultProxyError(f"target {text!r} is not HOST:PORT (e.g. 127.0.0.1:8883)")
    return host, int(port)


def _abort(writer):
    # SO_LINGER 0 makes the close send RST instead of FIN: the peer sees ECONNRESET, as when a
    # NAT or access point forgets the flow.
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


class _Link:
    """One proxied connection: the device side, the gateway side and their two pump tasks."""

    def __init__(self, down_writer):
        self.down = down_writer
        self.up = None
        self.tasks = []
        self.ended = 0  # directions that finished with a clean EOF

    def abort(self):
        for w in (self.down, self.up):
            if w is not None:
                _abort(w)
        for t in self.tasks:
            t.cancel()


class FaultProxy:
    """Forward 127.0.0.1:listen_port to target_host:target_port with a delay and injectable faults."""

    def __init__(self, target_host, target_port, listen_host="127.0.0.1", listen_port=0, delay=0.0):
        if delay < 0:
            raise FaultProxyError(f"delay must be 0 or more seconds, not {delay}")
        self.target = (target_host, int(target_port))
        self.listen = (listen_host, int(listen_port))
        self.delay = float(delay)
        self.port = None
        self.connections = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self._links = set()
        self._blackhole = False
        self._reset_after = None
        self._rate = None
        self._loop = None
        self._thread = None
        self._server = None
        self._flowing = None  # {True: device-to-gateway, False: gateway-to-device} asyncio.Events
        self._resume_handle = None

    # --- life cycle -------------------------------------------------------------------------
    def start(self):
        """Listen and forward in a background thread; returns self once the port is open."""
        ready = threading.Event()
        failure = []

        def run():
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._open())
            except (OSError, OverflowError) as e:
                failure.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._close())
            loop.close()

        self._thread = threading.Thread(target=run, name="faultproxy", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            why = getattr(failure[0], "strerror", None) or failure[0]
            raise FaultProxyError(f"cannot listen on {self.listen[0]}:{self.listen[1]}: {why}")
        return self

    async def _open(self):
        self._flowing = {True: asyncio.Event(), False: asyncio.Event()}
        for flow in self._flowing.values():
            flow.set()
        self._server = await asyncio.start_server(self._accept, self.listen[0], self.listen[1])
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self):
        self._server.close()
        for link in list(self._links):
            link.abort()
        self._links.clear()
        await self._server.wait_closed()
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def stop(self):
        """Close the listener and every connection (RST), and end the thread."""
        if self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _call(self, fn, *args):
        # Run fn in the loop thread and wait for it: controls take effect before they return.
        if self._thread is None:
            raise FaultProxyError("the proxy is not running: call start() first")
        done = threading.Event()

        def wrapped():
            try:
                fn(*args)
            finally:
                done.set()

        self._loop.call_soon_threadsafe(wrapped)
        done.wait(10)

    # --- faults -----------------------------------------------------------------------------
    def drop_all(self):
        """Close every current connection abruptly (RST to both device and gateway)."""
        def drop():
            for link in list(self._links):
                link.abort()
            self._links.clear()
        self._call(drop)

    def stall(self, seconds=None, direction="both"):
        """Stop forwarding, sockets kept open; resume after `seconds` (None: at resume()).

        direction "both" (a dead link), "up" (device to gateway only) or "down" (gateway to
        device only: the gateway got a PUBLISH, its PUBACK is held).
        """
        if direction not in ("both", "up", "down"):
            raise FaultProxyError(f"direction must be 'both', 'up' or 'down', not {direction!r}")
        ups = {"both": (True, False), "up": (True,), "down": (False,)}[direction]

        def stall():
            self._cancel_resume()
            for up in ups:
                self._flowing[up].clear()
            if seconds is not None:
                self._resume_handle = self._loop.call_later(seconds, self._resume_all)
        self._call(stall)

    def _cancel_resume(self):
        if self._resume_handle is not None:
            self._resume_handle.cancel()
            self._resume_handle = None

    def _resume_all(self):
        self._cancel_resume()
        for flow in self._flowing.values():
            flow.set()

    def resume(self):
        """End a stall: queued bytes flow again, in order."""
        self._call(self._resume_all)

    def blackhole(self, on=True):
        """While on, accept new connections but never forward them (connections already open go on)."""
        self._blackhole = bool(on)

    def reset_mid_packet(self, after_bytes):
        """Forward `after_bytes` more device-to-gateway bytes, then RST that connection both sides."""
        if after_bytes < 0:
            raise FaultProxyError(f"after_bytes must be 0 or more, not {after_bytes}")
        self._call(lambda: setattr(self, "_reset_after", int(after_bytes)))

    def slow_read(self, bytes_per_second=None):
        """Read from each side at most bytes_per_second (None: full speed)."""
        if bytes_per_second is not None and bytes_per_second <= 0:
            raise FaultProxyError(f"bytes_per_second must be positive, not {bytes_per_second}")
        self._rate = bytes_per_second

    # --- forwarding -------------------------------------------------------------------------
    async def _accept(self, reader, writer):
        self.connections += 1
        link = _Link(writer)
        self._links.add(link)
        if self._blackhole:
            # Read and discard: the device's writes succeed and nothing ever answers.
            link.tasks.append(asyncio.current_task())
            try:
                while await reader.read(_CHUNK):
                    pass
            except (OSError, asyncio.CancelledError):
                pass
            self._forget(link)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self._forget(link)
            _abort(writer)
            return
        link.up = up_writer
        if link not in self._links:  # dropped while connecting
            link.abort()
            return
        up_q, down_q = asyncio.Queue(), asyncio.Queue()
        link.tasks = [asyncio.ensure_future(c) for c in (
            self._read(reader, up_q, link, upstream=True), self._write(up_q, up_writer, link, upstream=True),
            self._read(up_reader, down_q, link, upstream=False),
            self._write(down_q, writer, link, upstream=False))]

    def _forget(self, link):
        self._links.discard(link)

    async def _read(self, reader, queue, link, upstream):
        try:
            while True:
                await self._flowing[upstream].wait()
                rate = self._rate
                # Slow read: small reads paced to the rate, so the sender's buffers fill up.
                data = await reader.read(max(1, int(rate * 0.05)) if rate else _CHUNK)
                if not data:
                    break
                if rate:
                    await asyncio.sleep(len(data) / rate)
                if upstream and self._reset_after is not None:
                    cut = self._reset_after
                    self._reset_after = None
                    if cut <= len(data):
                        queue.put_nowait((time.monotonic() + self.delay, data[:cut]))
                        queue.put_nowait((time.monotonic() + self.delay, _RST))
                        return
                    self._reset_after = cut - len(data)
                queue.put_nowait((time.monotonic() + self.delay, data))
        except (OSError, asyncio.CancelledError):
            queue.put_nowait((0, _RST))
            return
        queue.put_nowait((time.monotonic() + self.delay, None))  # clean EOF: pass the FIN on

    async def _write(self, queue, writer, link, upstream):
        try:
            while True:
                release, data = await queue.get()
                wait = release - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._flowing[upstream].wait()
                if data is _RST:
                    self._forget(link)
                    link.abort()
                    return
                if data is None:
                    if writer.can_write_eof():
                        writer.write_eof()
                    link.ended += 1
                    if link.ended == 2:  # both sides closed cleanly: nothing left to forward
                        self._forget(link)
                        link.down.close()
                        link.up.close()
                    return
                writer.write(data)
                await writer.drain()
                if upstream:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
        except (OSError, asyncio.CancelledError):
            self._forget(link)
            link.abort()


def serve_forever(target, listen_port, delay):
    """Run a proxy until interrupted (the CLI's body); prints where it listens."""
    host, port = parse_target(target)
    proxy = FaultProxy(host, port, listen_port=listen_port, delay=delay).start()
    try:
        print(f"faultproxy 127.0.0.1:{proxy.port} -> {host}:{port} delay {delay * 1000:g} ms each way",
              flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        proxy.stop()


@click.command("faultproxy")
@click.option("--target", required=True, help="where to forward: HOST:PORT (e.g. 127.0.0.1:8883)")
@click.option("--listen", "listen_port", default=0, show_default=True, type=click.IntRange(0, 65535),
              help="local port on 127.0.0.1; 0 picks a free one")
@click.option("--delay-ms", default=0.0, show_default=True, type=click.FloatRange(min=0), help="added to each direction")
def faultproxy_cmd(target, listen_port, delay_ms):
    """A loopback TCP proxy that delays traffic (RTT + 2 x delay), for trying a device on a slow link."""
    try:
        serve_forever(target, listen_port, delay_ms / 1000.0)
    except FaultProxyError as e:
        raise UserError(str(e))
