"""The board's console: shown live (`edgekit monitor`), or watched after a deploy for the verdict.

Both read a pyserial port (a device or a URL such as socket://127.0.0.1:PORT), so they work
the same on a USB board and on the simulated one.
"""
import os
import select
import struct
import sys
import time

try:
    import fcntl
    import termios
except ImportError:  # Windows: no FIONREAD, but its serial ports' in_waiting is exact
    fcntl = None

ESCAPE = b"\x1d"  # Ctrl-], as in mpremote and miniterm
# What the firmware prints (azure_edge/app.py, client.py, diagnose.py), in the order they matter.
FAILED = ("[edgekit] cannot start:", "CONNACK", "TLS:")
CONNECTED = "[edgekit] connected to"
# The REPL banner's second line: main.py has ended and the board waits at its prompt.
AT_REPL = 'Type "help()" for more information.'
# How the firmware says it cannot reach the gateway (azure_edge/diagnose.py explain()): once per
# change of reason, with readings queued and "retrying in" lines between.
UNREACHABLE = ("refused the connection", "no answer from ", "no route to ", "cannot resolve ",
               "cannot connect to ", "out of memory while connecting")


BLOCK = 65536  # at most this much per read: 0.1 s of a 5 Mbit/s port, a bounded copy
WAIT = 0.05  # longest a read waits for the board, so loops still see their deadline and keys


class ConsoleError(OSError):
    """The board's port cannot be opened or read."""


def open_console(url, baud=115200):
    """A pyserial port on url; ConsoleError (one line) when it cannot be opened."""
    import serial

    try:
        return serial.serial_for_url(url, baudrate=baud, timeout=0)
    except (serial.SerialException, OSError, ValueError) as e:
        raise ConsoleError(f"cannot open {url}: {e}; is the board plugged in and the port free?") from None


def read_available(port, wait=WAIT, wake=None):
    """All the board has sent so far (up to BLOCK bytes), waiting up to wait s for the first.

    Works on every pyserial port whatever its timeout: a device or pty and socket:// by the
    byte count their file descriptor holds (socket://'s in_waiting says at most 1), rfc2217://
    by its reader thread's queue, which has no descriptor to wait on and is polled every 5 ms.
    wake: a file descriptor (stdin) that also ends the wait. Returns b"" when nothing came.
    """
    fd = _fileno(port)
    if fd is None:
        deadline = time.monotonic() + wait
        while not port.in_waiting and time.monotonic() < deadline:
            if select.select([wake] if wake is not None else [], [], [], 0.005)[0]:
                break
        data = bytearray()
        # rfc2217's read() with timeout 0 hands back one byte a call: ask until the queue is empty.
        while len(data) < BLOCK and port.in_waiting:
            data += port.read(min(port.in_waiting, BLOCK - len(data)))
        return bytes(data)
    n = _pending(fd)
    if not n:
        ready = select.select([fd] + ([wake] if wake is not None else []), [], [], wait)[0]
        if fd not in ready:
            return b""
        # Readable with nothing pending is the end of the line: read() raises pyserial's error.
        n = _pending(fd) or 1
    return port.read(min(n, BLOCK))  # never blocks: n bytes are there


def _fileno(port):
    if fcntl is None:
        return None
    try:
        return port.fileno()
    except (AttributeError, NotImplementedError, OSError, ValueError):
        return None  # rfc2217:// (no descriptor of its own), or a closed port


def _pending(fd):
    # FIONREAD: the bytes a tty or a socket holds for reading.
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def garbled(data):
    """True when data is not console text: what a UART read at the wrong speed gives."""
    text = sum(1 for b in data if 32 <= b < 127 or b in (9, 10, 13))
    return text < 0.8 * len(data)


def verdict(line):
    """'failed', 'connected' or None for one console line."""
    if any(mark in line for mark in FAILED):
        return "failed"
    if CONNECTED in line:
        return "connected"
    return None


def watch(port, seconds, echo=None):
    """Read console lines for up to seconds; return (outcome, line).

    outcome is 'failed' (line: the board's own message, or the exception that ended main.py),
    'connected', 'ended' (main.py returned to the REPL; line: its last line), 'unreachable'
    (still retrying when the time ran out; line: the firmware's diagnosis of the last failed
    connect, not the retry line) or 'trying' (line: the last thing the board printed, or ''
    when it printed nothing). echo receives each line.
    """
    end = time.monotonic() + seconds
    pending, last = b"", ""
    in_traceback = False
    last_own = ""  # the last line before the REPL banner
    diagnosis = ""  # the firmware's latest reason for a failed connect
    while time.monotonic() < end:
        data = read_available(port, min(WAIT, max(0.0, end - time.monotonic())))
        if not data:
            continue
        pending += data
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            if echo:
                echo(line)
            if in_traceback and not line.startswith('File "'):
                return "failed", line  # the exception that ended main.py
            in_traceback = in_traceback or line.startswith("Traceback (most recent call last)")
            if line == AT_REPL:
                return "ended", last_own
            if line.startswith("[edgekit] ") and any(mark in line for mark in UNREACHABLE):
                diagnosis = line
            if not line.startswith("MicroPython "):
                last_own = line
            last = line
            outcome = verdict(line)
            if outcome:
                return outcome, line
    return ("unreachable", diagnosis) if diagnosis else ("trying", last)


def monitor(port, stdin=None, stdout=None, seconds=None, garbage=None):
    """Copy the console to stdout and keystrokes to the board until Ctrl-] (or seconds pass).

    A terminal stdin goes into raw mode for the session (restored after); a piped stdin is
    forwarded as it comes, and its end leaves the console showing. Returns why it ended:
    'escape' or 'time'. garbage: called once with the byte count when the board's first output
    is not text, as when the port's speed is not the console's.
    """
    stdin = stdin if stdin is not None else sys.stdin.buffer
    stdout = stdout if stdout is not None else sys.stdout.buffer
    fd = stdin.fileno()
    restore = _raw_mode(fd)
    end = None if seconds is None else time.monotonic() + seconds
    reading = True
    first = b""  # the board's first output, to tell text from a wrong speed's garbage
    try:
        while end is None or time.monotonic() < end:
            data = read_available(port, WAIT, wake=fd if reading else None)
            if data:
                stdout.write(data)
                stdout.flush()
                if garbage and len(first) < 64:
                    first += data
                    if len(first) >= 64 and garbled(first):
                        garbage(len(first))
            if reading and select.select([fd], [], [], 0)[0]:
                keys = os.read(fd, 64)
                if not keys:
                    reading = False  # stdin ended: keep showing the console
                elif ESCAPE in keys:
                    port.write(keys[:keys.index(ESCAPE)])
                    return "escape"
                else:
                    port.write(keys)
        return "time"
    finally:
        restore()


def _raw_mode(fd):
    # Raw keys only on a terminal: Ctrl-C then reaches the board (as in mpremote), Ctrl-] leaves.
    if not os.isatty(fd):
        return lambda: None
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    return lambda: termios.tcsetattr(fd, termios.TCSADRAIN, saved)
