# A NOR flash chip in a file on the host, for MicroPython's block device protocol (the
# extended one littlefs uses, and the one esp32.Partition offers): the simulated board's
# /data, and the bench's wear study (bench/wear.py) on exactly the same rules.
#
# Honest about NOR flash, because wear is what it measures:
# - erase (ioctl 6) sets a whole block to 0xFF; it is the only way back to 1s;
# - writeblocks with an offset programs in place, which can only clear bits: the chip ANDs
#   what it is given with what it holds. Writing a 1 where it holds a 0 is counted
#   (program_violations) and, strict (the default: the bench and the tests want to know),
#   raises OSError(EIO); with strict=False it stores the AND, as a real chip does;
# - writeblocks without an offset erases the block first, as esp32.Partition does;
# - reads return what is there.
# It counts erases (per block, so the hottest block is known) and programmed bytes, and
# writes them as JSON beside the image at every sync (ioctl 3; littlefs syncs after each
# commit), so the host can read them while the board runs. The counts are the chip's: they
# survive restarts like the image does, and a power cut loses only those since the last sync.
import json
from array import array

try:
    import vfs
except ImportError:  # CPython (tests, the bench's host side): the host's files are the files
    vfs = None

BLOCK = 4096
_ERASED = {}  # block size -> bytes of 0xFF
EIO = 5


class Nor:
    def __init__(self, folder, name, blocks=512, block=BLOCK, autosave=True, strict=True):
        # folder: a host folder; name: the image's file in it ("data.img"). The counters go
        # to NAME.wear.json. A VfsPosix of its own (the board's "/" is not the host's), with
        # no root: given a root, its rename() builds both host paths in one shared buffer.
        self._fs = vfs.VfsPosix() if vfs else _Host()
        self.strict = strict  # False: a program ANDs over cleared bits, as the chip does
        self.block = block
        self.blocks = blocks
        self.autosave = autosave  # False: counters written by save() only (the bench)
        folder = folder.rstrip("/") + "/"
        self._img = folder + name
        self._wear = folder + name.rsplit(".", 1)[0] + ".wear.json"
        # An erased block, shared by every chip of this block size: the sim board has two (/data
        # and the outbox partition), and its heap stands for a board's, whose chip costs none.
        self._ff = _ERASED.get(block) or _ERASED.setdefault(block, b"\xff" * block)
        self.erases = 0
        self.programmed = 0  # bytes
        self.violations = 0  # programs that tried to set a cleared bit
        self.per_block = array("I", bytes(4 * blocks))
        self._open()
        self._load()

    def _open(self):
        try:
            f = self._fs.open(self._img, "r+b")
            if f.seek(0, 2) == self.block * self.blocks:
                f.seek(0)
                self._f = f
                return
            f.close()
        except OSError:
            pass
        # A new chip (or one of another size) comes erased.
        f = self._fs.open(self._img, "wb")
        for _ in range(self.blocks):
            f.write(self._ff)
        f.close()
        self._f = self._fs.open(self._img, "r+b")

    def _load(self):
        try:
            f = self._fs.open(self._wear, "r")
            w = json.loads(f.read())
            f.close()
        except (OSError, ValueError):
            return
        if w.get("blocks") != self.blocks or w.get("block_size") != self.block:
            return
        self.erases = w["erases"]
        self.programmed = w["programmed_bytes"]
        self.violations = w.get("program_violations", 0)
        for i, n in enumerate(w["erases_per_block"]):
            self.per_block[i] = n

    def counters(self):
        hot = 0
        for i in range(self.blocks):
            if self.per_block[i] > self.per_block[hot]:
                hot = i
        return {"block_size": self.block, "blocks": self.blocks, "erases": self.erases,
                "programmed_bytes": self.programmed, "program_violations": self.violations,
                "hottest_block": hot, "hottest_erases": self.per_block[hot],
                "erases_per_block": list(self.per_block)}

    def save(self):
        # Written whole and renamed, so the host never reads half a file.
        tmp = self._wear + ".tmp"
        f = self._fs.open(tmp, "w")
        f.write(json.dumps(self.counters()))
        f.close()
        self._fs.rename(tmp, self._wear)

    def readblocks(self, block, buf, offset=0):
        self._f.seek(block * self.block + offset)
        self._f.readinto(buf)

    def writeblocks(self, block, buf, offset=None):
        if offset is None:
            self.erase(block)
            offset = 0
        n = len(buf)
        if offset + n > self.block:
            raise OSError(EIO)  # a program never crosses a block: the caller is wrong
        at = block * self.block + offset
        self._f.seek(at)
        old = self._f.read(n)
        if old != self._ff[:n]:
            # Programming clears bits only: every 1 asked for must still be a 1.
            bad = False
            for i in range(n):
                if buf[i] & ~old[i] & 0xFF:
                    bad = True
                    break
            if bad:
                self.violations += 1
                if self.strict:
                    raise OSError(EIO)
                buf = bytes(buf[i] & old[i] for i in range(n))
        self._f.seek(at)
        self._f.write(buf)
        self.programmed += n
        return 0

    def erase(self, block):
        self._f.seek(block * self.block)
        self._f.write(self._ff)
        self.erases += 1
        self.per_block[block] += 1

    def wipe(self):
        # A new chip: every block erased, no wear counted (the bench starts each design so).
        for b in range(self.blocks):
            self.erase(b)
        self.erases = self.programmed = self.violations = 0
        self.per_block = array("I", bytes(4 * self.blocks))

    def ioctl(self, op, arg):
        if op == 3:  # sync
            if self.autosave:
                self.save()
            return 0
        if op == 4:
            return self.blocks
        if op == 5:
            return self.block
        if op == 6:
            self.erase(arg)
            return 0
        return 0  # init, deinit

    def close(self):
        self.save()
        self._f.close()


class _Host:
    # What Nor needs of VfsPosix, from CPython's own open and os.rename.
    def open(self, path, mode):
        # Unbuffered, as VfsPosix's files are: a program is in the image when writeblocks
        # returns, as on flash, so a process killed after it keeps it.
        return open(path, mode, buffering=0) if "b" in mode else open(path, mode)

    def rename(self, a, b):
        import os
        os.rename(a, b)
