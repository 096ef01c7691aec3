# Drives an outbox under MicroPython until tests/test_outbox_crash.py kills it with SIGKILL.
#
#   micropython -X heapsize=64K outbox_crash_worker.py MPY_DIR STORE MAX_BYTES FLOOR SEED MODE [BOARD]
#
# STORE "part:FOLDER" runs the partition log (azure_edge/partlog.py) instead, on the esp32
# stand-in found in BOARD (host_tools/edgekit/sim/board).
#
# On start it opens (and so recovers) the store, walks every record checking each one is
# whole and numbered one more than the last, and prints
#   STATE <count> <first> <last> <dropped> <bytes>        (first = last = -1 when empty)
# or BAD <why> and exits 1. Then, in MODE "run", it appends and pops forever, printing an
# intent line before each step and an acknowledgement once the step has returned:
#   a <k>  /  A <k> <dropped>     append record k; A only after append() returned
#   p <k>  /  P <k>               pop record k (the one peek() gave); P after pop() returned
# New records are numbered from the last record in the store + 1 (FLOOR when empty), so a
# healthy store always holds one consecutive run. MODE "fill" only appends. MODE "final"
# appends a few records, then pops everything, checking the order, and prints DONE.
# The harness imports payload() from here, so both sides agree on what record k holds.
import sys


def payload_size(k):
    """Length of record k: varied, and up to almost 1 KiB."""
    return 40 + (k * 7919) % 900


def payload(k):
    """Record k: its number in ten digits, then filler derived from k."""
    return ("%010d" % k).encode() + bytes([k & 255]) * (payload_size(k) - 10)


def number(record):
    """The number of a record, or -1 when it is not exactly what payload() makes."""
    try:
        k = int(record[:10])
    except ValueError:
        return -1
    return k if record == payload(k) else -1


def main(argv):
    sys.path.insert(0, argv[1])
    import random

    path = argv[2]
    max_bytes = int(argv[3])
    floor = int(argv[4])
    random.seed(int(argv[5]))
    mode = argv[6]

    if path.startswith("part:"):
        # The partition log (tests/test_partlog_crash.py): on the sim's esp32.Partition, whose
        # table EDGEKIT_SIM_PARTITIONS gives; STORE is then part:<the file outbox's folder>.
        sys.path.insert(1, argv[7])
        from esp32 import Partition
        from azure_edge.partlog import PartLog
        box = PartLog(Partition.find(Partition.TYPE_DATA, label="outbox")[0], path[5:])
    else:
        from azure_edge.outbox import Outbox
        box = Outbox(path, max_bytes)
    count = 0
    first = -1
    last = -1
    for record in box.records():
        k = number(record)
        if k < 0 or (count and k != last + 1):
            print("BAD record %d after %d" % (k, last))
            sys.exit(1)
        if not count:
            first = k
        last = k
        count += 1
    if count != len(box):
        print("BAD walked %d records, len() says %d" % (count, len(box)))
        sys.exit(1)
    print("STATE %d %d %d %d %d" % (count, first, last, box.dropped, box.bytes))

    nxt = last + 1 if count else floor
    if mode == "final":
        dropped = box.dropped
        for _ in range(20):
            box.append(payload(nxt))
            nxt += 1
        # Appending near the bound drops the oldest: the run then starts that much later.
        expect = (first if count else floor) + box.dropped - dropped
        while len(box):
            k = number(box.peek())
            if k != expect:
                print("BAD popped %d, expected %d" % (k, expect))
                sys.exit(1)
            box.pop()
            expect += 1
        if box.peek() is not None or expect != nxt:
            print("BAD drained to %d, appended up to %d" % (expect, nxt))
            sys.exit(1)
        print("DONE")
        return

    pops = 0.0 if mode == "fill" else 0.3
    while True:
        if len(box) and random.random() < pops:
            k = number(box.peek())
            print("p %d" % k)
            box.pop()
            print("P %d" % k)
        else:
            print("a %d" % nxt)
            box.append(payload(nxt))
            print("A %d %d" % (nxt, box.dropped))
            nxt += 1


if __name__ == "__main__":
    main(sys.argv)
