# The simulated board's OTA machinery, as ESP-IDF has it, for board/esp32.py (under MicroPython)
# and for the simulated bootloader the supervisor runs at each reset (under CPython): the same
# file, so both sides read and write otadata alike. The sim cannot run an image: what "runs" is
# the partition the bootloader chose, named to the interpreter in EDGEKIT_SIM_RUNNING.
#
# From espressif/esp-idf:
# - otadata is two 4096-byte sectors, each starting with an esp_ota_select_entry_t (32 bytes,
#   `<I20sII`: ota_seq, seq_label, ota_state, crc). crc is esp_rom_crc32_le(UINT32_MAX,
#   &ota_seq, 4) (bootloader_common_ota_select_crc), which is zlib's crc32 seeded 0xFFFFFFFF.
#   An entry is valid when ota_seq is not 0xFFFFFFFF, its state is neither INVALID nor ABORTED
#   and the crc matches; the active one is the valid one with the higher seq, and it boots
#   ota_((seq - 1) % app count) (bootloader_common.c, bootloader_utility.c).
# - esp_ota_set_boot_partition verifies the image (esp_image_verify), then esp_rewrite_ota_data
#   writes the entry of the next seq that selects the slot into the inactive sector (the
#   active one when it already selects that slot), state NEW with CONFIG_BOOTLOADER_APP_
#   ROLLBACK_ENABLE (components/app_update/esp_ota_ops.c).
# - with rollback enabled the bootloader first turns every PENDING_VERIFY entry into ABORTED,
#   then turns the chosen NEW entry into PENDING_VERIFY: an image booted once and not marked
#   valid (esp_ota_mark_app_valid_cancel_rollback) is never booted again. With no valid entry
#   it boots the factory app, or ota_0 when there is none; an image that fails to verify is
#   passed over for the slots below, then above it (bootloader_utility_load_boot_image).
import struct

try:
    from binascii import crc32
except ImportError:  # CPython
    from zlib import crc32
try:
    from hashlib import sha256
except ImportError:
    sha256 = None

SECTOR = 4096
ENTRY = "<I20sII"
NEW, PENDING_VERIFY, VALID, INVALID, ABORTED, UNDEFINED = 0, 1, 2, 3, 4, 0xFFFFFFFF
IMAGE_MAGIC = 0xE9
MAX_SEGMENTS = 16
SUBTYPE_FACTORY, SUBTYPE_OTA_0 = 0x00, 0x10
# esp_err_t values the port raises as OSError(-err) (check_esp_err).
ESP_ERR_NOT_FOUND = 0x105
ESP_ERR_OTA_VALIDATE_FAILED = 0x1503


def entry_crc(seq):
    return crc32(struct.pack("<I", seq), 0xFFFFFFFF) & 0xFFFFFFFF


def read_entries(read):
    """[[seq, label, state, crc], ...] of both sectors; read(offset, n) reads otadata."""
    return [list(struct.unpack(ENTRY, read(i * SECTOR, 32))) for i in (0, 1)]


def valid(e):
    return e[0] != 0xFFFFFFFF and e[2] not in (INVALID, ABORTED) and e[3] == entry_crc(e[0])


def active(entries):
    """The index of the active entry, or -1 (bootloader_common_get_active_otadata)."""
    ok = [valid(e) for e in entries]
    if ok[0] and ok[1]:
        return 0 if entries[0][0] >= entries[1][0] else 1
    return 0 if ok[0] else 1 if ok[1] else -1


def entry_bytes(e):
    return struct.pack(ENTRY, e[0], e[1], e[2], entry_crc(e[0]))


def set_boot_entry(entries, slot, count):
    """(sector, entry) that esp_rewrite_ota_data writes to boot ota_<slot> next, state NEW."""
    a = active(entries)
    if a < 0:
        sector, seq = 0, slot + 1
    elif (entries[a][0] - 1) % count == slot:
        sector, seq = a, entries[a][0]
    else:
        sector = (~a) & 1
        base = (slot + 1) % count
        i = 0
        while entries[a][0] > base + i * count:
            i += 1
        seq = base + i * count
    e = list(entries[sector])
    e[0] = seq
    e[2] = NEW
    return sector, e


def image_error(read, size, chip_id=0):
    """Why esp_image_verify refuses the image at the start of an app partition of `size`
    bytes (read(offset, n)), or None: the magic, the segments, the chip, the checksum and the
    appended SHA-256 (esp_image_format.c); segment load addresses are not checked."""
    head = read(0, 24)
    if head[0] != IMAGE_MAGIC:
        return "image has magic 0x%02x, not 0xE9" % head[0]
    if head[1] > MAX_SEGMENTS:
        return "image has %d segments" % head[1]
    if struct.unpack("<H", head[12:14])[0] != chip_id:
        return "image is for chip id %d, not %d" % (struct.unpack("<H", head[12:14])[0], chip_id)
    at = 24
    check = 0xEF
    h = sha256() if sha256 else None
    if h:
        h.update(head)
    for _ in range(head[1]):
        if at + 8 > size:
            return "image runs past its partition"
        seg = read(at, 8)
        n = struct.unpack("<II", seg)[1]
        if h:
            h.update(seg)
        at += 8
        if at + n > size:
            return "image runs past its partition"
        done = 0
        while done < n:
            chunk = read(at + done, min(1024, n - done))
            for b in chunk:
                check ^= b
            if h:
                h.update(chunk)
            done += len(chunk)
        at += n
    pad = 15 - at % 16  # the checksum is the last byte of a 16-byte line
    if at + pad + 1 > size:
        return "image runs past its partition"
    tail = read(at, pad + 1)
    if h:
        h.update(tail)
    if tail[-1] != check:
        return "image checksum 0x%02x, not 0x%02x" % (tail[-1], check)
    at += pad + 1
    if head[23] == 1 and h:
        if at + 32 > size or read(at, 32) != h.digest():
            return "image SHA-256 does not match"
    return None


def choose(rows, read_otadata, write_otadata, verify):
    """What the second-stage bootloader boots, with rollback enabled: (label, why) of the app
    partition among rows (label, type, subtype, ...), otadata updated as it would be.
    verify(label) is image_error for that partition."""
    apps = [r for r in rows if r[1] == 0]
    otas = sorted((r for r in apps if SUBTYPE_OTA_0 <= r[2] < SUBTYPE_OTA_0 + 16), key=lambda r: r[2])
    factory = [r for r in apps if r[2] == SUBTYPE_FACTORY]
    start = -1  # the factory app
    if otas and read_otadata is not None:
        entries = read_entries(read_otadata)
        for i in (0, 1):
            if entries[i][2] == PENDING_VERIFY:
                entries[i][2] = ABORTED  # booted once, never marked valid: rolled back
                write_otadata(i, entries[i])
        a = active(entries)
        if a >= 0:
            start = (entries[a][0] - 1) % len(otas)
            if entries[a][2] == NEW:
                entries[a][2] = PENDING_VERIFY
                write_otadata(a, entries[a])
    order = list(range(start, -2, -1)) + list(range(start + 1, len(otas)))
    for i in order:
        part = (factory[0] if factory else None) if i == -1 else otas[i]
        if part is not None and verify(part[0]) is None:
            return part[0]
    return None
