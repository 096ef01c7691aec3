"""The reliability scenarios, shared by the short CI tests and `make soak DURATION=<seconds>`.

Each scenario runs the real firmware under the real MicroPython (tests/reliability/seq_device.py,
a numbered reading every 50 ms) against the real gateway emulator, does its damage, waits until
every reading the device handed over has reached the gateway, and returns its figures:

- restarts: the gateway is SIGKILLed and restarted at random moments, once for longer than the
  device's backoff cap;
- network: a FaultProxy between device and gateway drops, stalls (longer than the keepalive),
  black-holes, resets mid-packet and reads slowly;
- powercut: the device is SIGKILLed while writing its outbox (gateway down) and while waiting
  for PUBACKs (gateway up, 20 ms each way), then booted again on the same flash folder;
- token: SAS tokens live 4 s, so the device renews every 3 s while publishing.

    python -m tests.reliability.soak --duration 600

ends with one line `sent=N received=N lost=0 duplicates=D reconnects=R max_heap=H` and exits 1
if anything was lost (or arrived out of order, or a scenario failed).
"""
import argparse
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent.parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)  # device_helpers and the top-level conftest, as under pytest

from device_helpers import wait_for  # noqa: E402
from edgekit.faultproxy import FaultProxy  # noqa: E402

from .conftest import (RestartableGateway, SeqDevice, arrivals, heap_after_connects, make_board,  # noqa: E402
                       make_seq_bundle, summary, wait_delivered)

BACKOFF_CAP = 2   # the bundles' backoff_cap: one gateway outage lasts longer than this
KEEPALIVE = 3     # the bundles' keepalive for the network scenario


class Result:
    """Figures of one scenario run: the accounting, reconnects and notes (detection times...)."""

    def __init__(self, name, report, reconnects, notes=None):
        self.name = name
        self.report = report
        self.reconnects = reconnects
        self.notes = notes or {}

    def line(self):
        extra = "".join(f" {k}={v}" for k, v in self.notes.items())
        return f"{self.name}: {summary(self.report, self.reconnects)} out_of_order={self.report['out_of_order']}{extra}"


def _more(done, rounds, until):
    """Another round? CI gives a round count, soak a deadline."""
    if rounds is not None:
        return done < rounds
    return time.monotonic() < until


def _log_count(dev, pattern):
    return len(re.findall(pattern, dev.consoles()))


def restarts(workdir, pki, board, rng, rounds=None, until=None, say=print):
    """Kill or stop, then restart, the gateway at random moments; one outage outlasts the backoff cap."""
    gw = RestartableGateway(Path(workdir) / "gateway", pki=pki).start()
    dev = SeqDevice(board, make_seq_bundle(gw, workdir, "restarts", backoff_cap=BACKOFF_CAP))
    downs = []
    try:
        dev.start().wait_connected()
        long_round = rng.randrange(rounds) if rounds is not None else None
        n = 0
        while _more(n, rounds, until):
            # A random moment of a live session (not of a reconnect still in progress).
            _wait(lambda: _log_count(dev, r"\[edgekit\] connected to ") > n, 60, "the device back", dev)
            time.sleep(rng.uniform(0.3, 2.5))
            # One outage outlasts the backoff cap: one chosen round in CI, every fifth in a soak.
            long = n == long_round if rounds is not None else n % 5 == 0
            down = BACKOFF_CAP + 1.5 if long else rng.uniform(0.0, 1.0)
            # Alternate a crash (SIGKILL: connections just vanish) and a clean stop (SIGTERM).
            gw.restart(down, hard=n % 2 == 0)
            downs.append(round(down, 1))
            n += 1
        report = wait_delivered(gw, "restarts", dev, timeout=60)
        dev.check_healthy()
        notes = {"restarts": n, "longest_down_s": max(downs)}
        # Heap kept per reconnect, past the first (which loads the diagnosis code for good): a
        # leak of 96 B per reconnect once starved a 112K device after ~160 gateway restarts.
        heaps = heap_after_connects(dev, arrivals(gw, "restarts"))
        if len(heaps) >= 4:
            growth = (heaps[-1] - heaps[1]) / (len(heaps) - 2)
            notes["heap_per_reconnect_b"] = round(growth)
            if len(heaps) >= 10:
                assert growth < 32, f"heap grows {growth:.0f} B per reconnect: {heaps}"
        return Result("restarts", report, dev.reconnects(), notes)
    finally:
        dev.stop()
        gw.stop()


def _fault(proxy, dev, kind, rng):
    """Inflict one fault on the link; return seconds until the device noticed (None if it need not)."""
    lost_before = _log_count(dev, r"link to gateway lost")
    if kind == "drop":
        proxy.drop_all()
    elif kind == "stall":
        # Silent dead link: no RST, no FIN, just nothing. Longer than the keepalive.
        t0 = time.monotonic()
        proxy.stall()
        try:
            _wait(lambda: _log_count(dev, r"link to gateway lost") > lost_before, 4 * KEEPALIVE + 10,
                  "the device to notice the stalled link", dev)
            return time.monotonic() - t0
        finally:
            proxy.resume()
    elif kind == "blackhole":
        # The gateway vanishes mid-session and new connections go nowhere (half-open).
        proxy.blackhole(True)
        proxy.drop_all()
        time.sleep(rng.uniform(2.0, 4.0))
        proxy.blackhole(False)
    elif kind == "reset":
        proxy.reset_mid_packet(rng.randint(1, 80))
    elif kind == "slow":
        proxy.slow_read(rng.choice((500, 2000, 8000)))
        time.sleep(rng.uniform(2.0, 4.0))
        proxy.slow_read(None)
    return None


def _wait(predicate, timeout, what, dev):
    """wait_for, with the end of the device's consoles in the error."""
    try:
        wait_for(predicate, timeout, what)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{dev.consoles()[-3000:]}") from None


FAULTS = ("drop", "stall", "blackhole", "reset", "slow")


def network(workdir, pki, board, rng, rounds=None, until=None, say=print):
    """Every FaultProxy fault in turn (CI: each once); the device must reconnect and lose nothing."""
    gw = RestartableGateway(Path(workdir) / "gateway", pki=pki).start()
    proxy = FaultProxy("127.0.0.1", gw.port).start()
    dev = SeqDevice(board, make_seq_bundle(gw, workdir, "network", port=proxy.port,
                                           keepalive=KEEPALIVE, backoff_cap=BACKOFF_CAP))
    detect = []
    done = {}
    try:
        dev.start().wait_connected()
        n = 0
        while _more(n, rounds, until):
            kind = FAULTS[n % len(FAULTS)]
            time.sleep(rng.uniform(0.3, 1.5))
            connects = _log_count(dev, r"\[edgekit\] connected to ")
            took = _fault(proxy, dev, kind, rng)
            if took is not None:
                detect.append(took)
            if kind != "slow":
                # Every fault but a slow link kills the session: the device must come back.
                _wait(lambda: _log_count(dev, r"\[edgekit\] connected to ") > connects, 60,
                      f"a reconnect after '{kind}'", dev)
            wait_delivered(gw, "network", dev, timeout=60)
            done[kind] = done.get(kind, 0) + 1
            n += 1
        report = wait_delivered(gw, "network", dev, timeout=60)
        dev.check_healthy()
        notes = {"faults": n, "max_detect_s": round(max(detect), 1) if detect else None,
                 "keepalive_s": KEEPALIVE}
        return Result("network", report, dev.reconnects(), notes)
    finally:
        dev.stop()
        proxy.stop()
        gw.stop()


def outbox_of(bundle):
    """The host outbox folder of the device whose bundle this is (azure_edge/state.py)."""
    from edgekit import use_firmware

    use_firmware()
    from azure_edge import state

    return Path(state.outbox_path(str(bundle), Path(bundle).name))


def check_outbox(folder, max_bytes):
    """Reopen the outbox a killed device left (as its next boot will) and validate it.

    Returns (records, bytes on flash); raises AssertionError if a record is not a reading,
    readings are not in order, or the segment files exceed the bound.
    """
    import json

    from edgekit.gateway import registry  # noqa: F401  (puts firmware/ on sys.path)
    from azure_edge.outbox import Outbox

    box = Outbox(str(folder), max_bytes=max_bytes)
    last = {}
    count = 0
    for record in box.records():
        bag, _, body = bytes(record).partition(b"\n")
        reading = json.loads(body)  # a torn or corrupt record would not parse
        assert bag.startswith(b"$.mid="), bag
        assert reading["seq"] > last.get(reading["boot"], 0), "outbox records out of order"
        last[reading["boot"]] = reading["seq"]
        count += 1
    assert count == len(box), (count, len(box))
    on_flash = sum(p.stat().st_size for p in Path(folder).glob("*.seg"))
    assert on_flash <= max_bytes, f"outbox uses {on_flash} B, bound {max_bytes} B"
    assert box.dropped == 0, "the outbox dropped readings"
    return count, on_flash


def powercut(workdir, pki, board, rng, rounds=None, until=None, say=print):
    """Cut the device's power (SIGKILL) while it writes its outbox and while PUBACKs are due."""
    gw = RestartableGateway(Path(workdir) / "gateway", pki=pki).start()
    # 5 ms each way: a PUBLISH waits 10 ms for its PUBACK (more would throttle QoS 1, one at a time,
    # below the 20 readings/s made, and the outbox backlog would never drain).
    proxy = FaultProxy("127.0.0.1", gw.port, delay=0.005).start()
    max_bytes = 262144
    bundle = make_seq_bundle(gw, workdir, "powercut", port=proxy.port, backoff_cap=1,
                             outbox_bytes=max_bytes)
    dev = SeqDevice(board, bundle)
    queued = []
    held = 0  # cuts while the gateway had stored a PUBLISH whose PUBACK it had not yet sent
    try:
        n = 0
        while _more(n, rounds, until):
            dev.start().wait_connected()
            if n % 2:
                # Gateway away: every reading goes through Outbox.append; cut during those writes.
                gw.kill()
                time.sleep(rng.uniform(0.5, 2.5))
                dev.kill()
                count, _size = check_outbox(outbox_of(bundle), max_bytes)
                queued.append(count)
                gw.start()  # same port: the proxy's target is still right
            elif n % 4 == 2:
                # Between PUBLISH and PUBACK for sure: the gateway stores what the device sends,
                # the PUBACKs are held, and the device dies waiting for one.
                time.sleep(rng.uniform(0.3, 1.0))
                proxy.stall(direction="down")
                _wait_blocked(dev)
                dev.kill()
                proxy.resume()
                held += 1
                check_outbox(outbox_of(bundle), max_bytes)
            else:
                # Connected, at a random moment: often a PUBLISH is in flight, waiting for its PUBACK.
                time.sleep(rng.uniform(0.3, 2.5))
                dev.kill()
                check_outbox(outbox_of(bundle), max_bytes)
            n += 1
        dev.start().wait_connected()
        report = wait_delivered(gw, "powercut", dev, timeout=60)
        # A boot whose reading arrived without its "handed" line was cut between PUBLISH and PUBACK
        # on the direct path (a cut while draining the outbox shows as duplicates instead).
        got = arrivals(gw, "powercut")
        handed = dev.handed()
        in_flight = sum(1 for boot in handed
                        if max((s for b, s, _h in got if b == boot), default=0) > handed[boot])
        left, _size = check_outbox_after(dev, bundle, max_bytes)
        dev.check_healthy()
        return Result("powercut", report, dev.reconnects(),
                      {"cuts": n, "boots": len(dev.boots), "max_queued_at_cut": max(queued, default=0),
                       "cut_awaiting_puback": held, "cut_in_flight": in_flight, "queued_at_end": left})
    finally:
        dev.stop()
        proxy.stop()
        gw.stop()


def _wait_blocked(dev, quiet=0.5, timeout=10):
    """Until the device has handed no reading for `quiet` s: with readings due every 50 ms, it is
    then stuck waiting for an answer the proxy holds (a PUBACK, on the direct path or a drain)."""
    end = time.monotonic() + timeout
    last, since = dev.console().count("handed "), time.monotonic()
    while time.monotonic() < end:
        time.sleep(0.05)
        now = dev.console().count("handed ")
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
    raise AssertionError(f"the device kept handing readings with its PUBACKs held\n{dev.consoles()[-3000:]}")


def check_outbox_after(dev, bundle, max_bytes):
    """Stop the device (it keeps making readings, so a few may still be queued) and check its outbox."""
    dev.stop()
    return check_outbox(outbox_of(bundle), max_bytes)


def token(workdir, pki, board, rng, rounds=None, until=None, say=print):
    """SAS tokens of 4 s (renewed every 3 s) while publishing every 50 ms: no gap, no storm."""
    gw = RestartableGateway(Path(workdir) / "gateway", pki=pki).start()
    ttl, margin = 4, 1
    dev = SeqDevice(board, make_seq_bundle(gw, workdir, "token", sas_ttl=ttl, sas_margin=margin))
    try:
        dev.start().wait_connected()
        t0 = time.monotonic()
        seconds = 12 if rounds is not None else max(12, until - t0)
        time.sleep(seconds)
        elapsed = time.monotonic() - t0
        report = wait_delivered(gw, "token", dev, timeout=60)
        text = dev.consoles()
        renewals = text.count("renewing SAS token")
        expected = elapsed / (ttl - margin)
        assert "CONNACK" not in text, text[-3000:]
        # About one reconnect per renewal interval: not a storm, and no missed renewal.
        assert expected - 2 <= renewals <= expected + 2, (renewals, expected)
        assert dev.reconnects() <= renewals + 1, (dev.reconnects(), renewals)
        dev.check_healthy()
        return Result("token", report, dev.reconnects(),
                      {"renewals": renewals, "expected": round(expected, 1)})
    finally:
        dev.stop()
        gw.stop()


SCENARIOS = {"restarts": restarts, "network": network, "powercut": powercut, "token": token}


def main(argv=None):
    """Run every scenario for duration/4 seconds each; print figures and the summary line."""
    ap = argparse.ArgumentParser(prog="soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, required=True, help="total seconds (split over the scenarios)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock)")
    ap.add_argument("--only", choices=sorted(SCENARIOS), action="append", help="run only these scenarios")
    args = ap.parse_args(argv)
    if args.duration <= 0:
        ap.error("--duration must be a positive number of seconds")
    seed = args.seed if args.seed is not None else int(time.time())
    names = args.only or list(SCENARIOS)
    share = args.duration / len(names)
    print(f"soak: {args.duration:g} s over {', '.join(names)}; seed {seed}", flush=True)

    from edgekit.certs.demo import make_demo_pki

    totals = {"sent": 0, "received": 0, "lost": 0, "duplicates": 0, "out_of_order": 0, "max_heap": 0}
    reconnects = 0
    failed = []
    tmp = Path(tempfile.mkdtemp(prefix="edgekit-soak-"))
    pki = make_demo_pki(tmp / "pki", "localhost", devices=[])
    board = make_board(tmp / "board")
    # Ctrl-C, or SIGTERM (even from a background job, where SIGINT is ignored), unwinds the
    # scenarios' finally blocks so no device or gateway process is left behind.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    for name in names:
        work = tmp / name
        work.mkdir()
        try:
            # One generator per scenario: `--only NAME --seed N` replays that scenario's draws.
            rng = random.Random(f"{seed}-{name}")
            res = SCENARIOS[name](work, pki, board, rng, until=time.monotonic() + share)
        except KeyboardInterrupt:
            failed.append(name)
            print(f"{name}: interrupted", flush=True)
            break
        except Exception as e:  # a scenario that fails still ends the soak with its line
            failed.append(name)
            why = str(e)
            why = why if len(why) <= 4000 else why[:1500] + "\n...\n" + why[-2500:]  # cause, then console end
            print(f"{name}: FAILED: {why}", flush=True)
            res = Result(name, getattr(e, "report", None), 0)  # lost readings still count
            if res.report is None:
                continue
        else:
            print(res.line(), flush=True)
        for k in ("sent", "received", "lost", "duplicates", "out_of_order"):
            totals[k] += res.report[k]
        totals["max_heap"] = max(totals["max_heap"], res.report["max_heap"])
        reconnects += res.reconnects
    if failed:
        print(f"soak: device consoles and gateway logs kept in {tmp}", flush=True)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    print(summary(totals, reconnects), flush=True)
    return 1 if totals["lost"] or totals["out_of_order"] or failed else 0


if __name__ == "__main__":
    sys.exit(main())
