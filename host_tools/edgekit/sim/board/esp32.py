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
#
# A board flashed with the OTA variant (SimBoard(ota=True)) has ota_0, ota_1 and otadata
# rows with host files too, and the OTA calls behave as ESP-IDF's (board/_simota.py): RUNNING
# is the partition the simulated bootloader chose at the last reset (EDGEKIT_SIM_RUNNING),
# BOOT the one otadata selects, get_next_update() the OTA slot after this one, set_boot()
# verifies the image and writes otadata, mark_app_valid_cancel_rollback() keeps the running one.
import os

from _simnor import Nor

# Imported now, while "/" is still the host's (_simboot.py mounts the board's flash over it), and
# only with OTA slots in the table: the sim's heap stands for the board's.
_simota = None
if '"ota_0"' in (os.getenv("EDGEKIT_SIM_PARTITIONS") or ""):
    import _simota

TYPE_APP = 0
TYPE_DATA = 1
BOOT = 0
RUNNING = 1
_BLOCK = 4096
_ENOENT = 2
_ENODEV = 19
_ANY = 0xFF
_ESP_FAIL = -1
_ESP_ERR_NOT_FOUND = 0x105

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
            if id == RUNNING:
                # Chosen by the simulated bootloader (supervisor.py); a table without OTA
                # slots runs its factory app.
                run = os.getenv("EDGEKIT_SIM_RUNNING")
                _row = ([r for r in _table() if r[0] == TYPE_APP and (not run or r[4] == run)]
                        or [None])[0]
            elif id == BOOT:
                _row = _boot_row()
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
        # An app slot's chip (a file and 1.5 KiB of wear counters) opens at its first read or
        # write: on a board a Partition is a few bytes, and the OTA agent makes several.
        if len(_row) > 5 and _row[0] != TYPE_APP:
            self._open()

    def _open(self):
        r = self._row
        nor = _chips.get(r[4])
        if nor is None:
            path = r[5]
            i = path.rfind("/")
            strict = os.getenv("EDGEKIT_SIM_NOR_STRICT") == "1"
            nor = _chips[r[4]] = Nor(path[:i] or "/", path[i + 1:], blocks=r[3] // _BLOCK, strict=strict)
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
        if self._nor is None and len(self._row) > 5:
            self._open()
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
        # esp_ota_set_boot_partition: the image verified first (ESP_ERR_OTA_VALIDATE_FAILED),
        # then otadata rewritten; the factory app erases otadata instead.
        r = self._row
        if r[0] != TYPE_APP:
            raise OSError(-0x102)  # ESP_ERR_INVALID_ARG
        if _simota is None:
            raise OSError(-_ESP_ERR_NOT_FOUND)  # no otadata to write (the image is not simulated)
        why = _simota.image_error(self._read, r[3], _chip_id())
        if why:
            raise OSError(-_simota.ESP_ERR_OTA_VALIDATE_FAILED, why)
        od = _otadata()
        if od is None:
            raise OSError(-_simota.ESP_ERR_NOT_FOUND)
        if r[1] == _simota.SUBTYPE_FACTORY:
            for b in range(od._row[3] // _BLOCK):
                od._chip().erase(b)
            return
        slots = _ota_rows()
        sector, e = _simota.set_boot_entry(_simota.read_entries(od._read), slots.index(r), len(slots))
        od.writeblocks(sector, _simota.entry_bytes(e))

    def get_next_update(self):
        # esp_ota_get_next_update_partition(self): the OTA slot after this one, else the first.
        slots = _ota_rows()
        if not slots:
            raise OSError(_ENOENT)  # no OTA slots: MicroPython's plain (non-OTA) image
        i = slots.index(self._row) + 1 if self._row in slots else 0
        return Partition(None, slots[i % len(slots)])

    @staticmethod
    def mark_app_valid_cancel_rollback():
        # esp_ota_current_ota_is_workable(true): the active otadata entry marked VALID; with no
        # otadata partition ESP_ERR_NOT_FOUND, with no valid entry (a board as esptool flashed
        # it) ESP_FAIL, "Running firmware is factory".
        od = _otadata()
        if od is None or _simota is None:
            raise OSError(-_ESP_ERR_NOT_FOUND)
        entries = _simota.read_entries(od._read)
        a = _simota.active(entries)
        if a < 0 or not _ota_rows():
            raise OSError(-_ESP_FAIL)
        if entries[a][2] != _simota.VALID:
            entries[a][2] = _simota.VALID
            od.writeblocks(a, _simota.entry_bytes(entries[a]))

    def _read(self, offset, n):
        buf = bytearray(n)
        mv = memoryview(buf)
        done = 0
        while done < n:  # a read may cross blocks; the chip reads within one
            at = offset + done
            k = min(n - done, _BLOCK - at % _BLOCK)
            self._chip().readblocks(at // _BLOCK, mv[done:done + k], at % _BLOCK)
            done += k
        return buf


def _ota_rows():
    # ota_0, ota_1, ... in slot order (esp_ota_get_app_partition_count's order).
    return sorted((r for r in _table() if r[0] == TYPE_APP and 0x10 <= r[1] < 0x20), key=lambda r: r[1])


def _otadata():
    for r in _table():
        if r[0] == TYPE_DATA and r[1] == 0:
            return Partition(None, r)
    return None


def _boot_row():
    # esp_ota_get_boot_partition: the slot the active otadata entry selects, else the factory
    # app, else the first OTA slot.
    slots = _ota_rows()
    od = _otadata()
    if slots and od is not None and _simota is not None:
        entries = _simota.read_entries(od._read)
        a = _simota.active(entries)
        if a >= 0:
            return slots[(entries[a][0] - 1) % len(slots)]
    apps = [r for r in _table() if r[0] == TYPE_APP]
    return ([r for r in apps if r[1] == 0] or slots or [None])[0]


def _chip_id():
    # The chip the sim plays when it has OTA slots: an ESP32 (esp_image_header_t chip_id 0).
    return int(os.getenv("EDGEKIT_SIM_CHIP_ID") or 0)
