"""Flash safety with real esptool image handling, and release downloads from a local HTTP server.

Images are built here with esptool's own image classes. The only fake is the board
on the serial line: a recorder stands in for the esptool.cmds module, and every
call it receives is bound against the real esptool function's signature.
"""
import dataclasses
import hashlib
import http.server
import inspect
import threading
from functools import partial

import esptool.cmds
import pytest
from click.testing import CliRunner
from esptool.bin_image import (ELFSection, ESP32C3FirmwareImage, ESP32C6FirmwareImage, ESP32FirmwareImage,
                               ESP32S2FirmwareImage, ESP32S3FirmwareImage)
from esptool.loader import ESPLoader
from esptool.targets import CHIP_DEFS
from esptool.util import FatalError

from edgekit import partitions as pt
from edgekit.boards import list_boards, load_board
from edgekit.cli import main
from edgekit.flash import (DownloadError, FlashError, fetch_release, plan_flash, read_image, release_url,
                              run_flash)

IMAGE_CLASSES = {
    "esp32": ESP32FirmwareImage,
    "esp32s2": ESP32S2FirmwareImage,
    "esp32s3": ESP32S3FirmwareImage,
    "esp32c3": ESP32C3FirmwareImage,
    "esp32c6": ESP32C6FirmwareImage,
}


def build_image(chip, kind="bootloader", lead=0, tail=0x2000, table=pt.MICROPYTHON_TABLE):
    """A release-like file: `lead` bytes of erased flash, then a real image, then erased flash.

    A bootloader loads into IRAM only; an application also maps a flash (DROM) segment.
    A full (bootloader) image carries its partition table at 0x8000, as a merged release does;
    table=None leaves it out.
    """
    cls = IMAGE_CLASSES[chip]
    rom = cls.ROM_LOADER
    iram = next(start for start, _end, name in rom.MEMORY_MAP if name == "IRAM")
    img = cls()
    img.entrypoint = iram
    img.segments.append(ELFSection(b".iram0.text", iram, bytes(range(256)) * 4, flags=0))
    if kind == "app":
        img.segments.append(ELFSection(b".flash.rodata", rom.DROM_MAP_START + 0x20, b"edgekit" * 40, flags=0))
        return b"\xff" * lead + img.save(None) + b"\xff" * tail
    data = b"\xff" * lead + img.save(None)
    if table is not None:
        at = pt.TABLE_OFFSET - (rom.BOOTLOADER_FLASH_OFFSET - lead)  # where 0x8000 falls in the file
        data = data.ljust(at, b"\xff") + pt.encode(table) + b"\xff" * 0x400 + b"app" * 100
    return data + b"\xff" * tail


class FakeESP:
    """The loader object esptool returns after connecting: a chip name and a port to close."""

    def __init__(self, chip, calls):
        self.CHIP_NAME = CHIP_DEFS[chip].CHIP_NAME
        self.calls = calls

    def change_baud(self, baud):
        inspect.signature(ESPLoader.change_baud).bind(self, baud)
        self.calls.append(("change_baud", {"baud": baud}))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.calls.append(("close", {}))


class RecordingCmds:
    """Stands in for esptool.cmds: records each call, bound to the real function's signature.

    It keeps the flash those calls would leave (erased to FF, then written), so what is read
    back is what was written; `after_write` may damage it, as a failing chip would.
    """

    def __init__(self, chip, fail=None, after_write=None, flash_size=None):
        self.chip = chip
        self.flash_size = flash_size  # what detect_flash_size answers ('4MB'; None: not detected)
        self.fail = fail
        self.after_write = after_write
        self.calls = []
        self.flash = bytearray()
        self.esp = FakeESP(chip, self.calls)

    def __getattr__(self, name):
        real = getattr(esptool.cmds, name)

        def record(*args, **kwargs):
            bound = inspect.signature(real).bind(*args, **kwargs)
            self.calls.append((name, dict(bound.arguments)))
            if self.fail and self.fail[0] == name:
                raise self.fail[1]
            if name == "erase_flash":
                self.flash = bytearray()
            elif name == "write_flash":
                for addr, data in bound.arguments["addr_data"]:
                    self.flash[len(self.flash):] = b"\xff" * max(0, addr + len(data) - len(self.flash))
                    self.flash[addr:addr + len(data)] = data
                if self.after_write:
                    self.after_write(self.flash)
            elif name == "detect_flash_size":
                return self.flash_size
            elif name == "read_flash":
                addr, size = bound.arguments["address"], bound.arguments["size"]
                return bytes(self.flash[addr:addr + size]).ljust(size, b"\xff")
            return self.esp if name in ("detect_chip", "run_stub") else None

        return record

    def names(self):
        return [name for name, _ in self.calls]

    def args(self, name):
        return next(a for n, a in self.calls if n == name)


# Facts from the release pages: MicroPython's ESP32 .bin starts with the bootloader and goes to 0x1000;
# S3/C3/C6 files start with the bootloader at 0x0; CircuitPython's firmware.bin is merged from 0x0,
# so on an S2 (bootloader at 0x1000) it starts with 0x1000 bytes of erased flash.
BOARD_CASES = {
    "esp32-devkitc": ("esp32", 0x0, 0x1000),
    "esp32-s3-devkitc-1": ("esp32s3", 0x0, 0x0),
    "esp32-c3-devkitm-1": ("esp32c3", 0x0, 0x0),
    "esp32-c6-devkitc-1": ("esp32c6", 0x0, 0x0),
    "adafruit-feather-esp32s3": ("esp32s3", 0x0, 0x0),
    "lolin-s2-mini": ("esp32s2", 0x1000, 0x0),
}


def test_every_flashable_board_has_a_case():
    assert {b.name for b in list_boards() if not b.simulated} == set(BOARD_CASES)


def test_read_image_tells_the_chip_from_the_header(tmp_path):
    for chip, lead in (("esp32", 0), ("esp32s3", 0), ("esp32s2", 0x1000)):
        path = tmp_path / f"{chip}.bin"
        path.write_bytes(build_image(chip, lead=lead))
        info = read_image(path)
        assert (info.chip, info.chip_name, info.header_offset, info.kind) == \
            (chip, CHIP_DEFS[chip].CHIP_NAME, lead, "bootloader")
    path.write_bytes(build_image("esp32s3", kind="app"))
    assert read_image(path).kind == "app"


@pytest.mark.parametrize("board_name, image_chip", [("esp32-devkitc", "esp32s3"), ("esp32-s3-devkitc-1", "esp32"),
                                                     ("lolin-s2-mini", "esp32s3")])
def test_a_chip_mismatch_is_refused_naming_both(tmp_path, board_name, image_chip):
    board = load_board(board_name)
    path = tmp_path / "wrong.bin"
    path.write_bytes(build_image(image_chip))
    with pytest.raises(FlashError) as e:
        plan_flash(board, "/dev/ttyUSB0", path)
    msg = str(e.value)
    assert CHIP_DEFS[image_chip].CHIP_NAME + " image" in msg
    assert f"has an {CHIP_DEFS[board.chip].CHIP_NAME} chip" in msg and board_name in msg
    assert "\n" not in msg


@pytest.mark.parametrize("board_name", sorted(BOARD_CASES))
def test_each_board_is_flashed_at_its_offset_baud_and_chip(tmp_path, board_name):
    chip, lead, address = BOARD_CASES[board_name]
    board = load_board(board_name)
    data = build_image(chip, lead=lead)
    path = tmp_path / "release.bin"
    path.write_bytes(data)
    cmds = RecordingCmds(chip)
    said = []
    plan = plan_flash(board, "/dev/ttyTEST0", path)
    assert run_flash(plan, cmds=cmds, say=said.append) == chip
    table = board.runtime == "micropython"
    size_check, read_back = (["detect_flash_size"], ["read_flash"]) if table else ([], [])
    assert cmds.names() == ["detect_chip", "run_stub", "change_baud", "attach_flash", *size_check,
                            "erase_flash", "write_flash", *read_back, "reset_chip", "close"]
    assert cmds.args("detect_chip")["port"] == "/dev/ttyTEST0"
    assert cmds.args("detect_chip")["baud"] == 115200  # the ROM's rate; the board's comes after the stub
    assert cmds.args("change_baud")["baud"] == board.flash_baud == 460800
    write = cmds.args("write_flash")
    assert write["addr_data"] == [(address, plan.data)]
    table_at = pt.TABLE_OFFSET - address
    # Only the table's 0xC00 bytes differ from the release file, and only on MicroPython boards.
    assert plan.data[:table_at] + plan.data[table_at + 0xC00:] == data[:table_at] + data[table_at + 0xC00:]
    assert (plan.data == data) == (board.runtime == "circuitpython")
    if read_back:
        assert cmds.args("read_flash")["address"] == 0x8000
        assert pt.find(pt.decode(cmds.flash[0x8000:0x8C00]), "outbox").row() == \
            ("outbox", 1, 0x80, pt.flash_bytes(board.flash_size) - 0x40000, 0x40000)
    assert write["flash_mode"] == (board.flash_mode or "keep")
    assert write["flash_size"] == (board.flash_size or "keep")
    assert cmds.args("reset_chip")["reset_mode"] == "hard-reset"
    assert any("erasing" in line for line in said) and any(f"{address:#x}" in line for line in said)


def test_the_connected_chip_must_be_the_boards_before_anything_is_erased(tmp_path):
    path = tmp_path / "esp32.bin"
    path.write_bytes(build_image("esp32"))
    cmds = RecordingCmds("esp32s3")  # an S3 is plugged in, the user said esp32-devkitc
    with pytest.raises(FlashError, match="chip on /dev/ttyUSB0 is an ESP32-S3, but board esp32-devkitc has an ESP32"):
        run_flash(plan_flash(load_board("esp32-devkitc"), "/dev/ttyUSB0", path), cmds=cmds, say=lambda s: None)
    assert "erase_flash" not in cmds.names() and "write_flash" not in cmds.names()
    assert cmds.names()[-1] == "close"


def test_esptool_and_serial_failures_become_one_line(tmp_path):
    path = tmp_path / "esp32.bin"
    path.write_bytes(build_image("esp32"))
    plan = plan_flash(load_board("esp32-devkitc"), "/dev/ttyUSB0", path)
    cmds = RecordingCmds("esp32", fail=("write_flash", FatalError("Timed out waiting for packet header\nmore")))
    with pytest.raises(FlashError) as e:
        run_flash(plan, cmds=cmds, say=lambda s: None)
    assert "Timed out waiting for packet header" in str(e.value) and "\n" not in str(e.value)
    assert cmds.names()[-1] == "close"


def test_real_esptool_on_a_missing_port_fails_cleanly(tmp_path):
    path = tmp_path / "esp32.bin"
    path.write_bytes(build_image("esp32"))
    plan = plan_flash(load_board("esp32-devkitc"), str(tmp_path / "ttyUSB-missing"), path)
    with pytest.raises(FlashError, match="ttyUSB-missing") as e:
        run_flash(plan, say=lambda s: None)
    assert "\n" not in str(e.value)


def test_images_that_must_not_be_flashed(tmp_path):
    board = load_board("esp32-s3-devkitc-1")
    path = tmp_path / "x.bin"
    path.write_bytes(build_image("esp32s3", kind="app"))
    with pytest.raises(FlashError, match="application image without a bootloader"):
        plan_flash(board, "p", path)
    path.write_bytes(b"UF2\n" + bytes(600))
    with pytest.raises(FlashError, match="not an ESP firmware image"):
        plan_flash(board, "p", path)
    path.write_bytes(b"")
    with pytest.raises(FlashError, match="empty"):
        plan_flash(board, "p", path)
    with pytest.raises(FlashError, match="cannot read"):
        plan_flash(board, "p", tmp_path / "missing.bin")
    with pytest.raises(FlashError, match="simulated"):
        plan_flash(load_board("sim"), "p", path)
    # A CircuitPython S2 file (merged from 0x0) written at MicroPython's 0x1000 would not boot.
    path.write_bytes(build_image("esp32s2", lead=0x1000))
    s2_at_0x1000 = dataclasses.replace(load_board("lolin-s2-mini"), flash_offset=0x1000, runtime="micropython")
    with pytest.raises(FlashError, match="would land at 0x2000, but an ESP32-S2 boots from 0x1000"):
        plan_flash(s2_at_0x1000, "p", path)


def test_cli_refuses_a_mismatch_in_one_line(tmp_path):
    path = tmp_path / "s3.bin"
    path.write_bytes(build_image("esp32s3"))
    result = CliRunner().invoke(main, ["flash", "esp32-devkitc", "--port", "/dev/ttyUSB0", "--firmware", str(path)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: s3.bin is an ESP32-S3 image but board esp32-devkitc")
    result = CliRunner().invoke(main, ["flash", "esp32-devkitc", "--port", "/dev/ttyUSB0"])
    assert result.exit_code == 1 and "exactly one of --firmware FILE or --download" in result.output


# --- downloads ---

@pytest.fixture
def release_server(tmp_path):
    """A local HTTP server (127.0.0.1, free port) serving a folder; counts the requests it answers."""
    root = tmp_path / "mirror"
    root.mkdir()
    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            hits.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/firmware", hits
    server.shutdown()
    server.server_close()
    thread.join(5)


def _publish(root, board, data):
    (root / "firmware").mkdir(exist_ok=True)
    (root / "firmware" / board.firmware.file).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def test_download_checks_the_pinned_checksum_and_caches(tmp_path, release_server):
    root, base, hits = release_server
    data = build_image("esp32", tail=0x20000)
    board = load_board("esp32-devkitc")
    pinned = dataclasses.replace(board, firmware=dataclasses.replace(board.firmware, sha256=_publish(root, board, data)))
    cache = tmp_path / "cache"
    got = fetch_release(pinned, cache, base_url=base, say=lambda s: None)
    assert got.verified and not got.cached and got.path.read_bytes() == data
    assert got.path == cache / board.firmware.file and len(hits) == 1
    again = fetch_release(pinned, cache, base_url=base, say=lambda s: None)
    assert again.cached and again.verified and len(hits) == 1  # served from the cache, checksum rechecked
    assert plan_flash(board, "p", got.path).address == 0x1000


def test_download_with_a_wrong_checksum_keeps_nothing(tmp_path, release_server):
    root, base, _ = release_server
    board = load_board("esp32-s3-devkitc-1")
    _publish(root, board, build_image("esp32s3"))
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="expected 00000000") as e:
        fetch_release(board, cache, base_url=base, sha256="0" * 64, say=lambda s: None)
    assert "nothing was kept" in str(e.value)
    assert list(cache.iterdir()) == []


def test_download_without_a_pinned_checksum_is_refused(tmp_path, release_server):
    root, base, hits = release_server
    board = load_board("lolin-s2-mini")
    assert board.firmware.sha256 is None
    _publish(root, board, build_image("esp32s2", lead=0x1000))
    with pytest.raises(DownloadError, match="pins no sha256 .*pass --sha256 HEX"):
        fetch_release(board, tmp_path / "cache", base_url=base, say=lambda s: None)
    assert hits == [] and not (tmp_path / "cache").exists()


def test_download_errors(tmp_path, release_server):
    _, base, _ = release_server
    board = load_board("esp32-c3-devkitm-1")
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch_release(board, tmp_path / "cache", base_url=base, sha256="0" * 64, say=lambda s: None)
    assert list((tmp_path / "cache").iterdir()) == []
    with pytest.raises(DownloadError, match="use https://"):
        release_url(board, "http://mirror.example.com/fw")
    with pytest.raises(DownloadError, match="no release file"):
        release_url(load_board("sim"))
    assert release_url(board) == board.firmware.url


def test_cli_download_then_check(tmp_path, release_server):
    root, base, _ = release_server
    board = load_board("esp32-c6-devkitc-1")
    digest = _publish(root, board, build_image("esp32c6"))
    result = CliRunner().invoke(main, ["flash", board.name, "--download", "--base-url", base,
                                       "--cache", str(tmp_path / "c"), "--check"])
    assert result.exit_code == 1, result.output
    assert f"pins no sha256 for {board.firmware.file}: pass --sha256 HEX" in result.output
    assert not (tmp_path / "c").exists()
    result = CliRunner().invoke(main, ["flash", board.name, "--download", "--base-url", base,
                                       "--cache", str(tmp_path / "c"), "--sha256", digest, "--check"])
    assert result.exit_code == 0 and "warning" not in result.output
    assert "image ok: ESP32-C6 bootloader image" in result.output and "at 0x0" in result.output


# --- the partition table with the outbox partition ---

def _release(tmp_path, chip="esp32", **kwargs):
    path = tmp_path / f"{chip}-release.bin"
    path.write_bytes(build_image(chip, **kwargs))
    return path


def test_the_outbox_table_is_written_read_back_and_said_before_erasing(tmp_path):
    board = load_board("esp32-devkitc")
    plan = plan_flash(board, "/dev/ttyUSB0", _release(tmp_path))
    assert [p.row() for p in plan.table][-2:] == [("vfs", 1, 0x81, 0x200000, 0x1C0000),
                                                  ("outbox", 1, 0x80, 0x3C0000, 0x40000)]
    assert "outbox 0x3c0000+0x40000 (256 KiB) (data/0x80)" in plan.describe_table()
    cmds = RecordingCmds("esp32", flash_size="4MB")
    said = []
    run_flash(plan, cmds=cmds, say=said.append)
    # The release file starts at 0x1000 on an ESP32: the table is 0x7000 bytes into it.
    assert pt.decode(plan.data[0x7000:0x7C00]) == pt.decode(cmds.flash[0x8000:0x8C00]) == list(plan.table)
    assert cmds.args("read_flash")["size"] == 0xC00
    erasing = next(i for i, line in enumerate(said) if "erasing" in line)
    assert "files on the board are lost" in said[erasing]
    assert "outbox at 0x3c0000" in said[-2]


def test_no_outbox_partition_writes_the_images_own_table(tmp_path):
    path = _release(tmp_path, "esp32s3")
    plan = plan_flash(load_board("esp32-s3-devkitc-1"), "/dev/ttyUSB0", path, outbox=False)
    assert plan.table is None and plan.data == path.read_bytes() and plan.describe_table() is None
    cmds = RecordingCmds("esp32s3")
    run_flash(plan, cmds=cmds, say=lambda s: None)
    assert "read_flash" not in cmds.names()
    assert pt.decode(cmds.flash[0x8000:0x8C00]) == list(pt.MICROPYTHON_TABLE)


def test_a_table_that_reads_back_wrong_stops_in_one_line(tmp_path):
    plan = plan_flash(load_board("esp32-c3-devkitm-1"), "/dev/ttyUSB0", _release(tmp_path, "esp32c3"))

    def flip_a_bit_in_the_outbox_entry(flash):
        flash[0x8000 + 4 * 32 + 4] ^= 0x10

    cmds = RecordingCmds("esp32c3", after_write=flip_a_bit_in_the_outbox_entry)
    with pytest.raises(FlashError, match="read back from /dev/ttyUSB0 is not the one written") as e:
        run_flash(plan, cmds=cmds, say=lambda s: None)
    assert "MD5" in str(e.value) and "\n" not in str(e.value)
    assert "reset_chip" not in cmds.names() and cmds.names()[-1] == "close"

    def keep_the_old_table(flash):  # a valid table, but not the one written
        flash[0x8000:0x8C00] = pt.encode(pt.MICROPYTHON_TABLE)

    with pytest.raises(FlashError, match=r"\(3 partitions where 5 were written\)"):
        run_flash(plan, cmds=RecordingCmds("esp32c3", after_write=keep_the_old_table), say=lambda s: None)


def test_an_image_without_a_table_or_room_is_refused_naming_the_way_out(tmp_path):
    board = load_board("esp32-devkitc")
    with pytest.raises(FlashError, match="no partition table at 0x8000.*--no-outbox-partition") as e:
        plan_flash(board, "p", _release(tmp_path, table=None))
    assert "\n" not in str(e.value)
    assert plan_flash(board, "p", _release(tmp_path, table=None), outbox=False).table is None
    full = pt.MICROPYTHON_TABLE[:2] + (pt.Partition("factory", 0, 0, 0x10000, 0x3E0000),)
    with pytest.raises(FlashError, match="less than 128 KiB of filesystem"):
        plan_flash(board, "p", _release(tmp_path, table=full))


def test_cli_check_says_the_table_and_no_outbox_partition_drops_it(tmp_path):
    path = _release(tmp_path, "esp32c6")
    args = ["flash", "esp32-c6-devkitc-1", "--port", "/dev/ttyUSB0", "--firmware", str(path), "--check"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "partition table at 0x8000: filesystem vfs 0x200000+0x5c0000" in result.output
    assert "outbox 0x7c0000+0x40000 (256 KiB) (data/0x80)" in result.output
    result = CliRunner().invoke(main, args + ["--no-outbox-partition"])
    assert result.exit_code == 0 and "partition table" not in result.output


def test_a_chip_with_less_flash_than_the_board_file_says_is_refused_before_erasing(tmp_path):
    plan = plan_flash(load_board("esp32-s3-devkitc-1"), "/dev/ttyUSB0", _release(tmp_path, "esp32s3"))
    cmds = RecordingCmds("esp32s3", flash_size="4MB")  # an N4 module on a board file that says 8MB
    with pytest.raises(FlashError, match="has 4MB of flash but board esp32-s3-devkitc-1 says 8MB: the outbox"
                                         " partition would end at 0x800000") as e:
        run_flash(plan, cmds=cmds, say=lambda s: None)
    assert "\n" not in str(e.value) and "erase_flash" not in cmds.names()
    said = []
    run_flash(plan, cmds=RecordingCmds("esp32s3", flash_size="16MB"), say=said.append)
    assert any("the chip has 16MB of flash; the table uses the board file's 8MB" in line for line in said)


@pytest.mark.parametrize("board_name, chip", [("esp32-devkitc", "esp32"), ("esp32-c3-devkitm-1", "esp32c3")])
def test_a_release_merged_by_esptool_gets_its_table_replaced_and_nothing_else(tmp_path, board_name, chip):
    # MicroPython's build lays a release out as ports/esp32/makeimg.py does: bootloader at the
    # chip's boot offset, table at 0x8000, app at 0x10000, FF between; esptool's merge-bin does the same.
    board = load_board(board_name)
    boot = CHIP_DEFS[chip].BOOTLOADER_FLASH_OFFSET
    app = build_image(chip, kind="app", tail=0)
    merged = esptool.cmds.merge_bin([(boot, build_image(chip, table=None, tail=0)),
                                     (0x8000, pt.encode(pt.MICROPYTHON_TABLE)), (0x10000, app)],
                                    chip, output=None, target_offset=board.flash_offset)
    path = tmp_path / "merged.bin"
    path.write_bytes(merged)
    plan = plan_flash(board, "p", path)
    at = 0x8000 - board.flash_offset
    assert pt.table_in_image(merged, board.flash_offset) == list(pt.MICROPYTHON_TABLE)
    assert pt.decode(plan.data[at:at + 0xC00]) == list(plan.table)
    assert plan.data[:at] == merged[:at] and plan.data[at + 0xC00:] == merged[at + 0xC00:]
    assert plan.data[0x10000 - board.flash_offset:] == app


def test_an_image_that_brings_its_own_outbox_is_written_as_it_is(tmp_path):
    own = pt.MICROPYTHON_TABLE + (pt.Partition("outbox", 1, 0x80, 0x200000, 0x20000),)
    path = _release(tmp_path, table=own)
    plan = plan_flash(load_board("esp32-devkitc"), "p", path)
    assert plan.table == own and plan.data == path.read_bytes()
    assert plan.describe_table().startswith("partition table at 0x8000: outbox 0x200000+0x20000 (128 KiB)")


def test_a_board_on_the_ota_variant_gets_ota_slots(tmp_path):
    # boards whose firmware is MicroPython's OTA variant ("ota": true): a release without OTA slots
    # gets MicroPython's OTA table (its app moves from factory to ota_0, same offset) when the app
    # fits; a release that brings its own OTA table keeps it; an app too big for ota_0 is refused.
    base = load_board("esp32-devkitc")
    board = dataclasses.replace(base, firmware=dataclasses.replace(base.firmware, ota=True))
    plan = plan_flash(board, "/dev/ttyUSB0", _release(tmp_path))
    rows = [p.row() for p in plan.table]
    assert [r[0] for r in rows] == ["nvs", "otadata", "phy_init", "ota_0", "ota_1", "vfs", "outbox"]
    assert rows[3] == ("ota_0", 0, 0x10, 0x10000, 0x180000) and rows[1] == ("otadata", 1, 0, 0xD000, 0x2000)
    assert "OTA slots ota_0 0x10000+0x180000" in plan.describe_table()
    plan = plan_flash(board, "/dev/ttyUSB0", _release(tmp_path), outbox=False)
    assert [p.label for p in plan.table] == ["nvs", "otadata", "phy_init", "ota_0", "ota_1"]
    own = _release(tmp_path, table=pt.MICROPYTHON_OTA_TABLE)
    assert pt.ota_slots(plan_flash(base, "p", own).table)[0]  # its own OTA table, outbox added
    big = tmp_path / "big.bin"
    big.write_bytes(build_image("esp32").rstrip(b"\xff") + b"\x01" * 0x190000)
    with pytest.raises(FlashError, match="does not fit ota_0 .* wants MicroPython's OTA variant"):
        plan_flash(board, "p", big)
