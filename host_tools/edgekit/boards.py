"""Board facts as data: one JSON file per board in boards/, loaded and checked here.

Adding a board is adding a file; nothing in the code names a board.
"""
import difflib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import click

from edgekit import BOARDS_DIR
from edgekit.errors import UserError

RUNTIMES = ("micropython", "circuitpython")
# mpy-cross -march values the esp32 family uses; None means bytecode-only .mpy.
MPY_ARCHES = ("xtensawin", "rv32imc", None)
SIM_CHIP = "sim"
FLASH_MODES = ("qio", "qout", "dio", "dout", None)
_FLASH_SIZE = re.compile(r"^(1|2|4|8|16|32|64|128)MB$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
# A USB vendor:product id as `lsusb` prints it; '*' for any product of that vendor.
_USB_ID = re.compile(r"^[0-9a-f]{4}:([0-9a-f]{4}|\*)$")
# The speed MicroPython's and CircuitPython's REPL run at on a UART console.
CONSOLE_BAUD = 115200


class BoardError(ValueError):
    """A board name that does not exist or a board file that is malformed."""


@dataclass(frozen=True)
class Firmware:
    """The MicroPython or CircuitPython release a board is flashed with."""

    release: str
    file: str | None
    url: str | None
    sha256: str | None
    # MicroPython's OTA variant (ota_0, ota_1, otadata: the table of ports/esp32/partitions-*-ota.csv):
    # what over-the-air firmware updates need (edgekit/firmware:1). Optional "ota" in the board file.
    ota: bool = False


@dataclass(frozen=True)
class Board:
    """One board's facts, as written in boards/<name>.json."""

    name: str
    description: str
    chip: str
    runtime: str
    flash_offset: int
    console_baud: int  # the REPL's speed: deploy, monitor (native USB ports ignore it)
    flash_baud: int  # esptool's speed once its stub runs
    flash_mode: str | None
    flash_size: str | None
    mpy_arch: str | None
    port_pattern: str
    usb_ids: tuple  # "vid:pid" its console port shows (a USB-UART bridge's, or the chip's own USB)
    led_pin: int | None
    temperature_sensor: bool
    firmware: Firmware
    path: Path
    # Bytes `edgekit flash` takes from the end of vfs for the firmware's raw outbox partition
    # (edgekit.partitions); None keeps the image's table as it is (CircuitPython, or by choice).
    outbox_partition_size: int | None = None

    @property
    def simulated(self):
        """True for the simulated board (nothing to flash; reached over a socket)."""
        return self.chip == SIM_CHIP


def _esptool_chips():
    from esptool.targets import CHIP_DEFS

    return tuple(CHIP_DEFS)


def _field(data, key, types, where, required=True):
    if key not in data:
        if required:
            raise BoardError(f"{where}: missing field '{key}'")
        return None
    value = data[key]
    # bool is an int subclass: a 'true' baud must not pass as a number.
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        names = "/".join("null" if t is type(None) else t.__name__ for t in types)
        raise BoardError(f"{where}: field '{key}' must be {names}, not {json.dumps(value)}")
    return value


def _baud(data, key, where):
    baud = _field(data, key, (int,), where)
    if baud < 9600:
        raise BoardError(f"{where}: {key} {baud} is too low")
    return baud


def parse_board(data, path):
    """Check one board file's parsed JSON and return a Board; raise BoardError naming the bad field."""
    path = Path(path)
    where = f"board file {path}"
    if not isinstance(data, dict):
        raise BoardError(f"{where}: must hold one JSON object")
    name = _field(data, "name", (str,), where)
    if name != path.stem:
        raise BoardError(f"{where}: name '{name}' must match the file name '{path.stem}'")
    if not _NAME.match(name):
        raise BoardError(f"{where}: name '{name}' must be lower-case letters, digits and dashes")
    chip = _field(data, "chip", (str,), where)
    if chip != SIM_CHIP and chip not in _esptool_chips():
        raise BoardError(f"{where}: chip '{chip}' is not an esptool chip name"
                         f" (one of {', '.join(_esptool_chips())}, or '{SIM_CHIP}')")
    runtime = _field(data, "runtime", (str,), where)
    if runtime not in RUNTIMES:
        raise BoardError(f"{where}: runtime must be one of {', '.join(RUNTIMES)}, not '{runtime}'")
    offset_text = _field(data, "flash_offset", (str,), where)
    try:
        flash_offset = int(offset_text, 16)
    except ValueError:
        raise BoardError(f"{where}: flash_offset '{offset_text}' is not hex like '0x1000'") from None
    if "baud" in data:
        raise BoardError(f"{where}: field 'baud' is now two: 'console_baud' (the REPL's speed,"
                         f" {CONSOLE_BAUD} on a USB-UART board) and 'flash_baud' (esptool's)")
    console_baud = _baud(data, "console_baud", where)
    flash_baud = _baud(data, "flash_baud", where)
    flash_mode = _field(data, "flash_mode", (str, type(None)), where, required=False)
    if flash_mode not in FLASH_MODES:
        raise BoardError(f"{where}: flash_mode must be qio, qout, dio, dout or null")
    flash_size = _field(data, "flash_size", (str, type(None)), where, required=False)
    if flash_size is not None and not _FLASH_SIZE.match(flash_size):
        raise BoardError(f"{where}: flash_size '{flash_size}' must look like '4MB'")
    mpy_arch = _field(data, "mpy_arch", (str, type(None)), where)
    if mpy_arch not in MPY_ARCHES:
        raise BoardError(f"{where}: mpy_arch must be xtensawin, rv32imc or null")
    usb_ids = _field(data, "usb_ids", (list,), where)
    for usb_id in usb_ids:
        if not isinstance(usb_id, str) or not _USB_ID.match(usb_id):
            raise BoardError(f"{where}: usb_ids entry {json.dumps(usb_id)} must look like '10c4:ea60' or '303a:*'")
    fw = _field(data, "firmware", (dict,), where)
    fw_where = f"{where} (firmware)"
    sha = _field(fw, "sha256", (str, type(None)), fw_where)
    if sha is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha):
        raise BoardError(f"{fw_where}: sha256 must be 64 hex digits or null")
    firmware = Firmware(
        release=_field(fw, "release", (str,), fw_where),
        file=_field(fw, "file", (str, type(None)), fw_where),
        url=_field(fw, "url", (str, type(None)), fw_where),
        sha256=sha.lower() if sha else None,
        ota=_field(fw, "ota", (bool,), fw_where) if "ota" in fw else False,
    )
    if (firmware.file is None) != (firmware.url is None):
        raise BoardError(f"{fw_where}: give both file and url, or neither")
    outbox_size = _outbox_size(data, where, runtime, flash_size, chip)
    return Board(
        name=name,
        description=_field(data, "description", (str,), where),
        chip=chip,
        runtime=runtime,
        flash_offset=flash_offset,
        console_baud=console_baud,
        flash_baud=flash_baud,
        flash_mode=flash_mode,
        flash_size=flash_size,
        mpy_arch=mpy_arch,
        port_pattern=_field(data, "port_pattern", (str,), where),
        usb_ids=tuple(usb_ids),
        led_pin=_field(data, "led_pin", (int, type(None)), where),
        temperature_sensor=_field(data, "temperature_sensor", (bool,), where),
        firmware=firmware,
        path=path,
        outbox_partition_size=outbox_size,
    )


def _outbox_size(data, where, runtime, flash_size, chip):
    """The board's outbox partition size in bytes, or None; checked against its flash here.

    Missing means the default (256 KiB) on MicroPython and none on CircuitPython, which has no
    esp32.Partition to reach a raw partition with.
    """
    from edgekit import partitions

    if "outbox_partition_size" not in data:
        return partitions.DEFAULT_OUTBOX_SIZE if runtime == "micropython" else None
    text = _field(data, "outbox_partition_size", (str, type(None)), where)
    if text is None:
        return None
    if runtime != "micropython":
        raise BoardError(f"{where}: outbox_partition_size must be null on a {runtime} board"
                         " (only MicroPython's esp32.Partition reaches a raw partition)")
    try:
        size = int(text, 16)
    except ValueError:
        raise BoardError(f"{where}: outbox_partition_size '{text}' is not hex like '0x10000'") from None
    if chip != SIM_CHIP and flash_size is None:
        raise BoardError(f"{where}: an outbox partition needs the board's flash_size (like '4MB');"
                         " give it, or set outbox_partition_size to null")
    flash = partitions.flash_bytes(flash_size or partitions.SIM_FLASH_SIZE)
    # MicroPython's generic table (4 MiB and up) stands in for the image, so a size that cannot
    # fit is caught now; smaller flash takes other builds' tables, checked against the image itself.
    table = partitions.MICROPYTHON_TABLE if flash >= partitions.flash_bytes("4MB") else ()
    try:
        partitions.with_outbox(table, flash, size)
    except partitions.PartitionError as e:
        raise BoardError(f"{where}: outbox_partition_size {text}: {e}") from None
    return size


def read_board_file(path):
    """Load and check one board file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise BoardError(f"board file {path} is not valid JSON (line {e.lineno}: {e.msg})") from None
    return parse_board(data, path)


# Folders given with --boards for this command (set by boards_option), read before the shipped ones.
_given_dirs = []


def user_dirs():
    """The user's board folders, first wins: --boards DIR, then $EDGEKIT_HOME/boards (when set).

    $EDGEKIT_HOME/boards only when EDGEKIT_HOME is set: a ./boards of some other project in the
    working folder is not ours to read.
    """
    dirs = list(_given_dirs)
    if os.environ.get("EDGEKIT_HOME"):
        dirs.append(Path(os.environ["EDGEKIT_HOME"]) / "boards")
    return [d for d in dirs if d.is_dir()]


def search_path(boards_dir=None):
    """The folders board files are read from, first wins; boards_dir alone when given."""
    if boards_dir:
        return [Path(boards_dir)]
    shipped = Path(BOARDS_DIR)
    return [d for d in user_dirs() if d.resolve() != shipped.resolve()] + [shipped]


def _files(boards_dir=None):
    """{name: path} of every board file, a user's file hiding a shipped one of the same name."""
    found = {}
    for folder in search_path(boards_dir):
        for p in folder.glob("*.json"):
            found.setdefault(p.stem, p)
    return found


def board_names(boards_dir=None):
    """Names of the boards in boards_dir (default: the user's folders and the shipped boards), sorted."""
    return sorted(_files(boards_dir))


def load_board(name, boards_dir=None):
    """The Board called name (case ignored: board names are lower-case by rule); raise BoardError
    listing the known boards, with the closest as a suggestion, if there is none."""
    files = _files(boards_dir)
    path = files.get(name) or files.get(name.lower())
    if path is None:
        known = sorted(files)
        close = difflib.get_close_matches(name.lower(), known, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'? " if close else ""
        if boards_dir:
            where = f"{Path(boards_dir)}/{name}.json"
        else:
            where = f"{name.lower()}.json in a folder of yours given with --boards DIR, or in $EDGEKIT_HOME/boards"
        raise BoardError(f"unknown board '{name}'; {hint}known boards: {', '.join(known) or 'none'}"
                         f" (add one as {where})")
    return read_board_file(path)


def list_boards(boards_dir=None):
    """Every board in boards_dir (default: the user's folders and the shipped boards), sorted by name."""
    return [read_board_file(p) for _, p in sorted(_files(boards_dir).items())]


def _remember_dirs(ctx, param, value):
    _given_dirs[:] = [Path(v) for v in value or ()]
    return value


def boards_option(f):
    """--boards DIR on a command that names a board: the user's own board files, beside the shipped ones."""
    return click.option("--boards", "boards_dirs", multiple=True, expose_value=False, is_eager=True,
                        callback=_remember_dirs, metavar="DIR",
                        type=click.Path(exists=True, file_okay=False),
                        help="a folder of your own board files (NAME.json), read before the shipped ones "
                             "(also $EDGEKIT_HOME/boards)")(f)


def _code_form(board):
    # CircuitPython's .mpy format is not MicroPython's: those boards get .py sources.
    if board.runtime == "circuitpython":
        return ".py"
    return board.mpy_arch or "bytecode"


def board_rows(boards):
    """Rows for the `edgekit boards` table (header first)."""
    rows = [("board", "chip", "runtime", "offset", "console baud", "flash baud", "mpy arch", "outbox",
             "port", "release")]
    for b in boards:
        rows.append((b.name, b.chip, b.runtime, hex(b.flash_offset), str(b.console_baud), str(b.flash_baud),
                     _code_form(b), _outbox_column(b), b.port_pattern, b.firmware.release))
    return rows


def _outbox_column(board):
    # The raw partition edgekit flash writes for the firmware's outbox, in KiB; '-' for none.
    return f"{board.outbox_partition_size // 1024}K" if board.outbox_partition_size else "-"


def boards_for_cli():
    """Every board, or the one-line UserError naming the bad board file."""
    try:
        return list_boards()
    except BoardError as e:
        raise UserError(str(e)) from None


@click.command("boards")
@click.option("--json", "as_json", is_flag=True, help="print the board files as one JSON list")
@boards_option
def boards_cmd(as_json):
    """List the supported boards: one JSON file each, shipped with edgekit, and your own
    from --boards DIR and $EDGEKIT_HOME/boards (yours win on a name both hold)."""
    boards = boards_for_cli()
    if as_json:
        click.echo(json.dumps([json.loads(b.path.read_text()) for b in boards], indent=2))
        return
    rows = board_rows(boards)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
