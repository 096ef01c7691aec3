"""Flash wear is a measured figure (issue 23 part 3), held here so a change that doubles it fails.

The real micropython runs the firmware's outbox on MicroPython's LittleFS over the sim's NOR
chip (host_tools/edgekit/sim/board/_simnor.py), on bench/mp_wear.py's workload: 480 readings of 120
bytes queued offline in two outages, each drained 16 at a time. Erase counts do not depend on
timing, so the bound is exact, not statistical. `make bench` measures the same over 48,000.
"""
import json
import subprocess

from conftest import FIRMWARE, ROOT, tool

BOARD = ROOT / "host_tools" / "edgekit" / "sim" / "board"
BENCH = ROOT / "bench"
# Measured on this workload at the commit that added the test (bench/results.json's "wear"
# agrees over 48,000 readings): 1.02 erases and about 2,210 bytes programmed per reading.
ERASES_PER_READING = 1.02
PROGRAMMED_PER_READING = 2210


def _mp(*args, code=None):
    env = {"MICROPYPATH": ":".join([".frozen", str(BOARD), str(BENCH), str(FIRMWARE)])}
    argv = [tool("micropython"), "-X", "heapsize=1M"] + (["-c", code] if code else list(args))
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-800:] + done.stderr[-800:]
    return done.stdout


def _wear(tmp_path, design, readings):
    out = _mp(str(BENCH / "mp_wear.py"), str(tmp_path), design, str(readings))
    return json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])


def test_outbox_wear_stays_under_one_and_a_half_times_todays(tmp_path):
    r = _wear(tmp_path, "outbox", 480)
    assert r["readings"] == 480 and r["program_violations"] == 0
    erases, programmed = r["erases"] / 480, r["programmed_bytes"] / 480
    assert 0.5 * ERASES_PER_READING <= erases <= 1.5 * ERASES_PER_READING, erases
    assert programmed <= 1.5 * PROGRAMMED_PER_READING, programmed


# The firmware's partition log (azure_edge/partlog.py) on the same workload, measured when it was
# added: 16 erases for 480 readings (one per 4096-byte block of 31 records), 130 B programmed
# per reading (the 128-byte record, its state byte cleared when popped, a block header's share).
PARTITION_ERASES_PER_READING = 16 / 480


def test_partition_log_holds_a_thirtieth_of_an_erase_per_reading(tmp_path):
    # Issue 23's goal is 0.1; the bound is 1.5x today's figure, so doubling the wear fails.
    r = _wear(tmp_path, "partition", 480)
    assert r["readings"] == 480 and r["program_violations"] == 0
    erases = r["erases"] / 480
    assert 0.5 * PARTITION_ERASES_PER_READING <= erases <= 1.5 * PARTITION_ERASES_PER_READING <= 0.1, erases
    assert r["drain_erases"] == 0  # acknowledging readings clears bits: never an erase
    assert r["programmed_bytes"] / 480 <= 1.5 * 130
    assert r["hottest_block_erases"] <= 2 and r["blocks_erased"] == 16  # every block wears alike


def test_raw_partition_log_wears_a_thirtieth(tmp_path):
    # Design a of part 4 (bench/proto_partlog.py): one erase per 4096-byte block of records.
    r = _wear(tmp_path, "partlog", 480)
    assert r["program_violations"] == 0 and r["erases"] / 480 <= 0.05


NOR_RULES = """
from _simnor import Nor
nor = Nor(%r, "chip.img", blocks=4)
nor.writeblocks(1, b"\\x0f\\xf0", 8)          # erased: any value programs
nor.writeblocks(1, b"\\x05\\x00", 8)          # clearing more bits is fine
try:
    nor.writeblocks(1, b"\\x0f", 8)           # a 1 over a 0: the chip cannot
    print("no error")
except OSError as e:
    print("EIO", e.errno)
b = bytearray(2)
nor.readblocks(1, b, 8)
print(bytes(b) == b"\\x05\\x00")
nor.ioctl(6, 1)                              # erase: 0xFF again, then it programs
nor.readblocks(1, b, 8)
print(bytes(b) == b"\\xff\\xff")
nor.writeblocks(1, b"\\x0f", 8)
nor.ioctl(3, 0)                              # sync: counters to chip.wear.json
nor.close()
again = Nor(%r, "chip.img", blocks=4)        # a restart keeps the data and the wear
again.readblocks(1, b, 8)
print(bytes(b) == b"\\x0f\\xff", again.erases, again.programmed, again.violations)
"""


def test_nor_chip_programs_only_clear_bits_and_counts_survive(tmp_path):
    out = _mp(code=NOR_RULES % (str(tmp_path), str(tmp_path))).split()
    assert out == ["EIO", "5", "True", "True", "True", "1", "5", "1"], out
    wear = json.loads((tmp_path / "chip.wear.json").read_text())
    assert wear["erases_per_block"] == [0, 1, 0, 0] and wear["hottest_block"] == 1


PARTLOG_FIFO = """
import random
from _simnor import Nor
from proto_partlog import PartLog
nor = Nor(%r, "p.img", blocks=8, autosave=False)
log = PartLog(nor)
model = []
nxt = 0
random.seed(3)
for step in range(4000):
    r = random.random()
    if r < 0.8:
        d = b"%%06d" %% nxt + b"x" * random.randint(0, 300)
        nxt += 1
        log.append(d)
        model.append(d)
    elif r < 0.97:
        if model:
            k = min(len(model), random.randint(1, 2))
            log.pop(k)
            del model[:k]
    else:
        log = PartLog(nor)                   # reopen: the log is read back from flash
    del model[:len(model) - len(log)]        # a full log drops its oldest block
    assert len(log) == len(model) and log.peek() == (model[0] if model else None), step
print("OK", nxt, len(model), nor.violations)
"""


def test_raw_partition_log_prototype_is_a_fifo(tmp_path):
    # The prototype measured by the bench must be a working store, or its figure means nothing.
    out = _mp(code=PARTLOG_FIFO % str(tmp_path)).split()
    assert out[0] == "OK" and int(out[1]) > 3000 and out[3] == "0", out


def test_plain_append_baseline_costs_about_an_erase(tmp_path):
    r = _wear(tmp_path, "plain", 240)
    assert r["erases"] >= 200  # a synced append rewrites the tail block: about one erase each
