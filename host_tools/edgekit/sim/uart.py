"""The board's UART end as a host at the far side of a USB-serial bridge sees it.

Two things a real ESP32-DevKitC has that a TCP socket does not: a line speed, where a
host at the wrong speed reads garbage and the board reads garbage from it; and the DTR/RTS
lines that drive the board's auto-reset circuit (EN and IO0). `resample` is the speed
mismatch at the bit level; `UartEnd` is what pyserial's RFC 2217 PortManager sets.
"""
import bisect
import re

# One frame per byte value: start bit 0, 8 data bits LSB first, stop bit 1 (8N1).
_FRAMES = [bytes([0] + [(value >> bit) & 1 for bit in range(8)] + [1]) for value in range(256)]
_FALLING = re.compile(b"\x01\x00")


def resample(data, tx_baud, rx_baud):
    """What a UART receiving at rx_baud reads from data sent 8N1 at tx_baud.

    The sender's line idles high and puts each byte out as a frame at its speed. The
    receiver waits for a falling edge, checks the start bit in its middle, samples 8 data
    bits and the stop bit in their middles at its own speed, then waits for the next
    falling edge. A start bit that reads high is a glitch, not a byte. A stop bit that
    reads low is a framing error: the byte is kept as sampled (the ESP32's UART puts it
    in its RX FIFO and only flags the error). data is one burst: the line idles before
    and after it. Equal speeds give data back; speeds a few percent apart still do.
    """
    if not data:
        return b""
    # The line in units of the sender's bit time; index i holds the level during bit i.
    line = b"\x01" + b"".join(_FRAMES[b] for b in data)  # one idle bit ahead of the first frame
    edges = [m.start() + 1 for m in _FALLING.finditer(line)]
    step = tx_baud / rx_baud  # one receiver bit, in sender bits
    end = len(line)

    def level(t):
        i = int(t)
        return line[i] if i < end else 1  # idle after the burst

    out = bytearray()
    at = 0.0
    while True:
        k = bisect.bisect_left(edges, at)
        if k == len(edges):
            return bytes(out)
        edge = edges[k]
        if level(edge + 0.5 * step) != 0:
            at = edge + 0.5 * step  # too short to be a start bit
            continue
        value = 0
        for bit in range(8):
            value |= level(edge + (1.5 + bit) * step) << bit
        out.append(value)
        # After the stop bit's middle the receiver looks for the next falling edge; after a
        # framing error the line is still low, and an edge needs it high first.
        at = edge + 9.5 * step


# The DevKitC auto-reset circuit (two transistors, as esptool's reset.py describes it):
# RTS asserted with DTR not pulls EN low (chip in reset); DTR asserted with RTS not pulls
# IO0 low; both or neither leave both high.
def en_low(dtr, rts):
    """True when these pyserial line states hold the chip in reset."""
    return rts and not dtr


def io0_low(dtr, rts):
    """True when these pyserial line states pull IO0 low (the ROM bootloader's strap)."""
    return dtr and not rts


class UartEnd:
    """The serial port object pyserial's RFC 2217 PortManager drives.

    It keeps what the client asked for (speed, frame format, flow control) and tells
    the board when DTR or RTS change. A USB bridge reports no modem inputs: CTS, DSR, RI
    and CD read low.
    """

    def __init__(self, on_lines):
        self._on_lines = on_lines
        self.baudrate = None  # none asked yet: pyserial's open() sends its speed first thing
        self.bytesize = 8
        self.parity = "N"
        self.stopbits = 1
        self.xonxoff = False
        self.rtscts = False
        self.break_condition = False
        self._dtr = False
        self._rts = False
        self.cts = self.dsr = self.ri = self.cd = False

    @property
    def dtr(self):
        return self._dtr

    @dtr.setter
    def dtr(self, value):
        self._dtr = bool(value)
        self._on_lines(self._dtr, self._rts)

    @property
    def rts(self):
        return self._rts

    @rts.setter
    def rts(self, value):
        self._rts = bool(value)
        self._on_lines(self._dtr, self._rts)

    # Purges: the sim forwards every byte as it comes, so no buffer holds any.
    def reset_input_buffer(self):
        pass

    def reset_output_buffer(self):
        pass
