"""Flash a MicroPython or CircuitPython release onto a board with esptool's Python API.

The image is read before anything touches the board: its chip must be the board's,
and its bootloader must land where that chip boots from. Every esptool call that
talks to the board goes through `run_flash(plan, cmds)`, whose `cmds` is the
`esptool.cmds` module; tests pass a recorder in its place (the USB serial chip is
the one part that cannot exist in a test).
"""
import dataclasses
import hashlib
import http.client
import os
import re
import struct
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import click

from edgekit import partitions, ports, sha256_file
from edgekit.boards import boards_option
from edgekit.errors import Interrupted, UserError

# ESP image header magic; release files start with it, or with 0xFF padding before it.
_IMAGE_MAGIC = 0xE9
# Where a merged image may carry its first header: 0x0 (S3/C3/C6 bootloader), 0x1000
# (ESP32/S2 bootloader in a file written from 0x0), 0x2000 (P4/C5).
_HEADER_SEARCH = (0x0, 0x1000, 0x2000)
# The ROM bootloader always answers at this rate; esptool switches to the board's baud after the stub runs.
ROM_BAUD = 115200
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class FlashError(ValueError):
    """An image that must not be flashed on this board, or a board that cannot be flashed."""


class DownloadError(ValueError):
    """A release that cannot be fetched, or whose checksum does not match."""


@dataclass(frozen=True)
class ImageInfo:
    """What an ESP firmware file is for, read from its image header."""

    path: Path
    chip: str            # esptool chip key: esp32, esp32s3, ...
    chip_name: str       # esptool's display name: ESP32, ESP32-S3, ...
    header_offset: int   # where in the file the first image header sits
    kind: str            # "bootloader" (a full release image) or "app" (application only)
    size: int


@dataclass(frozen=True)
class FlashPlan:
    """Everything run_flash needs, decided before the board is touched."""

    board: object
    port: str
    image: ImageInfo
    data: bytes
    address: int
    baud: int
    flash_mode: str
    flash_size: str
    # The partition table written at 0x8000 (the image's own, with the outbox partition added),
    # read back after writing; None when the image's table is written untouched.
    table: tuple | None = None

    def describe(self):
        """One line saying what will be written where."""
        return (f"{self.image.chip_name} {self.image.kind} image {self.image.path.name}"
                f" ({self.image.size} bytes) at {self.address:#x} on {self.port}"
                f" at {self.baud} baud (board {self.board.name})")

    def describe_table(self):
        """One line on the partition table, or None when the image's own is kept."""
        if self.table is None:
            return None
        vfs = partitions.find(self.table, "vfs")
        outbox = partitions.find(self.table, partitions.OUTBOX_LABEL)
        # An image that brings its own outbox (and maybe no vfs) is written as it is.
        slots = partitions.ota_slots(self.table)[0]
        parts = ([f"OTA slots {', '.join(p.describe() for p in slots)}"] if slots else []) \
            + ([f"filesystem vfs {vfs.span()}"] if vfs else []) + ([f"outbox {outbox.span()} (data/0x80)"] if outbox else [])
        return (f"partition table at {partitions.TABLE_OFFSET:#x}: {', '.join(parts)}; the whole flash is erased first")


def _chip_defs():
    from esptool.targets import CHIP_DEFS

    return CHIP_DEFS


def chip_display_name(chip):
    """esptool's name for a chip key ('esp32s3' -> 'ESP32-S3')."""
    rom = _chip_defs().get(chip)
    return rom.CHIP_NAME if rom else chip


def chip_key(chip_name):
    """The chip key for esptool's display name ('ESP32-S3' -> 'esp32s3')."""
    return chip_name.lower().replace("-", "").replace("(", "").replace(")", "")


def read_image(path):
    """Read an ESP firmware file's first image header: which chip, where, and what kind.

    Raises FlashError when the file is missing, empty or not an ESP image.
    """
    from esptool.bin_image import LoadFirmwareImage
    from esptool.util import FatalError

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise FlashError(f"cannot read firmware file {path}: {e.strerror}") from None
    if not data:
        raise FlashError(f"firmware file {path} is empty")
    offset = None
    for candidate in _HEADER_SEARCH:
        if candidate < len(data) and data[candidate] == _IMAGE_MAGIC \
                and data[:candidate].count(0xFF) == candidate:
            offset = candidate
            break
    if offset is None or len(data) < offset + 24:
        raise FlashError(f"{path} is not an ESP firmware image (no image header at"
                         f" {', '.join(hex(o) for o in _HEADER_SEARCH)}); use the .bin from the release page,"
                         " not the .uf2 or .elf")
    # The extended header's chip id sits 12 bytes into the image (esptool's ESP32FirmwareImage layout).
    chip_id = int.from_bytes(data[offset + 12:offset + 14], "little")
    chip = next((key for key, rom in _chip_defs().items()
                 if key != "esp8266" and rom.IMAGE_CHIP_ID == chip_id), None)
    if chip is None:
        raise FlashError(f"{path} is an image for an unknown chip (id {chip_id}); is it an ESP8266 image?")
    try:
        image = LoadFirmwareImage(chip, data[offset:])
    except (FatalError, ValueError, IndexError, OSError, struct.error) as e:
        raise FlashError(f"{path} has a damaged {chip_display_name(chip)} image header ({e});"
                         " download it again") from None
    # A bootloader runs from RAM; an application maps flash (IROM/DROM) segments.
    kind = "app" if any(image.is_flash_addr(s.addr) for s in image.segments) else "bootloader"
    return ImageInfo(path=path, chip=chip, chip_name=chip_display_name(chip), header_offset=offset,
                     kind=kind, size=len(data))


def plan_flash(board, port, firmware, baud=None, outbox=True):
    """Check that firmware fits board and return the FlashPlan; raise FlashError naming both sides if not.

    With outbox (and a board that names an outbox_partition_size), the image's partition table
    gets the outbox partition (edgekit.partitions.with_outbox) before anything is written.
    """
    if board.simulated:
        raise FlashError(f"board {board.name} is simulated: there is nothing to flash;"
                         " start it with 'edgekit sim' and deploy to it")
    image = read_image(firmware)
    if image.chip != board.chip:
        raise FlashError(f"{image.path.name} is an {image.chip_name} image but board {board.name} has an"
                         f" {chip_display_name(board.chip)} chip; use the {board.firmware.release}"
                         f" release (edgekit flash {board.name} --download) or pick the right board")
    if image.kind == "app":
        raise FlashError(f"{image.path.name} is an application image without a bootloader; flash the full"
                         f" firmware .bin from the {board.runtime} release page")
    boots_at = _chip_defs()[board.chip].BOOTLOADER_FLASH_OFFSET
    lands_at = board.flash_offset + image.header_offset
    if lands_at != boots_at:
        raise FlashError(f"written at board {board.name}'s offset {board.flash_offset:#x}, the bootloader in"
                         f" {image.path.name} would land at {lands_at:#x}, but an {image.chip_name} boots"
                         f" from {boots_at:#x}; is this a {_other_runtime(board)} image?")
    data = image.path.read_bytes()
    table = None
    if board.firmware.ota or outbox and board.outbox_partition_size:
        data, table = _add_outbox(board, image, data, outbox)
    return FlashPlan(board=board, port=port, image=image, data=data,
                     address=board.flash_offset, baud=baud or board.flash_baud,
                     flash_mode=board.flash_mode or "keep", flash_size=board.flash_size or "keep",
                     table=table)


def _add_outbox(board, image, data, outbox=True):
    """(data with the outbox's table at 0x8000, that table); FlashError if the image's table has no room.

    A board file whose firmware is the OTA variant gets MicroPython's OTA table when the image
    brings none (the plain release's app moves from factory to ota_0, where the bootloader starts
    with otadata erased), provided its app fits the slot.
    """
    try:
        own = partitions.table_in_image(data, board.flash_offset)
        if board.firmware.ota and not partitions.ota_slots(own)[0]:
            own = _ota_table(board, image, data, own)
        if not outbox:
            board = dataclasses.replace(board, outbox_partition_size=None)
        table = partitions.board_layout(board, own)
    except partitions.PartitionError as e:
        raise FlashError(f"{image.path.name}: {e}; or flash it unchanged with --no-outbox-partition") from None
    return partitions.patch_image(data, board.flash_offset, table), tuple(table)


def _ota_table(board, image, data, own):
    # MicroPython's OTA table for a release built without one: only where its app sits at ota_0's
    # offset and fits the 1.5 MiB slot (the OTA variant's build is made smaller to fit it).
    ota = list(partitions.MICROPYTHON_OTA_TABLE)
    slot = partitions.find(ota, "ota_0")
    apps = [p for p in own if p.type == partitions.TYPE_APP]
    app_size = len(data.rstrip(b"\xff")) - (slot.offset - board.flash_offset)
    if [p.offset for p in apps] != [slot.offset] or app_size > slot.size:
        raise FlashError(f"{image.path.name} has no OTA slots and its app ({max(app_size, 0)} bytes at"
                         f" {apps[0].offset if apps else 0:#x}) does not fit ota_0 ({slot.size} bytes at"
                         f" {slot.offset:#x}); board {board.name} wants MicroPython's OTA variant: flash that"
                         " release instead")
    return ota


def _other_runtime(board):
    return "CircuitPython" if board.runtime == "micropython" else "MicroPython"


def run_flash(plan, cmds=None, say=print):
    """Erase the board, write the image at its offset (esptool verifies), and reset it.

    When the plan carries a new partition table, the chip's flash size is checked against it
    before erasing, and the table is read back and decoded after writing.

    cmds is the esptool.cmds module (the default); say receives one line per step.
    esptool prints its own progress bar while writing. Returns the connected chip key.
    """
    from esptool.util import FatalError

    if cmds is None:
        import esptool.cmds as cmds
    say(f"connecting to {plan.port} (hold BOOT and tap RESET if it does not answer)")
    state = "the board's flash was not changed"
    try:
        with cmds.detect_chip(port=plan.port, baud=ROM_BAUD, connect_mode="default-reset") as esp:
            connected = chip_key(esp.CHIP_NAME)
            # Checked before erasing: a wrong board name must not cost the user their flash.
            if connected != plan.board.chip:
                raise FlashError(f"the chip on {plan.port} is an {esp.CHIP_NAME}, but board {plan.board.name}"
                                 f" has an {chip_display_name(plan.board.chip)}; pick the board that"
                                 " matches (edgekit boards)")
            esp = cmds.run_stub(esp)
            if plan.baud > ROM_BAUD:
                esp.change_baud(plan.baud)
            cmds.attach_flash(esp)
            if plan.table is not None:
                _check_flash_size(cmds, esp, plan, say)
            # The new table shrinks vfs: only ever written on a flash erased right here, never under files.
            say("erasing the whole flash (any files on the board are lost)")
            state = ("the flash was being erased or written: the board will not boot until"
                     f" 'edgekit flash {plan.board.name}' runs to the end")
            cmds.erase_flash(esp)
            say(f"writing {plan.describe()}")
            cmds.write_flash(esp, [(plan.address, plan.data)], flash_mode=plan.flash_mode,
                             flash_size=plan.flash_size, flash_freq="keep")
            if plan.table is not None:
                _read_back_table(cmds, esp, plan, say)
            say("resetting the board")
            cmds.reset_chip(esp, "hard-reset")
            state = "the image is written and verified; reset the board by hand (its RESET button)"
    except KeyboardInterrupt:
        raise Interrupted(state) from None
    except FatalError as e:
        raise FlashError(f"esptool failed on {plan.port}: {_first_line(e)}; check the port"
                         f" (usually {plan.board.port_pattern}), or hold BOOT and tap RESET, then retry") from None
    except OSError as e:
        # pyserial's SerialException is an OSError: no such port, permission, unplugged.
        raise FlashError(f"cannot open {plan.port}: {_first_line(e)}; check the cable and the port"
                         f" (usually {plan.board.port_pattern}) and that you are in the dialout group") from None
    return connected


def _check_flash_size(cmds, esp, plan, say):
    """Refuse, before erasing, a chip whose flash ends before the table's last partition.

    The table is laid out for the board file's flash_size; an outbox past the chip's real end
    would fail on every write. A bigger chip only leaves its rest unused.
    """
    detected = cmds.detect_flash_size(esp)
    if not detected or not re.fullmatch(r"\d+MB", detected):
        say(f"flash size not detected; laying out the board file's {plan.board.flash_size}")
        return
    end = max(p.end for p in plan.table)
    if partitions.flash_bytes(detected) < end:
        raise FlashError(f"the chip on {plan.port} has {detected} of flash but board {plan.board.name} says"
                         f" {plan.board.flash_size}: the outbox partition would end at {end:#x}, past the chip;"
                         f" fix flash_size in {plan.board.path.name}, or flash with --no-outbox-partition")
    if detected != plan.board.flash_size:
        say(f"the chip has {detected} of flash; the table uses the board file's {plan.board.flash_size}"
            f" (set flash_size in {plan.board.path.name} to use all of it)")


def _read_back_table(cmds, esp, plan, say):
    """Read the table back from the board and decode it: the board must hold exactly plan.table."""
    back = cmds.read_flash(esp, partitions.TABLE_OFFSET, partitions.MAX_TABLE_LEN, no_progress=True)
    try:
        got = tuple(partitions.decode(back or b""))
        wrong = None if got == plan.table else next(
            (f"{b.describe()} where {a.describe()} was written" for a, b in zip(plan.table, got) if a != b),
            f"{len(got)} partitions where {len(plan.table)} were written")
    except partitions.PartitionError as e:
        wrong = str(e)
    if wrong:
        raise FlashError(f"the partition table read back from {plan.port} is not the one written ({wrong});"
                         f" run 'edgekit flash {plan.board.name}' again")
    say(f"partition table read back: {len(got)} partitions, outbox at"
        f" {partitions.find(got, partitions.OUTBOX_LABEL).offset:#x}")


def _first_line(e):
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# --- downloading releases ---

def default_cache_dir():
    """~/.cache/edgekit/firmware (XDG_CACHE_HOME respected)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edgekit" / "firmware"


def release_url(board, base_url=None):
    """The URL of board's release file; base_url replaces the folder part (a mirror or a test server)."""
    fw = board.firmware
    if not fw.url:
        raise DownloadError(f"board {board.name} names no release file to download")
    url = base_url.rstrip("/") + "/" + fw.file if base_url else fw.url
    parts = urllib.parse.urlsplit(url)
    # Plain HTTP is only acceptable from this machine: everything else must be verified HTTPS.
    if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in _LOCAL_HOSTS):
        raise DownloadError(f"refusing to download from {url}: use https:// (plain http only for a local mirror)")
    return url


def _cache_name(board):
    # The board file names the file the cache keeps: a plain name, never a path out of the cache.
    name = board.firmware.file
    if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith(".") or "\0" in name:
        raise DownloadError(f"{board.path.name}: firmware.file '{name}' must be a plain file name"
                            " (no folder, no '..', no leading dot); fix the board file")
    return name


class _NoDowngrade(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to a URL release_url() would accept: https, or a local http mirror."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = urllib.parse.urlsplit(newurl)
        old = urllib.parse.urlsplit(req.full_url)
        local = new.scheme == "http" and old.scheme == "http" and new.hostname in _LOCAL_HOSTS
        if new.scheme != "https" and not local:
            raise DownloadError(f"{req.full_url} redirects to {newurl}: refusing to leave https;"
                                " download the file yourself and pass --firmware FILE")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_NoDowngrade)


@dataclass(frozen=True)
class Download:
    """A release file in the cache and whether its checksum was checked against a pinned one."""

    path: Path
    sha256: str
    verified: bool
    cached: bool


def image_bound(board):
    """The most bytes a release image for board can have: its flash from the image's offset on.

    A release is about 2 MB; anything bigger than the flash it is written into is not one,
    so a download stops there instead of filling the disk. Boards that name no flash_size
    get the largest ESP32 module's 16 MB.
    """
    size = board.flash_size or "16MB"
    return int(size[:-2]) * 1024 * 1024 - board.flash_offset


def fetch_release(board, cache_dir=None, base_url=None, sha256=None, say=print, timeout=60):
    """Download board's release into cache_dir (once) and check it; return a Download.

    The expected checksum is sha256 (when given) or the board file's; with neither, nothing
    is downloaded (DownloadError: give --sha256 HEX from the release page). The download is
    hashed as it streams and stops as soon as it outgrows the board's flash (image_bound);
    only a verified file ever gets the cache's name, and a failed or interrupted one leaves
    nothing behind. A redirect away from https is refused.
    """
    url = release_url(board, base_url)
    name = _cache_name(board)
    expected = (sha256 or board.firmware.sha256 or "").lower() or None
    if expected is None:
        raise DownloadError(f"{board.path.name} pins no sha256 for {name}: pass --sha256 HEX with the"
                            " checksum from the vendor's release page (or pin it in the board file)")
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise DownloadError(f"--sha256 must be 64 hex digits, got {len(expected)} characters")
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    dest = cache / name
    if dest.exists():
        got = sha256_file(dest)
        if got == expected:
            return Download(dest, got, True, cached=True)
        say(f"cached {dest.name} does not match its checksum; downloading it again")
        dest.unlink()
    cache.mkdir(parents=True, exist_ok=True)
    # A name of its own per download (a dot file, never the cache's name): two downloads at once,
    # or a crash, never leave a partial file where a verified one is expected.
    fd, part = tempfile.mkstemp(dir=cache, prefix=f".{name}.", suffix=".part")
    try:
        with open(fd, "wb") as out:
            got = _stream(url, board, out, say, timeout)
        if got != expected:
            raise DownloadError(f"{url} has sha256 {got}, expected {expected}: the file is corrupt or was"
                                " replaced; nothing was kept")
        os.replace(part, dest)
    except KeyboardInterrupt:
        Path(part).unlink(missing_ok=True)
        raise Interrupted(f"the download of {url} stopped; nothing was kept in {cache}") from None
    except BaseException:
        Path(part).unlink(missing_ok=True)
        raise
    return Download(dest, got, True, cached=False)


def _stream(url, board, out, say, timeout):
    """Copy url's body to out, refusing more than the board's flash holds; its sha256."""
    bound = image_bound(board)
    too_big = (f"more than the {bound} bytes board {board.name}'s {board.flash_size or '16MB'} flash"
               f" holds from {board.flash_offset:#x}: not a release image; nothing was kept")
    digest = hashlib.sha256()
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0)
            if total > bound:
                raise DownloadError(f"{url} announces {total} bytes (Content-Length), {too_big}")
            done = 0
            say(f"downloading {url}")
            for block in iter(lambda: resp.read(1 << 16), b""):
                done += len(block)
                if done > bound:
                    raise DownloadError(f"{url} sent {too_big}")
                digest.update(block)
                out.write(block)
            if total and done != total:
                raise DownloadError(f"download of {url} stopped after {done} of {total} bytes; try again")
    except urllib.error.HTTPError as e:
        raise DownloadError(f"download of {url} failed: HTTP {e.code} {e.reason}; check the release in"
                            f" {board.path.name} or --base-url") from None
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
        if isinstance(e, DownloadError):
            raise
        reason = getattr(e, "reason", None) or e
        raise DownloadError(f"download of {url} failed: {reason}; check the network or use --firmware FILE") from None
    return digest.hexdigest()


# --- CLI ---

@click.command("flash")
@click.argument("board_name", metavar="BOARD")
@boards_option
@ports.port_option()
@click.option("--firmware", "firmware", type=click.Path(dir_okay=False), help="release .bin to write")
@click.option("--download", is_flag=True, help="fetch the board's release (boards/BOARD.json) into the cache")
@click.option("--cache", type=click.Path(file_okay=False), help="download cache [~/.cache/edgekit/firmware]")
@click.option("--base-url", help="fetch the release file from this folder URL instead (a mirror)")
@click.option("--sha256", "sha256", help="SHA-256 of the release from the vendor's page; required when the board file pins none")
@click.option("-b", "--baud", type=int, help="write speed once esptool's stub runs [default: the board file's flash_baud]")
@click.option("--check", is_flag=True, help="only check the image against the board; do not touch the board")
@click.option("--no-outbox-partition", "no_outbox", is_flag=True,
              help="write the image's own partition table (no raw 'outbox' partition for the firmware)")
def flash_cmd(board_name, port, firmware, download, cache, base_url, sha256, baud, check, no_outbox):
    """Erase BOARD and write MicroPython or CircuitPython onto it.

    The image's chip must match the board's (read from the image header first). On MicroPython
    boards the partition table gets a raw 'outbox' partition taken from the end of the filesystem
    (the board file's outbox_partition_size); the whole flash is erased, so files are lost.
    """
    from edgekit.boards import BoardError, load_board

    if bool(firmware) == bool(download):
        raise UserError("give exactly one of --firmware FILE or --download")
    try:
        board = load_board(board_name)
        if not check and not board.simulated:
            port = ports.find_port(board, port, say=click.echo, start_sim=False)
        elif port and port != ports.AUTO:
            port = ports.expand(port)
        if download:
            if board.simulated:
                raise FlashError(f"board {board.name} is simulated: there is nothing to flash")
            firmware = fetch_release(board, cache, base_url, sha256, say=click.echo).path
        plan = plan_flash(board, port or "(no port)", firmware, baud, outbox=not no_outbox)
        click.echo(f"image ok: {plan.describe()}")
        if plan.describe_table():
            click.echo(plan.describe_table())
        if check:
            return
        chip = run_flash(plan, say=click.echo)
    except (BoardError, FlashError, DownloadError, ports.PortError) as e:
        raise UserError(str(e)) from None
    click.echo(f"done: {chip_display_name(chip)} flashed with {plan.image.path.name};"
               f" next: edgekit deploy {board.name} -p {port} --device <DEVICE>")
