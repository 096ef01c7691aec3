"""The content of an `edgekit update create --handler firmware` update: one MicroPython app image.

The board writes it into its next OTA slot (firmware azure_edge/adu_ota.py), and its
esp32.Partition.set_boot() refuses an image that does not verify (ESP-IDF's esp_image_verify).
This checks the same here first, with esptool's own image parser, so that a wrong file is refused
on the desk and not in the field: an app image (magic 0xE9), for the board's chip, whose checksum
and appended SHA-256 match; not the merged image `edgekit flash` writes over USB (bootloader,
partition table and app: it would not boot from a slot).
"""
from pathlib import Path

from edgekit import partitions

HANDLER = "edgekit/firmware:1"
IMAGE_MAGIC = 0xE9


class FirmwareImageError(ValueError):
    """A file that is not an app image the board would boot; the message says what to use."""


def chip_of(data):
    """esptool's name of the chip an app image is for, from its header's chip_id."""
    from esptool.targets import CHIP_DEFS
    chip_id = int.from_bytes(data[12:14], "little")
    for name, rom in CHIP_DEFS.items():
        if getattr(rom, "IMAGE_CHIP_ID", None) == chip_id:
            return name
    raise FirmwareImageError(f"the image's header names chip id {chip_id}, which esptool does not know")


def check_image(path, chip=None):
    """The bytes of the app image at path, checked; chip: the board's (esptool's name), or None."""
    from esptool.util import FatalError
    from esptool.bin_image import LoadFirmwareImage
    path = Path(path)
    if not path.is_file():
        raise FirmwareImageError(f"{path} is not a file; give the MicroPython app image (.app-bin)")
    data = path.read_bytes()
    if len(data) < 24 or data[0] != IMAGE_MAGIC:
        raise FirmwareImageError(f"{path} is not an ESP app image (it does not start with 0xE9)")
    for offset in (0x0, 0x1000):  # the table of a merged image written at 0x0 or 0x1000
        at = partitions.TABLE_OFFSET - offset
        if data[at:at + 2] == partitions.ENTRY_MAGIC:
            raise FirmwareImageError(f"{path} is a merged image (bootloader, partition table and app) for"
                                     " flashing over USB; an update takes the app image alone (the .app-bin"
                                     " of the same MicroPython release)")
    found = chip_of(data)
    if chip and found != chip:
        raise FirmwareImageError(f"{path} is for the {found}, not the board's {chip}")
    try:
        image = LoadFirmwareImage(found, data)
    except (FatalError, ValueError, IndexError) as e:
        raise FirmwareImageError(f"{path} is not a valid {found} app image: {e}") from None
    if getattr(image, "append_digest", False) and image.stored_digest != image.calc_digest:
        raise FirmwareImageError(f"{path}: its appended SHA-256 does not match (the file is damaged)")
    return data


def board_chip(board):
    """esptool's chip name for a board file (the simulated board plays an ESP32)."""
    return "esp32" if board.chip == "sim" else board.chip.replace("-", "")
