"""The partition table edgekit flash writes: ESP-IDF's binary format, MicroPython's real layouts,
and the outbox partition where the firmware's contract says it is.

No MicroPython release image can be fetched here, so the byte-exact checks are against ESP-IDF's
own test vectors (whose MD5s gen_esp32part.py computed) and a table built by hand from the format
whose MD5 was taken with md5sum; MicroPython's tables come from its CSVs, copied below.
"""
import hashlib
import json
import struct

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from edgekit import partitions as pt
from edgekit.boards import BOARDS_DIR, BoardError, list_boards, load_board, read_board_file
from edgekit.cli import main

# espressif/esp-idf components/partition_table/test_gen_esp32part_host/gen_esp32part_tests.py:
# LONGER_BINARY_TABLE and its MD5 as gen_esp32part.py wrote them.
IDF_LONGER_TABLE = (
    b"\xaa\x50\x00\x00" + b"\x00\x00\x01\x00" + b"\x00\x00\x10\x00" + b"factory\0" + b"\0" * 8 + b"\0" * 4
    + b"\xaa\x50\x01\x20" + b"\x00\x00\x11\x00" + b"\x00\x02\x00\x00" + b"data" + b"\0" * 12 + b"\0" * 4
    + b"\xaa\x50\x10\x00" + b"\x00\x00\x15\x00" + b"\x00\x10\x00\x00" + b"second" + b"\0" * 10 + b"\0" * 4
    + b"\xeb\xeb" + b"\xff" * 14 + bytes.fromhex("f9bd061b45686f86571a2cd52a1da65b")
)
# Same file, BinaryOutputTests.test_binary_entry: one entry 'first' 0x30/0xEE at 0x100400, 0x300000 bytes.
IDF_ONE_ENTRY_MD5 = bytes.fromhex("43033f334087575169839b4061b12726")

# micropython/micropython ports/esp32/*.csv (the name, then the rows as the file has them).
MICROPYTHON_CSV = {
    # 1.26+: the default of boards/sdkconfig.base; no vfs, MicroPython sizes it at boot (micropython#17337).
    "partitions-4MiBplus.csv (1.26)": """\
nvs,      data, nvs,     0x9000,  0x6000,
phy_init, data, phy,     0xf000,  0x1000,
factory,  app,  factory, 0x10000, 0x1F0000,
""",
    "partitions-4MiB.csv": """\
# Name,   Type, SubType, Offset,  Size, Flags
nvs,      data, nvs,     0x9000,  0x6000,
phy_init, data, phy,     0xf000,  0x1000,
factory,  app,  factory, 0x10000, 0x1F0000,
vfs,      data, fat,     0x200000, 0x200000,
""",
    "partitions-4MiB.csv (romfs)": """\
nvs,      data, nvs,     0x9000,  0x6000,
phy_init, data, phy,     0xf000,  0x1000,
factory,  app,  factory, 0x10000, 0x1D0000,
romfs,    data, 0x8f,    0x1E0000, 0x20000,
vfs,      data, fat,     0x200000, 0x200000,
""",
    "partitions-8MiB.csv": """\
nvs,      data, nvs,     0x9000,  0x6000,
phy_init, data, phy,     0xf000,  0x1000,
factory,  app,  factory, 0x10000, 0x1F0000,
vfs,      data, fat,     0x200000, 0x600000,
""",
    "partitions-16MiB.csv": """\
nvs,      data, nvs,     0x9000,  0x6000,
phy_init, data, phy,     0xf000,  0x1000,
factory,  app,  factory, 0x10000, 0x1F0000,
vfs,      data, fat,     0x200000, 0xE00000,
""",
    "partitions-4MiB-ota.csv": """\
nvs,      data, nvs,     0x9000,   0x4000,
otadata,  data, ota,     0xd000,   0x2000,
phy_init, data, phy,     0xf000,   0x1000,
ota_0,    app,  ota_0,   0x10000,  0x180000,
ota_1,    app,  ota_1,   0x190000, 0x180000,
vfs,      data, fat,     0x310000, 0x0f0000,
""",
}
FLASH_OF = {"partitions-8MiB.csv": "8MB", "partitions-16MiB.csv": "16MB"}

MICROPYTHON_BOARDS = [b for b in list_boards() if b.runtime == "micropython"]


def _strip_ff(table):
    return table.rstrip(b"\xff")


def test_idf_vectors_decode_and_encode_byte_exact():
    parts = pt.decode(IDF_LONGER_TABLE + b"\xff" * 32)
    # (The vector's comments say 128KB and 1MB; its bytes say 0x200 and 0x1000.)
    assert [p.row() for p in parts] == [("factory", 0x00, 0x00, 0x10000, 0x100000),
                                        ("data", 0x01, 0x20, 0x110000, 0x200),
                                        ("second", 0x10, 0x00, 0x150000, 0x1000)]
    encoded = pt.encode(parts)
    assert len(encoded) == pt.MAX_TABLE_LEN and encoded[len(IDF_LONGER_TABLE):] == b"\xff" * (0xC00 - 128)
    assert encoded[:len(IDF_LONGER_TABLE)] == IDF_LONGER_TABLE
    one = pt.encode([pt.Partition("first", 0x30, 0xEE, 0x100400, 0x300000)])
    assert one[32:48] == b"\xeb\xeb" + b"\xff" * 14 and one[48:64] == IDF_ONE_ENTRY_MD5


def test_micropython_126_table_byte_exact_against_one_built_by_hand():
    entry = struct.Struct("<2sBBII16sI")  # the layout, written out again rather than imported
    by_hand = (bytes.fromhex("aa500102") + (0x9000).to_bytes(4, "little") + (0x6000).to_bytes(4, "little")
               + b"nvs".ljust(16, b"\0") + bytes(4)
               + bytes.fromhex("aa500101 00f00000 00100000") + b"phy_init".ljust(16, b"\0") + bytes(4)
               + bytes.fromhex("aa500000 00000100 00001f00") + b"factory".ljust(16, b"\0") + bytes(4))
    assert entry.unpack(by_hand[64:96])[3:5] == (0x10000, 0x1F0000)
    # md5sum of those 96 bytes, taken outside Python
    assert hashlib.md5(by_hand).hexdigest() == "8405a9bb5ce0b84c4f2ca5de9a76b050"
    expected = by_hand + b"\xeb\xeb" + b"\xff" * 14 + bytes.fromhex("8405a9bb5ce0b84c4f2ca5de9a76b050")
    table = pt.encode(pt.parse_csv(MICROPYTHON_CSV["partitions-4MiBplus.csv (1.26)"]))
    assert _strip_ff(table) == expected
    assert table == pt.encode(pt.MICROPYTHON_TABLE)  # the stand-in for the sim is that table


@pytest.mark.parametrize("name", sorted(MICROPYTHON_CSV))
def test_micropython_tables_round_trip(name):
    parts = pt.parse_csv(MICROPYTHON_CSV[name])
    pt.check(parts, pt.flash_bytes(FLASH_OF.get(name, "4MB")))
    binary = pt.encode(parts)
    assert pt.decode(binary) == parts
    assert pt.decode(binary + b"\xff" * 0x400) == parts  # the rest of the sector, as flash holds it
    count = len(parts) * 32
    assert binary[count:count + 16] == b"\xeb\xeb" + b"\xff" * 14
    assert binary[count + 16:count + 32] == hashlib.md5(binary[:count]).digest()


def test_decode_refuses_what_the_bootloader_refuses():
    good = pt.encode(pt.MICROPYTHON_TABLE)
    with pytest.raises(pt.PartitionError, match="MD5"):
        pt.decode(good[:8] + b"\x01" + good[9:])  # one bit of nvs's size flipped
    with pytest.raises(pt.PartitionError, match="magic"):
        pt.decode(b"OHAI" + good[4:])
    with pytest.raises(pt.PartitionError, match="erased"):
        pt.decode(b"\xff" * 0xC00)
    with pytest.raises(pt.PartitionError, match="no end marker"):
        pt.decode(good[:96] * 24)
    with pytest.raises(pt.PartitionError, match="1 to 16 ASCII"):
        pt.encode([pt.Partition("a-label-far-too-long", 1, 0x80, 0x9000, 0x1000)])


def _assert_contract(parts, flash_size, outbox_size, original):
    outbox = pt.find(parts, "outbox")
    vfs = pt.find(parts, "vfs")
    assert (outbox.type, outbox.subtype, outbox.size) == (0x01, 0x80, outbox_size)
    assert outbox.offset % 4096 == 0 and outbox.offset == vfs.end
    ordered = sorted(parts, key=lambda p: p.offset)
    assert all(a.end <= b.offset for a, b in zip(ordered, ordered[1:]))  # nothing overlaps
    assert ordered[0].offset >= 0x9000 and ordered[-1].end <= flash_size
    # Every other partition, the firmware's above all, is exactly as the image had it.
    assert [p for p in parts if p.label not in ("vfs", "outbox")] == \
        [p for p in original if p.label != "vfs"]


@pytest.mark.parametrize("name", sorted(MICROPYTHON_CSV))
def test_the_outbox_comes_from_the_end_of_vfs(name):
    original = pt.parse_csv(MICROPYTHON_CSV[name])
    size = pt.flash_bytes(FLASH_OF.get(name, "4MB"))
    parts = pt.with_outbox(original, size)
    _assert_contract(parts, size, pt.DEFAULT_OUTBOX_SIZE, original)
    vfs_before = pt.find(original, "vfs")
    if vfs_before:
        assert pt.find(parts, "outbox").end == vfs_before.end
    else:  # 1.26+: vfs written out to where MicroPython would have grown it, less the outbox
        assert pt.find(parts, "vfs").offset == 0x200000 and pt.find(parts, "outbox").end == size
    assert pt.with_outbox(parts, size) == parts  # flashing twice adds nothing


def test_the_4mib_layouts_in_figures():
    parts = pt.with_outbox(pt.MICROPYTHON_TABLE, 4 * 1024 * 1024)
    assert [p.row() for p in parts[-2:]] == [("vfs", 1, 0x81, 0x200000, 0x1C0000),
                                             ("outbox", 1, 0x80, 0x3C0000, 0x40000)]
    ota = pt.with_outbox(pt.parse_csv(MICROPYTHON_CSV["partitions-4MiB-ota.csv"]), 4 * 1024 * 1024)
    assert [p.row() for p in ota[-2:]] == [("vfs", 1, 0x81, 0x310000, 0xB0000),
                                           ("outbox", 1, 0x80, 0x3C0000, 0x40000)]


def test_no_room_is_refused_in_one_line():
    tight = pt.parse_csv(MICROPYTHON_CSV["partitions-4MiB-ota.csv"])
    with pytest.raises(pt.PartitionError, match="less than 128 KiB of filesystem") as e:
        pt.with_outbox(tight, 4 * 1024 * 1024, 0xE0000)
    assert "\n" not in str(e.value)
    with pytest.raises(pt.PartitionError, match="past the end of the 2 MB flash"):
        pt.with_outbox(pt.parse_csv(MICROPYTHON_CSV["partitions-4MiB.csv"]), 2 * 1024 * 1024)
    with pytest.raises(pt.PartitionError, match="multiple of 0x1000"):
        pt.with_outbox(pt.MICROPYTHON_TABLE, 4 * 1024 * 1024, 0x10800)
    wrong = pt.MICROPYTHON_TABLE + (pt.Partition("outbox", 1, 0x81, 0x200000, 0x10000),)
    with pytest.raises(pt.PartitionError, match="not data/0x80"):
        pt.with_outbox(wrong, 4 * 1024 * 1024)


@st.composite
def _tables(draw):
    """A valid table like MicroPython's: nvs, phy_init, one to three apps, maybe a data block and vfs."""
    flash = draw(st.sampled_from([2, 4, 8, 16])) * 1024 * 1024
    parts = [pt.Partition("nvs", 1, 2, 0x9000, 0x6000), pt.Partition("phy_init", 1, 1, 0xF000, 0x1000)]
    at = 0x10000
    for i in range(draw(st.integers(1, 3))):
        size = draw(st.integers(1, 0x30)) * 0x10000
        parts.append(pt.Partition(f"app{i}", 0, 0x10 + i, at, size))
        at += size
    if draw(st.booleans()):
        size = draw(st.integers(1, 64)) * 0x1000
        parts.append(pt.Partition("extra", 1, 0x8f, at, size))
        at += size
    if at < flash and draw(st.booleans()):
        parts.append(pt.Partition("vfs", 1, 0x81, at, draw(st.integers(1, (flash - at) // 0x1000)) * 0x1000))
    return parts, flash


@settings(max_examples=300, deadline=None)
@given(_tables(), st.integers(1, 80).map(lambda n: n * 0x1000))
def test_any_result_keeps_the_contract_or_is_refused(table, outbox_size):
    parts, flash = table
    try:
        pt.check(parts, flash)
    except pt.PartitionError:
        return  # the drawn table does not fit its flash: not a table an image could have
    try:
        result = pt.with_outbox(parts, flash, outbox_size)
    except pt.PartitionError as e:
        assert "\n" not in str(e)
        return
    _assert_contract(result, flash, outbox_size, parts)
    assert pt.decode(pt.encode(result)) == result


# --- boards ---

@pytest.mark.parametrize("board", MICROPYTHON_BOARDS, ids=lambda b: b.name)
def test_every_micropython_board_gets_the_outbox(board):
    layout = pt.board_layout(board)
    _assert_contract(layout, pt.flash_bytes(board.flash_size or "4MB"), board.outbox_partition_size,
                     list(pt.MICROPYTHON_TABLE))


def test_circuitpython_boards_keep_their_table():
    assert {b.name for b in list_boards() if not b.outbox_partition_size} == \
        {b.name for b in list_boards() if b.runtime == "circuitpython"}


def test_the_sim_gets_the_rows_a_flashed_board_has():
    rows = pt.sim_partitions(load_board("sim"))
    assert rows[-1] == ("outbox", 0x01, 0x80, 0x3C0000, 0x40000)
    assert [r[0] for r in rows] == ["nvs", "phy_init", "factory", "vfs", "outbox"]
    assert rows == [p.row() for p in pt.board_layout(load_board("esp32-devkitc"))]


@pytest.mark.parametrize("change, message", [
    ({"outbox_partition_size": "64K"}, "outbox_partition_size '64K' is not hex like '0x10000'"),
    ({"outbox_partition_size": "0x10800"}, "must be a multiple of 0x1000"),
    ({"outbox_partition_size": "0x1000"}, "at least 0x2000"),
    ({"outbox_partition_size": "0x300000"}, "less than 128 KiB of filesystem"),
    ({"outbox_partition_size": 65536}, "field 'outbox_partition_size' must be str/null"),
    ({"flash_size": None}, "an outbox partition needs the board's flash_size"),
    ({"runtime": "circuitpython", "mpy_arch": None}, "must be null on a circuitpython board"),
])
def test_a_bad_board_file_is_one_line(tmp_path, change, message):
    data = json.loads((BOARDS_DIR / "esp32-devkitc.json").read_text())
    data.update(change)
    path = tmp_path / "esp32-devkitc.json"
    path.write_text(json.dumps(data))
    with pytest.raises(BoardError, match=message) as e:
        read_board_file(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_a_board_file_without_the_field_gets_the_default(tmp_path):
    data = json.loads((BOARDS_DIR / "esp32-devkitc.json").read_text())
    del data["outbox_partition_size"]
    (tmp_path / "esp32-devkitc.json").write_text(json.dumps(data))
    assert read_board_file(tmp_path / "esp32-devkitc.json").outbox_partition_size == pt.DEFAULT_OUTBOX_SIZE
    data["outbox_partition_size"] = None
    (tmp_path / "esp32-devkitc.json").write_text(json.dumps(data))
    assert read_board_file(tmp_path / "esp32-devkitc.json").outbox_partition_size is None


def test_edgekit_boards_shows_the_outbox_size():
    lines = CliRunner().invoke(main, ["boards"]).output.splitlines()
    at = lines[0].index("outbox")  # the table is aligned: the column starts at the header's place
    rows = {line.split()[0]: line[at:].split()[0] for line in lines[1:]}
    assert rows["esp32-devkitc"] == "256K" and rows["sim"] == "256K" and rows["lolin-s2-mini"] == "-"


def test_a_2mb_board_is_checked_against_its_image_not_the_generic_table(tmp_path):
    data = json.loads((BOARDS_DIR / "esp32-devkitc.json").read_text())
    data["flash_size"] = "2MB"  # an ESP32-D2WD: MicroPython's 4 MiB table does not fit it
    (tmp_path / "esp32-devkitc.json").write_text(json.dumps(data))
    board = read_board_file(tmp_path / "esp32-devkitc.json")
    small = pt.parse_csv("nvs, data, nvs, 0x9000, 0x6000\nphy_init, data, phy, 0xf000, 0x1000\n"
                         "factory, app, factory, 0x10000, 0x180000\n")
    assert pt.find(pt.board_layout(board, small), "outbox").row() == ("outbox", 1, 0x80, 0x1C0000, 0x40000)
    with pytest.raises(pt.PartitionError, match="less than 128 KiB of filesystem"):
        pt.board_layout(board, pt.MICROPYTHON_TABLE)
