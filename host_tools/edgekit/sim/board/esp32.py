# The simulated board's `esp32` module: Partition only, the part of it the firmware uses
# (azure_edge/partlog.py), over NOR chips in host files (_simnor.py) with the chip's rules.
#
# The partition table is the one `edgekit flash` writes for the board: the supervisor passes it
# in EDGEKIT_SIM_PARTITIONS, JSON rows [label, type, subtype, address, size] from
# edgekit.partitions.sim_partitions (this runs under MicroPython and cannot import edgekit), the
# outbox's row with a sixth item, the host file that holds its blocks. Only that partition holds
# data; the others are listed (find, info) but reading or writing them raises OSError(ENODEV).
# Unset or empty: no table (a plain interpreter). docs/hardware.md says where this differs from
# a board.
#
# As ports/esp32/esp32_partition.c does:
# - Partition.find(type=TYPE_APP, subtype=0xFF, label=None) returns a list, empty when
#   nothing matches; Partition(label) looks among app then data partitions and raises
#   OSError(ENOENT) when there is none;
# - readblocks(n, buf, off=0) and writeblocks(n, buf, off) work on 4096-byte blocks; without
#   an offset writeblocks erases the blocks it covers first; ioctl 4 and 5 give the block
#   count and size, ioctl 6 erases one block; info() is (type, subtype, address, size,
#   label, encrypted).
# Programs only clear bits: a program over cleared bits stores the AND, as NOR does, and is
# counted in the chip's program_violations; EDGEKIT_SIM_NOR_STRICT=1 makes it raise EIO.
import os

from _simnor import Nor

TYPE_APP = 0
TYPE_DATA = 1
BOOT = 0
RUNNING = 1
_BLOCK = 4096
_ENOENT = 2
_ENODEV = 19
_ANY = 0xFF

_chips = {}  # label -> Nor, opened once per boot
_rows = []  # (type, subtype, address, size, label[, image]) per partition
_spec = "[]"  # the JSON they were read from: read again only when it changes (tests change it)


def _table():
    global _rows, _spec
    spec = os.getenv("EDGEKIT_SIM_PARTITIONS") or "[]"
    if spec != _spec:
        import json
        _rows = [tuple(r[1:5]) + (r[0],) + tuple(r[5:]) for r in json.loads(spec)]
        _spec = spec
    return _rows


class Partition:
    BOOT = BOOT
    RUNNING = RUNNING
    TYPE_APP = TYPE_APP
    TYPE_DATA = TYPE_DATA

    def __init__(self, id, _row=None):
        if _row is None:
            if id in (BOOT, RUNNING):
                # The factory app: the sim's image has no OTA slots.
                _row = ([r for r in _table() if r[0] == TYPE_APP] or [None])[0]
            else:
                for want in (TYPE_APP, TYPE_DATA):
                    for row in _table():
                        if row[0] == want and row[4] == id:
                            _row = row
                            break
                    if _row:
                        break
            if _row is None:
                raise OSError(_ENOENT)
        self._row = _row
        self._nor = None
        if len(_row) > 5:
            nor = _chips.get(_row[4])
            if nor is None:
                path = _row[5]
                i = path.rfind("/")
                strict = os.getenv("EDGEKIT_SIM_NOR_STRICT") == "1"
                nor = _chips[_row[4]] = Nor(path[:i] or "/", path[i + 1:], blocks=_row[3] // _BLOCK,
                                            strict=strict)
            self._nor = nor

    @staticmethod
    def find(type=TYPE_APP, subtype=_ANY, label=None):
        return [Partition(None, row) for row in _table()
                if row[0] == type and subtype in (_ANY, row[1]) and label in (None, row[4])]

    def info(self):
        r = self._row
        return (r[0], r[1], r[2], r[3], r[4], False)

    def __repr__(self):
        r = self._row
        return "<Partition type=%u, subtype=%u, address=%u, size=%u, label=%s, encrypted=0>" % r[:5]

    def _chip(self):
        if self._nor is None:
            raise OSError(_ENODEV)  # listed, not simulated
        return self._nor

    def readblocks(self, block, buf, offset=0):
        self._chip().readblocks(block, buf, offset)

    def writeblocks(self, block, buf, offset=None):
        nor = self._chip()
        if offset is None:
            for b in range(block, block + (len(buf) + _BLOCK - 1) // _BLOCK):
                nor.erase(b)
            offset = 0
        # esp_partition_write takes any span; the chip programs it block by block.
        mv = memoryview(buf)
        done = 0
        while done < len(mv):
            at = offset + done
            k = min(len(mv) - done, _BLOCK - at % _BLOCK)
            nor.writeblocks(block + at // _BLOCK, mv[done:done + k], at % _BLOCK)
            done += k

    def ioctl(self, op, arg):
        if op in (1, 2):
            return 0
        if op == 3:
            if self._nor:
                self._nor.ioctl(3, 0)  # the chip's counters to its .wear.json
            return 0
        if op == 4:
            return self._row[3] // _BLOCK
        if op == 5:
            return _BLOCK
        if op == 6:
            self._chip().erase(arg)
            return 0
        return None

    def set_boot(self):
        pass  # no OTA slots in this table

    def get_next_update(self):
        raise OSError(_ENOENT)  # as esp_ota_get_next_update_partition finds none
