# Power cuts at every flash operation of a partition log workload, under micropython:
#
#   micropython partlog_cut_worker.py MPY_DIR BOARD_DIR WORKDIR SEED
#
# The workload (appends, pops of 1 to 3, a full 4-block partition dropping its oldest) runs
# once to count its flash operations (programs and erases). Then for every N it runs again on
# a fresh chip and the power goes at operation N: a program lands only partly (a prefix, then
# some bits of the next byte cleared, as NOR programs), an erase only partly (some of the
# block's 256-byte pages back to 0xFF, the others as they were). The log is then opened from what is on the chip and
# checked against what the workload had been told: one consecutive run of records, every
# append that returned still there unless popped or counted in `dropped`, pops that returned
# stay popped, and the log goes on working (an append and a full drain). Prints
# "OK <cuts> <appends> <dropped>" or "BAD <N> <why>".
import random
import sys

sys.path.insert(0, sys.argv[1])
sys.path.append(sys.argv[2])
from _simnor import Nor  # noqa: E402
from azure_edge.partlog import PartLog  # noqa: E402

BLOCKS = 4


class Cut(Exception):
    pass


class CutChip:
    # The chip behind esp32.Partition's protocol, losing power at operation `at` (-1: never).
    def __init__(self, nor, at):
        self.nor = nor
        self.at = at
        self.ops = 0

    def _tick(self):
        self.ops += 1
        return self.ops - 1 == self.at

    def readblocks(self, b, buf, off=0):
        self.nor.readblocks(b, buf, off)

    def writeblocks(self, b, buf, off):
        if self._tick():
            n = random.randint(0, len(buf) - 1)
            part = bytearray(buf[:n + 1])
            part[n] |= random.getrandbits(8)  # some of the last byte's bits not yet cleared
            old = bytearray(len(part))
            self.nor.readblocks(b, old, off)
            for i in range(len(part)):
                part[i] &= old[i]
            self.nor.writeblocks(b, part, off)
            raise Cut()
        self.nor.writeblocks(b, buf, off)

    def ioctl(self, op, arg):
        if op == 6 and self._tick():
            # Some 256-byte pages of the block erased, the others as they were: whatever
            # the cut leaves, the header may outlive records that read erased again.
            raw = bytearray(4096)
            self.nor.readblocks(arg, raw, 0)
            self.nor.erase(arg)
            for page in range(16):
                if random.getrandbits(1):
                    self.nor.writeblocks(arg, raw[page * 256:page * 256 + 256], page * 256)
            raise Cut()
        return self.nor.ioctl(op, arg)


def payload(k):
    return b"%06d" % k + bytes([k & 255]) * ((k * 37) % 300)


def number(r):
    k = int(bytes(r[:6]))
    return k if bytes(r) == payload(k) else -1


def workload(chip, seed, model):
    # model: [first, last, dropped, inflight] updated only once a step has returned.
    random.seed(seed)  # the same steps every run (the cut's own draws come after the last)
    rng = random
    log = PartLog(chip, "/x")
    k = 0
    for _ in range(200):
        if model[1] >= model[0] and rng.random() < 0.2:
            n = min(rng.randint(1, 3), model[1] - model[0] + 1)
            model[3] = ("p", n)
            log.pop(n)
            model[0] += n
        else:
            model[3] = ("a", k)
            log.append(payload(k))
            model[0] += log.dropped - model[2]
            model[2] = log.dropped
            model[1] = k
            k += 1
        model[3] = None
    return k


def check(nor, model):
    log = PartLog(nor, "/x")
    got = [number(r) for r in log.records()]
    if len(got) != len(log) or -1 in got or got and got != list(range(got[0], got[0] + len(got))):
        return "not one run: %r len %d" % (got[:5], len(log))
    first, last, dropped, inflight = model
    extra = log.dropped - dropped
    if extra < 0 or extra and (inflight is None or inflight[0] != "a"):
        return "dropped %d, was %d, in flight %r" % (log.dropped, dropped, inflight)
    lo = first + extra
    hi = lo + (inflight[1] if inflight and inflight[0] == "p" else 0)
    lasts = (last, last + 1) if inflight and inflight[0] == "a" else (last,)
    if got:
        if not lo <= got[0] <= hi or got[-1] not in lasts:
            return "run %d..%d, expected first %d..%d, last in %r" % (got[0], got[-1], lo, hi, lasts)
    elif last >= hi:
        return "empty, expected up to %d" % last
    nxt = (got[-1] if got else last) + 1
    log.append(payload(nxt))
    while len(log):
        log.pop(1)
    if len(PartLog(nor, "/x")) or nor.violations:
        return "did not go on working"
    return None


def main():
    work = sys.argv[3]
    seed = int(sys.argv[4])
    nor = Nor(work, "cut.img", blocks=BLOCKS, autosave=False)
    nor.wipe()
    chip = CutChip(nor, -1)
    appends = workload(chip, seed, [0, -1, 0, None])
    total = chip.ops
    dropped = PartLog(nor, "/x").dropped
    for at in range(total):
        nor.wipe()
        model = [0, -1, 0, None]
        try:
            workload(CutChip(nor, at), seed, model)
            print("BAD %d the cut never came" % at)
            return
        except Cut:
            pass
        why = check(nor, model)
        if why:
            print("BAD %d %s" % (at, why))
            return
    print("OK %d %d %d" % (total, appends, dropped))


main()
