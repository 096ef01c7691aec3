"""The simulated board: the real unix `micropython` on a pty, served as a serial port over TCP.

A client (mpremote, pyserial, `edgekit deploy`) opens socket://127.0.0.1:PORT and sees
what a USB-serial board shows: a friendly REPL, the raw REPL mpremote drives, and
`MPY: soft reboot` when it soft-resets. The unix interpreter ends its process where a
board soft-resets, so the supervisor restarts it and runs boot.py (and main.py after
a friendly-REPL reset or a hard reset) from the board's flash folder.

The same board is also served over RFC 2217 (rfc2217://127.0.0.1:PORT2), where it is as
strict as an ESP32-DevKitC behind its USB-serial bridge: a client at another speed than
the board's console reads garbage and sends garbage, and DTR/RTS drive EN and IO0 as the
DevKitC's auto-reset circuit does (held in reset, ROM download mode, power-on boot).
"""
import json
import os
import selectors
import signal
import socket
import sys
import termios
import threading
import time
import traceback
from pathlib import Path

from serial.rfc2217 import PortManager

from edgekit.sim.uart import UartEnd, en_low, io0_low, resample

BOARD_FILES = Path(__file__).resolve().parent / "board"
DEFAULT_HEAP = "192K"

# Escapes _simboot.py and the machine stand-in write to talk to the supervisor.
_MARK = b"\x1b]edgekit-sim:"
_END = b"\x07"
_RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
_FRIENDLY_MARKS = (b"\nMicroPython ", b"\r\n>>> ")
_SOFT_REBOOT = b"MPY: soft reboot\r\n"
# Causes as the esp32 port numbers them (machine.reset_cause()).
PWRON_RESET = 1  # machine.reset_cause() after a fresh start; machine.py sends the others
CONSOLE_BAUD = 115200  # MicroPython's REPL on an ESP32's UART0
# The ESP32's ROM prints at 115200 (40 MHz crystal), whatever the console runs at later.
ROM_BAUD = 115200
_ROM_BANNER = b"ets Jun  8 2016 00:22:57\r\n\r\n"
ROM_BOOT = _ROM_BANNER + b"rst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n"
ROM_DOWNLOAD = (_ROM_BANNER + b"rst:0x1 (POWERON_RESET),boot:0x3 (DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2))\r\n"
                b"waiting for download\r\n")
# How long after EN is released the chip leaves reset and reads IO0. EN charges through an
# RC; this one is slow (as a board with the 1-10 uF EN capacitor Espressif suggests when
# auto-download fails) because RFC 2217 cannot change DTR and RTS at once: pyserial's client
# waits for each change to be acknowledged, about 50 ms, and esptool's reset passes through
# "both released" on its way from "EN low" to "IO0 low".
EN_RISE = 0.1


class SimError(RuntimeError):
    """The simulated board could not start (no interpreter, port taken, bad folder)."""


PARTITIONS_ENV = "EDGEKIT_SIM_PARTITIONS"  # read by board/esp32.py


def partition_table(outbox_blocks=None, ota=False):
    """The sim board's partition table as `edgekit flash` would write it: (label, type, subtype,
    offset, size) rows from boards/sim.json (edgekit.partitions.sim_partitions), its outbox
    outbox_blocks 4096-byte blocks when given, none when 0 (`--no-outbox-partition`); ota: the
    table of MicroPython's OTA variant (ota_0, ota_1, otadata)."""
    from dataclasses import replace

    from edgekit import partitions
    from edgekit.boards import load_board

    board = load_board("sim")
    if outbox_blocks is not None:
        board = replace(board, outbox_partition_size=outbox_blocks * partitions.DATA_ALIGN or None)
    try:
        rows = partitions.sim_partitions(board, ota=ota)
    except partitions.PartitionError as e:
        raise SimError(f"the simulated board's partition table: {e}") from None
    if not any(r[0] == "vfs" for r in rows):
        # MicroPython 1.26+ (micropython#17337) registers a vfs at boot, from the firmware's end
        # to the flash's end, when the table has none: find() lists it on a board.
        end = max(r[3] + r[4] for r in rows)
        rows.append(("vfs", partitions.TYPE_DATA, partitions.SUBTYPE_FAT, end,
                     partitions.flash_bytes(partitions.SIM_FLASH_SIZE) - end))
    return rows


def partitions_env(rows, outbox_image, images=None):
    """PARTITIONS_ENV's JSON for rows: the outbox's row names the host file holding its blocks,
    and so do the rows in images ({label: host file}: the OTA slots and otadata)."""
    images = dict(images or {}, outbox=outbox_image)
    return json.dumps([list(r) + ([str(images[r[0]])] if r[0] in images else []) for r in rows])


def micropython_path():
    """The unix `micropython` executable installed beside this Python (the dev extras)."""
    here = Path(sys.executable).parent / "micropython"
    if here.exists():
        return str(here)
    raise SimError(f"micropython is not installed in {here.parent}; run 'make setup'")


class SimBoard:
    """One simulated board: its flash folder, its interpreter and its TCP serial port.

    flash: the board's filesystem root ("/" as the firmware sees it). Its /data is LittleFS
        on a simulated NOR chip in FLASH-data.img beside the folder, whose erase and program
        counts the board keeps in FLASH-data.wear.json (board/_simnor.py; .wear_path).
    port: TCP port on 127.0.0.1 (0 picks a free one; read .port after start()).
    heap: the interpreter's GC heap (-X heapsize). The unix port is 64-bit, so its
        objects are about twice an ESP32's: 192K here holds roughly what the ~110 KiB
        heap of a plain ESP32 holds once it has grown.
    log: console log file (default: console.log beside the flash folder).
    baud: the console's speed; an RFC 2217 client at another speed reads and sends garbage.
    rfc2217: also serve the board over RFC 2217, on rfc2217_port (0: a free one).
    en_rise: seconds from EN released to the chip leaving reset (see EN_RISE).
    outbox_blocks: the raw "outbox" partition `edgekit flash` adds, in 4096-byte blocks, kept in
        FLASH-outbox.img beside the flash folder (survives restarts as /data does). None: the
        size boards/sim.json gives, as a flashed DevKitC has; 0: none, as a board flashed with
        --no-outbox-partition (the firmware then keeps its outbox in files on /data).
    ota: flashed with MicroPython's OTA variant: ota_0, ota_1 and otadata in FLASH-<label>.img
        beside the flash folder, ota_0 holding the image flashed (sim_ota_image), and the
        second-stage bootloader's choice made at each reset (sim/otaboot.py). The same unix
        MicroPython runs whichever slot is chosen: esp32.Partition(RUNNING) tells which.
    """

    def __init__(self, flash, port=0, heap=DEFAULT_HEAP, log=None, micropython=None,
                 baud=CONSOLE_BAUD, rfc2217=True, rfc2217_port=0, en_rise=EN_RISE, outbox_blocks=None,
                 ota=False):
        self.flash = Path(flash).resolve()
        self.requested_port = port
        self.heap = heap
        self.log_path = Path(log) if log else self.flash.parent / "console.log"
        # Beside the flash folder, not in it: a deploy or `fs cp` of "/" never sees the image.
        self.data_image = self.flash.parent / f"{self.flash.name}-data.img"
        self.wear_path = self.flash.parent / f"{self.flash.name}-data.wear.json"
        # The table `edgekit flash` writes (board/esp32.py reads it from PARTITIONS_ENV); the
        # outbox partition's blocks live in FLASH-outbox.img. A new size makes a new, erased
        # image, as flashing a new table erases the chip.
        self.partitions = partition_table(outbox_blocks, ota)
        self.ota = ota
        self.images = {r[0]: self.flash.parent / f"{self.flash.name}-{r[0]}.img" for r in self.partitions
                       if ota and r[0] in ("otadata", "ota_0", "ota_1")}
        self.running = None  # the app partition the bootloader chose (None: no OTA slots)
        self.outbox_blocks = next((r[4] for r in self.partitions if r[0] == "outbox"), 0) // 4096
        self.outbox_image = self.flash.parent / f"{self.flash.name}-outbox.img"
        self.micropython = micropython or micropython_path()
        self.baud = baud
        self.rfc2217 = rfc2217
        self.requested_rfc2217_port = rfc2217_port
        self.en_rise = en_rise
        self.port = None
        self.rfc2217_port = None
        self.boots = 0
        self._listener = None
        self._rfc_listener = None
        self._client = None
        self._uart = None  # the RFC 2217 client's side of the UART; None for a socket:// client
        self._manager = None
        self._en_high = True
        self._release_at = None  # when the chip leaves reset, EN having been released
        self._master = None
        self._pid = None
        self._mode = "friendly"
        self._phase = "stopped"
        self._pending_in = bytearray()
        self._out_hold = b""
        self._swallowed = b""
        self._tail = b""
        self._last_cr = False
        self._reset_cause = PWRON_RESET
        self._log = None
        self._sel = None
        self._wake_r, self._wake_w = None, None
        self._thread = None
        self._stopping = False

    @property
    def url(self):
        """The pyserial URL clients open (socket://127.0.0.1:PORT)."""
        return f"socket://127.0.0.1:{self.port}"

    @property
    def rfc2217_url(self):
        """The RFC 2217 URL (rfc2217://127.0.0.1:PORT2), or None when not served."""
        return f"rfc2217://127.0.0.1:{self.rfc2217_port}" if self.rfc2217_port else None

    @property
    def state(self):
        """Where the chip stands: 'running', 'held in reset', 'waiting for download' or 'off'."""
        return {"held": "held in reset", "download": "waiting for download",
                "stopped": "off"}.get(self._phase, "running")

    def open(self):
        """Create the flash folder, bind the port(s) and power the board on."""
        self.flash.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        _owner_only(self.flash)
        self._listener = _listen(self.requested_port)
        self.port = self._listener.getsockname()[1]
        if self.rfc2217:
            try:
                self._rfc_listener = _listen(self.requested_rfc2217_port)
            except SimError:
                self._listener.close()
                raise
            self.rfc2217_port = self._rfc_listener.getsockname()[1]
        self._log = open(self.log_path, "ab", buffering=0)
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, "accept")
        if self._rfc_listener:
            self._sel.register(self._rfc_listener, selectors.EVENT_READ, "accept-rfc2217")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        if self.ota:
            from edgekit.sim import otaboot
            otaboot.first_flash(self)
        self._reset_boot()
        self._boot("friendly", banner=None)
        return self

    def start(self):
        """open() and serve from a background thread; returns self (use stop() to end)."""
        self.open()
        self._thread = threading.Thread(target=self.serve, name="edgekit-sim", daemon=True)
        self._thread.start()
        return self

    def serve(self):
        """Bridge client and interpreter until stop() or request_stop(); then power off."""
        try:
            while not self._stopping:
                timeout = 0.5
                if self._release_at is not None:
                    timeout = max(0.0, min(timeout, self._release_at - time.monotonic()))
                for key, _ in self._sel.select(timeout=timeout):
                    if key.data == "accept":
                        self._accept(self._listener, rfc2217=False)
                    elif key.data == "accept-rfc2217":
                        self._accept(self._rfc_listener, rfc2217=True)
                    elif key.data == "client":
                        self._from_client(key.fileobj)
                    elif key.data == "pty":
                        self._from_board()
                    elif key.data == "wake":
                        self._wake_r.recv(64)
                self._leave_reset()
                self._flush_input()
                self._reap()
        except Exception:
            # Say why the board died where its user looks: the console log and stderr.
            text = traceback.format_exc()
            sys.stderr.write(f"edgekit sim: internal error, the board stops:\n{text}")
            if self._log:
                self._log.write(f"\r\n[edgekit sim: internal error]\r\n{text}".encode())
            raise
        finally:
            self._close()

    def request_stop(self):
        """Ask serve() to return soon (safe from a signal handler or another thread)."""
        self._stopping = True
        if self._wake_w:
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass

    def stop(self):
        """Power the board off: stop the interpreter, close the port and the log."""
        self.request_stop()
        if self._thread:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- the interpreter -------------------------------------------------------------

    def _boot(self, mode, banner):
        if banner:
            self._emit(banner)
        self._mode = mode
        master, slave = os.openpty()
        attrs = termios.tcgetattr(slave)
        # A UART has no line discipline: every byte reaches the board as sent, whenever it
        # comes. The unix port makes the tty raw only while its REPL waits for input and
        # puts these attrs back while code runs; were they canonical, a Ctrl-D arriving then
        # (mpremote sends Ctrl-B and deploy's Ctrl-D as soon as a command's output ends)
        # would be eaten as end-of-file and read later as NUL: no soft reset (issue 22).
        # So: no echo, no output rewriting, no CR-to-LF, no line editing, no flow control.
        # ISIG stays on so Ctrl-C interrupts a running main.py (the REPL turns it off while
        # it reads a line); NOFLSH keeps the input queued before it, as a UART's buffer
        # does, and Ctrl-\ and Ctrl-Z stay plain bytes.
        attrs[0] &= ~(termios.ICRNL | termios.INLCR | termios.IGNCR | termios.IXON | termios.IXOFF
                      | termios.ISTRIP)
        attrs[1] &= ~termios.OPOST
        attrs[3] &= ~(termios.ICANON | termios.IEXTEN | termios.ECHO | termios.ECHOE | termios.ECHOK
                      | termios.ECHONL | termios.ECHOCTL)
        attrs[3] |= termios.NOFLSH
        attrs[6][termios.VMIN], attrs[6][termios.VTIME] = 1, 0
        attrs[6][termios.VQUIT] = attrs[6][termios.VSUSP] = 0  # 0: disabled
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        name = os.ttyname(slave)
        env = dict(os.environ)
        env.update({
            "MICROPYPATH": str(BOARD_FILES),
            "EDGEKIT_SIM_FLASH": str(self.flash),
            "EDGEKIT_SIM_DATA": str(self.data_image),
            "EDGEKIT_SIM_MODE": mode,
            PARTITIONS_ENV: partitions_env(self.partitions, self.outbox_image, self.images),
            "EDGEKIT_SIM_RUNNING": self.running or "",
            "EDGEKIT_SIM_RESET_CAUSE": str(self._reset_cause),
            # The firmware finds its bundle here, as it would on a board's "/edgekit".
            "EDGEKIT_BUNDLE": "/edgekit",
        })
        argv = [self.micropython, "-X", f"heapsize={self.heap}", "-i", str(BOARD_FILES / "_simboot.py")]
        # The child opens the pty itself after setsid(), which makes it the
        # controlling terminal: that is what turns a Ctrl-C byte into SIGINT.
        # The flash holds the bundle's key: whatever the board writes is owner-only (umask 077,
        # inherited by the child; posix_spawn has no umask of its own).
        umask = os.umask(0o077)
        try:
            self._pid = os.posix_spawn(self.micropython, argv, env, setsid=True, file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, name, os.O_RDWR, 0),
                (os.POSIX_SPAWN_DUP2, 0, 1),
                (os.POSIX_SPAWN_DUP2, 0, 2),
            ])
        finally:
            os.umask(umask)
        os.close(slave)
        os.set_blocking(master, False)
        self._master = master
        self._phase = "starting"  # client input waits until the interpreter can take Ctrl-C
        self._out_hold = b""
        self._swallowed = b""
        self._sel.register(master, selectors.EVENT_READ, "pty")
        self.boots += 1

    def _reset_boot(self):
        # A reset runs the second-stage bootloader (a soft reset does not): with OTA slots it
        # picks the slot, rolling back one booted and never marked valid.
        if self.ota:
            from edgekit.sim import otaboot
            self.running = otaboot.boot(self)
            if self._log:
                self._log.write(f"[sim bootloader] booting {self.running}\r\n".encode())

    def _kill(self):
        if self._master is not None:
            self._sel.unregister(self._master)
            os.close(self._master)
            self._master = None
        if self._pid:
            try:
                os.kill(self._pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(self._pid, 0)
            self._pid = None

    def _reap(self):
        if not self._pid or self._stopping:
            return
        pid, _ = os.waitpid(self._pid, os.WNOHANG)
        if pid:
            self._pid = None
            self._drain_board()
            self._kill()
            # The unix REPL exits where a board soft-resets (Ctrl-D, sys.exit()).
            self._boot(self._mode, _SOFT_REBOOT)

    def _drain_board(self):
        while self._master is not None:
            try:
                data = os.read(self._master, 4096)
            except OSError:
                return
            if not data:
                return
            self._board_output(data)

    def _from_board(self):
        if self._master is None:
            return  # EN went low earlier in this same round: the interpreter is gone
        try:
            data = os.read(self._master, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            # EIO: the interpreter is gone: reap it and boot a new one, as a soft reset does.
            self._sel.unregister(self._master)
            os.close(self._master)
            self._master = None
            if self._pid:
                os.waitpid(self._pid, 0)
                self._pid = None
                self._boot(self._mode, _SOFT_REBOOT)
            return
        self._board_output(data)

    def _board_output(self, data):
        data = self._out_hold + data
        self._out_hold = b""
        while data:
            at = data.find(_MARK)
            if at < 0:
                keep = _partial_suffix(data, _MARK)
                self._board_text(data[:len(data) - keep])
                self._out_hold = data[len(data) - keep:]
                return
            end = data.find(_END, at)
            if end < 0:
                self._board_text(data[:at])
                self._out_hold = data[at:]
                return
            self._board_text(data[:at])
            word = data[at + len(_MARK):end].decode("ascii", "replace")
            data = data[end + 1:]
            if self._signal(word):
                return

    def _signal(self, word):
        """Act on one escape from the interpreter; True when the interpreter was replaced."""
        if word == "boot":
            self._phase = "booting"
        elif word == "ready":
            if self._mode == "raw":
                # Back into the raw REPL the reset came from, as a board does; its
                # friendly banner is not shown.
                self._phase = "entering-raw"
                self._pending_in[:0] = b"\x01"
            else:
                self._phase = "repl"
        elif word == "soft":
            self._kill()
            self._boot(self._mode, _SOFT_REBOOT)
            return True
        elif word.startswith("reset:"):
            self._kill()
            self._reset_cause = int(word[6:])
            self._reset_boot()
            # A hard reset always comes back to the friendly REPL and runs main.py.
            self._boot("friendly", None)
            return True
        return False

    def _board_text(self, text):
        if not text:
            return
        if self._phase == "entering-raw":
            # Swallow the friendly banner until the raw REPL's own banner shows.
            self._swallowed += text
            at = self._swallowed.find(_RAW_BANNER)
            if at < 0:
                return
            self._phase = "repl"
            text = b"\r\n" + self._swallowed[at:]
            self._swallowed = b""
        self._track_mode(text)
        if self._mode == "friendly" or self._phase != "repl":
            text = self._crlf(text)
        self._emit(text)

    def _track_mode(self, text):
        seen = self._tail + text
        raw_at = seen.rfind(_RAW_BANNER[:16])
        friendly_at = max(seen.rfind(m) for m in _FRIENDLY_MARKS)
        if raw_at > friendly_at:
            self._mode = "raw"
        elif friendly_at > raw_at:
            self._mode = "friendly"
        self._tail = seen[-24:]

    def _crlf(self, text):
        # A board's console cooks "\n" into "\r\n"; the unix port prints bare "\n".
        # Raw-REPL traffic is not cooked: it passes byte for byte.
        out = bytearray()
        for i, b in enumerate(text):
            if b == 10 and not (text[i - 1] == 13 if i else self._last_cr):
                out += b"\r"
            out.append(b)
        self._last_cr = text[-1] == 13
        return bytes(out)

    def _emit(self, data, baud=None):
        if self._log and (self._mode == "friendly" or self._phase != "repl" or data == _SOFT_REBOOT):
            self._log.write(data)
        if not self._client:
            return
        if self._uart:
            data = resample(data, baud or self.baud, self._uart.baudrate) if self._mismatch(baud) else data
            data = data.replace(b"\xff", b"\xff\xff")  # Telnet's IAC doubling, as PortManager.escape()
        self._send(data)

    def _send(self, data):
        try:
            self._client.sendall(data)
        except OSError:
            self._drop_client()

    def _mismatch(self, baud=None):
        return self._uart.baudrate != (baud or self.baud)

    # --- EN and IO0 (RFC 2217 clients only) ------------------------------------------

    def _lines(self, dtr, rts):
        """DTR or RTS changed: drive EN and IO0 as the DevKitC's auto-reset circuit does."""
        high = not en_low(dtr, rts)
        if high == self._en_high:
            return
        self._en_high = high
        if high:
            self._release_at = time.monotonic() + self.en_rise
            return
        # EN low: the chip stops where it is and prints nothing until EN rises again.
        self._release_at = None
        self._kill()
        self._pending_in.clear()
        self._out_hold = b""
        self._phase = "held"

    def _leave_reset(self):
        if self._release_at is None or time.monotonic() < self._release_at or self._stopping:
            return
        self._release_at = None
        uart = self._uart
        # The chip reads its strapping pins as it leaves reset: IO0 low is the ROM's download mode.
        if uart and io0_low(uart.dtr, uart.rts):
            self._emit(ROM_DOWNLOAD, ROM_BAUD)
            self._phase = "download"  # no MicroPython: input is ignored until the next reset
            return
        self._emit(ROM_BOOT, ROM_BAUD)
        # The esp32 port reports a reset through EN as a power-on reset.
        self._reset_cause = PWRON_RESET
        self._last_cr = False
        self._reset_boot()
        self._boot("friendly", None)

    # --- the serial client -----------------------------------------------------------

    def _accept(self, listener, rfc2217):
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        # A serial port has one user; the newest connection wins so a forgotten
        # monitor never locks a deploy out.
        self._drop_client()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Reads never block the loop; a client too slow to take output within 10 s is dropped.
        conn.settimeout(10)
        self._client = conn
        self._sel.register(conn, selectors.EVENT_READ, "client")
        if rfc2217:
            self._uart = UartEnd(self._lines)
            # Until the client asks for a speed the port keeps the console's.
            self._uart.baudrate = self.baud
            self._manager = PortManager(self._uart, _Connection(self))

    def _drop_client(self):
        if self._client:
            self._sel.unregister(self._client)
            self._client.close()
            self._client = None
        if self._uart:
            # A closed port releases DTR and RTS: both lines high, so EN rises if it was held.
            self._uart = self._manager = None
            self._lines(False, False)

    def _from_client(self, conn):
        if conn is not self._client:
            return  # replaced by a newer connection in this same round
        try:
            data = conn.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop_client()
            return
        if self._uart:
            data = b"".join(self._manager.filter(data))  # Telnet commands and RFC 2217 settings out
            if not data or self._client is not conn:
                return  # the client went while answering
            if self._mismatch():
                data = resample(data, self._uart.baudrate, self.baud)
        if self._phase in ("held", "download"):
            return  # no interpreter reads the UART: in reset, or in the ROM (which the sim is not)
        self._pending_in += data

    def _flush_input(self):
        if not self._pending_in or self._master is None or self._phase == "starting":
            return
        if self._phase == "entering-raw" and self._pending_in[:1] != b"\x01":
            return
        try:
            n = os.write(self._master, self._pending_in[:1 if self._phase == "entering-raw" else 1024])
        except (BlockingIOError, OSError):
            return
        del self._pending_in[:n]

    def _close(self):
        if self._phase == "stopped":
            return
        self._kill()
        self._drop_client()
        for s in (self._listener, self._rfc_listener, self._wake_r, self._wake_w):
            if s:
                s.close()
        self._listener = self._rfc_listener = self._wake_r = self._wake_w = None
        self._sel.close()
        if self._log:
            self._log.close()
            self._log = None
        self._phase = "stopped"


class _Connection:
    """Where PortManager writes its Telnet answers: the current client, unescaped."""

    def __init__(self, board):
        self._board = board

    def write(self, data):
        if self._board._client:
            self._board._send(data)


def _listen(port):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("127.0.0.1", port))
    except OSError as e:
        listener.close()
        raise SimError(f"cannot listen on 127.0.0.1:{port}: {e.strerror}") from None
    listener.listen(2)
    listener.setblocking(False)
    return listener


def _owner_only(flash):
    """Folders 0700 and files 0600 in the flash (and its state folder): it holds device keys."""
    for folder in (flash.parent, flash):
        folder.chmod(0o700)
    for path in flash.rglob("*"):
        if path.is_symlink():
            continue
        path.chmod(0o700 if path.is_dir() else 0o600)


def _partial_suffix(data, mark):
    """Length of the longest tail of data that begins mark (kept until more arrives)."""
    for n in range(min(len(mark) - 1, len(data)), 0, -1):
        if data.endswith(mark[:n]):
            return n
    return 0
