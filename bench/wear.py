"""Flash wear of readings queued offline (issue 23 parts 3 and 4), on the sim's counting NOR
chip (host_tools/edgekit/sim/board/_simnor.py: 4096-byte blocks, erase to 0xFF, programs only clear
bits) under the real micropython, with MicroPython's own LittleFS as a board formats it.

The figure: block erases and programmed bytes per 120-byte reading queued offline and drained
(bench/mp_wear.py's workload), the hottest block's erases, and the years a board lasts at one
reading a second offline on 100,000-cycle flash. Baseline in the same run: a synced 120-byte
append to a plain file on the same LittleFS, the least any file store costs, so the ratio is
what the outbox adds. Beside them, the designs of part 4, bench-only prototypes measured on the
same chip and workload. Erase counts do not depend on timing: every run gives the same figures.
"""
import json
import subprocess
from pathlib import Path

from bench.common import BENCH_DIR, BenchError, micropython, ratio
from edgekit import FIRMWARE_DIR, ROOT

SIM_BOARD = ROOT / "host_tools" / "edgekit" / "sim" / "board"
CYCLES = 100_000  # erase cycles a NOR flash block is specified for (typically)
YEAR_S = 365.25 * 86400
# Design name (bench/mp_wear.py) -> what it is. "outbox" and "plain" run longer: their hottest
# block is what wear levelling makes of many erases.
DESIGNS = {
    "outbox": "the firmware's outbox on LittleFS (default mkfs: readsize, progsize, lookahead 32)",
    "partition": "the firmware's partition log (azure_edge/partlog.py) on a raw 64 KiB partition",
    "plain": "baseline: synced 120-byte append to a plain file on the same LittleFS",
    "partlog": "(a) log on a raw 64 KiB partition, records programmed in place with a CRC",
    "outbox_fat": "the outbox on FAT (CircuitPython's CIRCUITPY), 4096-byte sectors, an erase per sector write",
    "outbox_batch4": "(b) the outbox, 4 readings per record",
    "outbox_batch16": "(b) the outbox, 16 readings per record",
    "outbox_prog256": "(c) the outbox, LittleFS readsize/progsize 256 (cache 1024)",
    "outbox_look256": "(c) the outbox, LittleFS lookahead 256",
    "files": "(d) one file per reading, kept inline in its folder's LittleFS metadata",
    "partlog_batch4": "(d) = (a) + (b): raw-partition log, 4 readings per record",
}
LONG = ("outbox", "plain", "partition")
PART_SIZES = (64, 256, 1024)  # KiB of the outbox partition: lifetimes scale with its blocks
GOAL_ERASES = 0.1  # part 4's goal, erases per reading


def measure(workdir, design, readings):
    """One design's run under micropython: the chip's counters (mp_wear.py's JSON line)."""
    workdir.mkdir(parents=True, exist_ok=True)
    # The firmware's sources, not .mpy: the bytes written are the same either way.
    env = {"MICROPYPATH": ":".join([".frozen", str(SIM_BOARD), str(BENCH_DIR), str(FIRMWARE_DIR)])}
    done = subprocess.run([micropython(), "-X", "heapsize=1M", str(BENCH_DIR / "mp_wear.py"),
                           str(workdir), design, str(readings)],
                          capture_output=True, text=True, timeout=600, env=env)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode or not lines:
        raise BenchError(f"wear {design}: micropython failed: {(done.stdout + done.stderr)[-400:]}")
    return json.loads(lines[-1])


def derive(r):
    """Per-reading figures and lifetimes for one run (adds to r, returns it)."""
    n = r["readings"]
    r["erases_per_reading"] = round(r["erases"] / n, 4)
    r["programmed_bytes_per_reading"] = round(r["programmed_bytes"] / n, 1)
    # The hottest block sets when the first block wears out: the conservative figure.
    r["years_hottest"] = round(CYCLES * n / r["hottest_block_erases"] / YEAR_S, 2)
    # If wear levelling spread the erases evenly over the blocks the design wears (LittleFS:
    # every free block of the filesystem; the raw log: its partition), the upper figure.
    r["years_average"] = round(CYCLES * r["blocks_erased"] / (r["erases"] / n) / YEAR_S, 2)
    if r["program_violations"]:
        raise BenchError(f"wear {r['design']}: {r['program_violations']} programs set a cleared bit")
    return r


def run(workdir, quick=False, log=print):
    """Measure every design; return the 'wear' section of results.json."""
    long_n, short_n = (4800, 2400) if quick else (48000, 9600)
    designs = {}
    for name, what in DESIGNS.items():
        r = derive(measure(Path(workdir), name, long_n if name in LONG else short_n))
        r["what"] = what
        designs[name] = r
        log(f"wear: {name}: {r['erases_per_reading']} erases and {r['programmed_bytes_per_reading']} B"
            f" per reading, hottest block {r['hottest_block_erases']} erases in {r['readings']} readings")
    ob, plain = designs["outbox"], designs["plain"]
    return {
        "workload": "outages of 240 readings of 120 bytes (client format) queued offline, each"
                    " drained 16 at a time; 2 MiB LittleFS of 4096-byte blocks, block_cycles 100",
        "cycles": CYCLES,
        "erases_per_reading": ob["erases_per_reading"],
        "programmed_bytes_per_reading": ob["programmed_bytes_per_reading"],
        "hottest_block_erases": ob["hottest_block_erases"],
        "readings": ob["readings"],
        "years_at_1_per_s_hottest": ob["years_hottest"],
        "years_at_1_per_s_average": ob["years_average"],
        "baseline_plain_erases_per_reading": plain["erases_per_reading"],
        "ratio_to_plain": ratio(ob["erases_per_reading"], plain["erases_per_reading"]),
        "goal_erases_per_reading": GOAL_ERASES,
        # The goal is met by what MicroPython on ESP32 runs when the partition is there.
        "goal_met": designs["partition"]["erases_per_reading"] <= GOAL_ERASES,
        "partition": _partition(designs["partition"], ob),
        "designs": designs,
    }


def _partition(p, ob):
    """The partition log's figures beside the file outbox's (ratios from the same run)."""
    per = p["erases_per_reading"]
    return {
        "erases_per_reading": per,
        "programmed_bytes_per_reading": p["programmed_bytes_per_reading"],
        "hottest_block_erases": p["hottest_block_erases"],
        "readings": p["readings"],
        "drain_erases": p["drain_erases"],
        "years_at_1_per_s_hottest": p["years_hottest"],
        "ratio_to_outbox": ratio(per, ob["erases_per_reading"]),
        # Blocks are taken in ring order, so every block of the partition wears alike: the
        # lifetime grows with the partition's size.
        "years_at_1_per_s_by_size_kib": {str(k): round(CYCLES * (k // 4) / per / YEAR_S, 1)
                                         for k in PART_SIZES},
    }
