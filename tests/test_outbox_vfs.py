"""The outbox on LittleFS and FAT as MicroPython mounts them, with power cuts at every block write.

The real micropython runs MicroPython's own VfsLfs2 and VfsFat on a RAM block device
(tests/outbox_vfs_worker.py); only the flash chip is simulated. A cut stops programming
after N block writes, for every N the workload makes; the filesystem is then mounted
afresh from what reached the flash. LittleFS is also given torn writes (the block being
programmed when the power goes lands only partly). FAT is not: its own tables are not
safe against a torn sector (docs/outbox.md), so it is cut only between whole sectors.
"""
import re
import subprocess

import pytest

from conftest import ROOT, compile_outbox, tool

WORKER = ROOT / "tests" / "outbox_vfs_worker.py"


@pytest.fixture(scope="module")
def mpy_dir(tmp_path_factory):
    return compile_outbox(tmp_path_factory.mktemp("mpy"))


def worker(mpy_dir, *args):
    # The RAM "flash" lives in the MicroPython heap, hence the larger heap here.
    done = subprocess.run([tool("micropython"), "-X", "heapsize=2M", str(WORKER), str(mpy_dir), *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    # Files a cut left open print EIO from their finalisers; the verdict is the last line.
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(("OK", "BAD"))]
    assert done.returncode == 0 and lines and lines[-1].startswith("OK"), \
        (lines[-1:] or done.stdout[-500:], done.stderr[-1500:])
    return lines[-1]


@pytest.mark.parametrize("fs", ["lfs", "fat"])
def test_operations_match_a_list(mpy_dir, fs):
    verdict = worker(mpy_dir, fs, "ops", "7")
    appended, dropped, left = map(int, re.findall(r"\d+", verdict))
    assert appended > 500 and dropped > 0  # the bound was hit on this filesystem too


@pytest.mark.parametrize("fs,writes", [("lfs", "torn"), ("fat", "whole")])
def test_power_cut_at_every_block_write(mpy_dir, fs, writes):
    verdict = worker(mpy_dir, fs, "cut", "1", writes)
    cuts, total = map(int, re.findall(r"\d+", verdict))
    assert cuts == total > 200


def test_outages_and_drains_keep_the_folder_in_budget(mpy_dir):
    # Issue 23: drains of 16 over segment ends left segments behind until a reopen. Twenty
    # outages and drains on 4096-byte blocks; the folder is measured after every pop(16).
    verdict = worker(mpy_dir, "lfs", "cycles", "1")
    readings, dropped, worst, erases, writes = map(int, re.findall(r"\d+", verdict))
    assert readings > 2000 and dropped > 0 and worst <= 16384


def test_full_filesystem_drops_oldest_never_newest(mpy_dir):
    # A LittleFS of 24 blocks of 4096 bytes, mostly taken by other files, under an outbox whose
    # budget is larger than the room left: every append returns with the newest reading kept.
    verdict = worker(mpy_dir, "lfs", "full", "1")
    appended, dropped, other = map(int, re.findall(r"\d+", verdict))
    assert appended > 400 and dropped > 0 and other > 50000
