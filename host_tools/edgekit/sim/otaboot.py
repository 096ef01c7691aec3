"""The simulated board's second-stage bootloader, for a board flashed with MicroPython's OTA variant.

At each reset (not a soft reset) SimBoard asks boot() which app partition runs: ESP-IDF's choice
with CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE (which MicroPython's esp32 builds set in
boards/sdkconfig.base), made by board/_simota.py over the same otadata file the board's
esp32.Partition stand-in writes. The interpreter that starts is the same unix MicroPython
whatever the slot holds; it learns the slot's name from EDGEKIT_SIM_RUNNING.
"""
import importlib.util

from edgekit.sim.supervisor import BOARD_FILES

CHIP_ID = 0  # the sim plays an ESP32 (esp_image_header_t.chip_id)
_modules = {}


def _board_module(name):
    # board/_simota.py and _simnor.py run under MicroPython on the board; the host loads the
    # very same files.
    if name not in _modules:
        spec = importlib.util.spec_from_file_location(name, BOARD_FILES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _modules[name] = module
    return _modules[name]


def _chip(board, label):
    row = next(r for r in board.partitions if r[0] == label)
    path = board.images[label]
    return _board_module("_simnor").Nor(str(path.parent), path.name, blocks=row[4] // 4096, strict=False), row


def _reader(nor):
    def read(offset, n):
        out = bytearray()
        while len(out) < n:
            at = offset + len(out)
            k = min(n - len(out), 4096 - at % 4096)
            buf = bytearray(k)
            nor.readblocks(at // 4096, buf, at % 4096)
            out += buf
        return bytes(out)
    return read


def boot(board):
    """The label of the app partition the bootloader boots now, otadata updated as it would be
    (NEW becomes PENDING_VERIFY; PENDING_VERIFY, booted once and not kept, becomes ABORTED)."""
    ota = _board_module("_simota")
    od, _ = _chip(board, "otadata")
    chips = {}

    def write(sector, entry):
        od.writeblocks(sector, ota.entry_bytes(entry))  # erases the sector, as write_otadata

    def verify(label):
        if label not in board.images:
            return "not simulated"
        if label not in chips:
            chips[label] = _chip(board, label)
        nor, row = chips[label]
        return ota.image_error(_reader(nor), row[4], CHIP_ID)

    try:
        return ota.choose(board.partitions, _reader(od), write, verify)
    finally:
        od.close()
        for nor, _ in chips.values():
            nor.close()


def sim_ota_image(text=b"MicroPython (simulated board)"):
    """A valid ESP32 app image (esptool's writer, SHA-256 appended), standing for the firmware
    `edgekit flash` writes to ota_0: the sim cannot run it, but its bootloader verifies it."""
    from esptool.bin_image import ESP32FirmwareImage, ImageSegment
    image = ESP32FirmwareImage()
    image.entrypoint = 0x40080000
    image.segments = [ImageSegment(0x3F400020, bytes(text) + b"\0" * (-len(text) % 4))]
    return image.save(None)


def first_flash(board):
    """A new OTA board (ota_0 erased) gets the flashed image in ota_0, otadata erased: what
    `esptool write_flash` of MicroPython's OTA variant leaves."""
    nor, row = _chip(board, "ota_0")
    try:
        if _reader(nor)(0, 1) != b"\xff":
            return
        image = sim_ota_image()
        for at in range(0, len(image), 4096):
            nor.writeblocks(at // 4096, image[at:at + 4096])
    finally:
        nor.close()
    _chip(board, "otadata")[0].close()  # created erased
