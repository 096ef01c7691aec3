"""ESP-IDF partition tables: encode, decode, and make room for the outbox partition.

The binary format is ESP-IDF's (components/partition_table/gen_esp32part.py, espressif/esp-idf;
api-guides/partition-tables.html): the table sits at 0x8000 and fills at most 0xC00 bytes of its
4 KiB sector; each entry is 32 bytes, little-endian `<2sBBII16sI`: magic AA 50 (0x50AA), type,
subtype, offset, size, a 16-byte NUL-padded label, flags (bit 0 encrypted, bit 1 readonly).
After the entries comes one MD5 entry: EB EB, fourteen FF bytes, then the MD5 of every entry
before it; then FF padding to 0xC00 (gen_esp32part pads so the sector can be signed). Readers stop
at the first all-FF entry. This module has no ESP-IDF dependency: it is that format, and no more.

The outbox contract the firmware relies on: a data partition (type 0x01) labelled `outbox`,
subtype 0x80 (the first custom data subtype), 4096-byte aligned, found on the board with
`esp32.Partition.find(esp32.Partition.TYPE_DATA, label="outbox")`.

The one rule that makes room for it (docs/hardware.md says why): the outbox takes its size from
the end of the `vfs` partition. MicroPython 1.26 and later (micropython#17337) ship no `vfs`
entry at all and, at boot, create one in RAM from the end of the firmware to the end of the flash
unless the table names one; for those images the rule writes that `vfs` explicitly, ending where
the outbox starts, so MicroPython's own sizing never lays its filesystem over the outbox.
"""
import hashlib
import re
import struct
from dataclasses import dataclass

TABLE_OFFSET = 0x8000        # CONFIG_PARTITION_TABLE_OFFSET, the same in every MicroPython esp32 build
TABLE_SECTOR = 0x1000        # the table owns its whole sector: the first partition starts at 0x9000 or later
MAX_TABLE_LEN = 0xC00        # gen_esp32part MAX_PARTITION_LENGTH: entries + MD5 entry + FF padding
ENTRY = struct.Struct("<2sBBII16sI")
ENTRY_MAGIC = b"\xaa\x50"    # 0x50AA little-endian
MD5_MAGIC = b"\xeb\xeb"      # 0xEBEB, then 14 x FF, then the 16-byte digest
MAX_ENTRIES = MAX_TABLE_LEN // ENTRY.size - 1  # 95: one slot is the MD5 entry
FLAG_ENCRYPTED = 1 << 0
FLAG_READONLY = 1 << 1

TYPE_APP = 0x00
TYPE_DATA = 0x01
SUBTYPE_FAT = 0x81           # what MicroPython's CSVs give `vfs` (LittleFS lives there all the same)
APP_ALIGN = 0x10000          # app partitions must be 64 KiB aligned (the MMU maps 64 KiB pages)
DATA_ALIGN = 0x1000          # a NOR flash sector: the unit an erase works on

OUTBOX_LABEL = "outbox"
OUTBOX_TYPE = TYPE_DATA
OUTBOX_SUBTYPE = 0x80
DEFAULT_OUTBOX_SIZE = 0x40000  # 64 blocks: 6.3 years at one reading a second offline (docs/outbox.md)
MIN_OUTBOX_SIZE = 2 * DATA_ALIGN   # a log must keep one sector while it erases another
MIN_VFS_SIZE = 0x20000             # below 128 KiB the firmware and a bundle no longer fit in the filesystem

_TYPES = {"app": TYPE_APP, "data": TYPE_DATA}
_SUBTYPES = {  # gen_esp32part.py SUBTYPES (the names MicroPython's CSVs use, and OTA slots)
    TYPE_APP: {"factory": 0x00, "test": 0x20, **{f"ota_{i}": 0x10 + i for i in range(16)}},
    TYPE_DATA: {"ota": 0x00, "phy": 0x01, "nvs": 0x02, "coredump": 0x03, "nvs_keys": 0x04,
                "efuse": 0x05, "undefined": 0x06, "fat": 0x81, "spiffs": 0x82, "littlefs": 0x83},
}


class PartitionError(ValueError):
    """A partition table that is malformed, or a layout that does not fit the flash."""


@dataclass(frozen=True)
class Partition:
    """One entry of an ESP-IDF partition table."""

    label: str
    type: int
    subtype: int
    offset: int
    size: int
    flags: int = 0

    @property
    def end(self):
        return self.offset + self.size

    def row(self):
        """(label, type, subtype, offset, size): what esp32.Partition.info() tells on a board."""
        return (self.label, self.type, self.subtype, self.offset, self.size)

    def span(self):
        return f"{self.offset:#x}+{self.size:#x} ({self.size // 1024} KiB)"

    def describe(self):
        return f"{self.label} {self.span()}"


# --- the binary format ---

def encode(parts):
    """The 0xC00-byte table gen_esp32part.py writes for parts (entries, MD5 entry, FF padding)."""
    parts = list(parts)
    if len(parts) > MAX_ENTRIES:
        raise PartitionError(f"{len(parts)} partitions do not fit a table; at most {MAX_ENTRIES}")
    body = b"".join(ENTRY.pack(ENTRY_MAGIC, p.type, p.subtype, p.offset, p.size, _label_bytes(p.label), p.flags)
                    for p in parts)
    body += MD5_MAGIC + b"\xff" * 14 + hashlib.md5(body).digest()
    return body + b"\xff" * (MAX_TABLE_LEN - len(body))


def decode(data):
    """The partitions in a binary table; PartitionError on a bad magic, a bad MD5 or no end marker.

    Like the ESP-IDF bootloader, an MD5 entry must match the entries before it; a table with no
    MD5 entry (CONFIG_PARTITION_TABLE_MD5 off) is accepted.
    """
    data = bytes(data[:MAX_TABLE_LEN])
    parts = []
    md5 = hashlib.md5()
    for at in range(0, len(data) - ENTRY.size + 1, ENTRY.size):
        raw = data[at:at + ENTRY.size]
        if raw == b"\xff" * ENTRY.size:
            if not parts:
                raise PartitionError(f"the partition table at {TABLE_OFFSET:#x} is empty (erased flash)")
            return parts
        if raw[:2] == MD5_MAGIC:
            if raw[16:] != md5.digest():
                raise PartitionError(f"the partition table's MD5 entry does not match its {len(parts)} entries:"
                                     " the table is damaged")
            continue
        magic, ptype, subtype, offset, size, label, flags = ENTRY.unpack(raw)
        if magic != ENTRY_MAGIC:
            raise PartitionError(f"entry {len(parts)} of the partition table has magic {magic.hex()}, not aa50:"
                                 " this is not an ESP-IDF partition table")
        md5.update(raw)
        try:
            name = label.split(b"\0", 1)[0].decode("ascii")
        except UnicodeDecodeError:
            raise PartitionError(f"entry {len(parts)} of the partition table has a label that is not ASCII") from None
        parts.append(Partition(name, ptype, subtype, offset, size, flags))
    raise PartitionError("the partition table has no end marker within 0xC00 bytes")


def _label_bytes(label):
    raw = label.encode("ascii", "replace")
    if not raw or len(raw) > 16 or not label.isascii():
        raise PartitionError(f"partition label '{label}' must be 1 to 16 ASCII characters")
    return raw


# --- CSV, the form MicroPython keeps its tables in (ports/esp32/partitions-*.csv) ---

def parse_csv(text):
    """Partitions from gen_esp32part CSV text: names or numbers, K/M suffixes, empty offsets filled.

    Only the subset MicroPython's tables use (no $VARIABLES); a line that does not parse is a
    PartitionError naming its line number.
    """
    parts = []
    last_end = TABLE_OFFSET + TABLE_SECTOR
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in (line + ",,,,").split(",")]
        try:
            ptype = _number(fields[1], _TYPES)
            subtype = _number(fields[2], _SUBTYPES.get(ptype, {})) if fields[2] else 0x06
            size = _number(fields[4])
            offset = _number(fields[3]) if fields[3] else None
            flags = 0
            for flag in filter(None, fields[5].split(":")):
                flags |= {"encrypted": FLAG_ENCRYPTED, "readonly": FLAG_READONLY}[flag]
        except (KeyError, ValueError) as e:
            raise PartitionError(f"partition CSV line {number}: {e}") from None
        if offset is None:
            # gen_esp32part: an empty offset follows the previous partition, aligned for its type.
            align = APP_ALIGN if ptype == TYPE_APP else 4
            offset = -(-last_end // align) * align
        parts.append(Partition(fields[0], ptype, subtype, offset, size, flags))
        last_end = offset + size
    return parts


def _number(text, names=None):
    if names and text.lower() in names:
        return names[text.lower()]
    m = re.fullmatch(r"(0x[0-9a-fA-F]+|\d+)([kKmM]?)", text)
    if not m:
        raise ValueError(f"'{text}' is not a number" + (f" or one of {', '.join(names)}" if names else ""))
    scale = {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]
    return int(m.group(1), 0) * scale


# --- checks and the outbox rule ---

def check(parts, flash_size):
    """Raise PartitionError unless parts make a table ESP-IDF accepts that fits flash_size bytes."""
    parts = list(parts)
    if len(parts) > MAX_ENTRIES:
        raise PartitionError(f"{len(parts)} partitions do not fit a table; at most {MAX_ENTRIES}")
    labels = [p.label for p in parts]
    for label in labels:
        _label_bytes(label)
        if labels.count(label) > 1:
            raise PartitionError(f"two partitions are labelled '{label}'; labels must be unique")
    previous = None
    for p in sorted(parts, key=lambda p: p.offset):
        align = APP_ALIGN if p.type == TYPE_APP else DATA_ALIGN
        if p.offset % align or p.size <= 0:
            raise PartitionError(f"partition {p.describe()} must start on a {align:#x} boundary and not be empty")
        if p.offset < TABLE_OFFSET + TABLE_SECTOR:
            raise PartitionError(f"partition {p.describe()} overlaps the bootloader or the partition table"
                                 f" (partitions start at {TABLE_OFFSET + TABLE_SECTOR:#x} or later)")
        if previous and p.offset < previous.end:
            raise PartitionError(f"partition {p.describe()} overlaps {previous.describe()}")
        if p.end > flash_size:
            raise PartitionError(f"partition {p.describe()} ends at {p.end:#x}, past the end of the"
                                 f" {flash_size // (1024 * 1024)} MB flash")
        previous = p
    return parts


def with_outbox(parts, flash_size, outbox_size=DEFAULT_OUTBOX_SIZE):
    """parts with an outbox partition of outbox_size bytes taken from the end of `vfs`.

    With no `vfs` in the table (MicroPython 1.26+), `vfs` is written out from the end of the last
    partition to the end of the flash first, as MicroPython would size it at boot. A table that
    already has a valid outbox comes back unchanged. PartitionError when there is no room.
    """
    parts = check(parts, flash_size)
    if outbox_size % DATA_ALIGN or outbox_size < MIN_OUTBOX_SIZE:
        raise PartitionError(f"an outbox partition of {outbox_size:#x} bytes must be a multiple of"
                             f" {DATA_ALIGN:#x} and at least {MIN_OUTBOX_SIZE:#x}")
    existing = find(parts, OUTBOX_LABEL)
    if existing:
        if (existing.type, existing.subtype) != (OUTBOX_TYPE, OUTBOX_SUBTYPE):
            raise PartitionError(f"the image's table already has an '{OUTBOX_LABEL}' partition of type"
                                 f" {existing.type:#x}/{existing.subtype:#x}, not data/0x80: flash with"
                                 " --no-outbox-partition or fix the image's table")
        return parts
    vfs = find(parts, "vfs")
    if vfs is None:
        start = -(-max(p.end for p in parts) // DATA_ALIGN) * DATA_ALIGN if parts else TABLE_OFFSET + TABLE_SECTOR
        vfs = Partition("vfs", TYPE_DATA, SUBTYPE_FAT, start, flash_size - start)
        parts = parts + [vfs]
    if vfs.type != TYPE_DATA:
        raise PartitionError("the image's 'vfs' partition is not a data partition; flash with --no-outbox-partition")
    if vfs.size - outbox_size < MIN_VFS_SIZE:
        raise PartitionError(f"taking a {outbox_size // 1024} KiB outbox from {vfs.describe()} would leave less"
                             f" than {MIN_VFS_SIZE // 1024} KiB of filesystem; give a smaller outbox_partition_size")
    shrunk = Partition(vfs.label, vfs.type, vfs.subtype, vfs.offset, vfs.size - outbox_size, vfs.flags)
    outbox = Partition(OUTBOX_LABEL, OUTBOX_TYPE, OUTBOX_SUBTYPE, shrunk.end, outbox_size)
    return check([shrunk if p is vfs else p for p in parts] + [outbox], flash_size)


def find(parts, label):
    return next((p for p in parts if p.label == label), None)


# --- images and boards ---

def table_in_image(data, flash_offset):
    """The partitions of a merged release image written at flash_offset (its table at 0x8000)."""
    at = TABLE_OFFSET - flash_offset
    if at < 0 or len(data) < at + ENTRY.size:
        raise PartitionError(f"the image holds no partition table at {TABLE_OFFSET:#x} (it is"
                             f" {len(data)} bytes from {flash_offset:#x})")
    return decode(data[at:at + MAX_TABLE_LEN])


def patch_image(data, flash_offset, parts):
    """data with its table at 0x8000 replaced by parts' (the rest of the sector left as it was)."""
    at = TABLE_OFFSET - flash_offset
    return data[:at] + encode(parts) + data[at + MAX_TABLE_LEN:]


def flash_bytes(flash_size):
    """'4MB' -> 4194304 (flash sizes are binary megabytes, as esptool and gen_esp32part count them)."""
    return int(flash_size[:-2]) * 1024 * 1024


# MicroPython 1.26's generic esp32 table (ports/esp32/partitions-4MiBplus.csv, the default of
# boards/sdkconfig.base since micropython#17337): no vfs; MicroPython fills the rest of the flash.
# A real image's own table always wins; this one stands in where there is no image (the simulated board).
MICROPYTHON_TABLE = (
    Partition("nvs", TYPE_DATA, 0x02, 0x9000, 0x6000),
    Partition("phy_init", TYPE_DATA, 0x01, 0xF000, 0x1000),
    Partition("factory", TYPE_APP, 0x00, 0x10000, 0x1F0000),
)
SIM_FLASH_SIZE = "4MB"
# MicroPython's OTA variant for 4 MiB boards (ports/esp32/partitions-4MiB-ota.csv, the table of
# ESP32_GENERIC's sdkconfig.ota): two 1.5 MiB app slots and otadata, no factory app, no vfs.
MICROPYTHON_OTA_TABLE = (
    Partition("nvs", TYPE_DATA, 0x02, 0x9000, 0x4000),
    Partition("otadata", TYPE_DATA, 0x00, 0xD000, 0x2000),
    Partition("phy_init", TYPE_DATA, 0x01, 0xF000, 0x1000),
    Partition("ota_0", TYPE_APP, 0x10, 0x10000, 0x180000),
    Partition("ota_1", TYPE_APP, 0x11, 0x190000, 0x180000),
)


def ota_slots(parts):
    """The OTA app slots of a table (ota_0, ota_1, ...), and whether it has otadata: what
    esp32.Partition's get_next_update() and set_boot() need. ([], False) for a plain table."""
    slots = sorted((p for p in parts if p.type == TYPE_APP and 0x10 <= p.subtype < 0x20), key=lambda p: p.subtype)
    return slots, any(p.type == TYPE_DATA and p.subtype == 0x00 for p in parts)


def board_layout(board, image_table=None, ota=False):
    """The partitions board gets from `edgekit flash`, as Partition rows (label, type, ...).

    image_table is the release image's own table (table_in_image); without it MicroPython's
    generic table stands in. A board whose outbox_partition_size is null keeps the table as is.
    The simulated board calls this to expose the same layout as a flashed board; ota: the
    table of MicroPython's OTA variant stands in where there is no image.
    """
    table = list(image_table if image_table is not None else MICROPYTHON_OTA_TABLE if ota else MICROPYTHON_TABLE)
    size = flash_bytes(board.flash_size or SIM_FLASH_SIZE)
    if not board.outbox_partition_size:
        return check(table, size)
    return with_outbox(table, size, board.outbox_partition_size)


def sim_partitions(board, ota=False):
    """[(label, type, subtype, offset, size), ...] for the simulated board's esp32.Partition stand-in."""
    return [p.row() for p in board_layout(board, ota=ota)]
