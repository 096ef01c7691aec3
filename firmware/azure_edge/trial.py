# The watch over a trial boot (docs/updates.md, "The boot switch and the trial"), and the
# reading side of DATA/boot.json (written by azure_edge/slots.py). Apart from slots, and small:
# it is in the heap beside the whole device while a trial runs, and the boot that starts the
# trial (adu_boot.boot) loads it when the client is already built; slots' code comes for a
# decision only (kept, rolled back).
import json
import os

from azure_edge import log

T_SECONDS = 600


def read(d):
    """boot.json of data folder d; a missing or torn one reads as the factory, no trial."""
    for p in (d + "/boot.json", d + "/boot.json.new"):  # .new: cut between remove and rename
        try:
            with open(p) as f:
                st = json.load(f)
            if isinstance(st, dict):
                return st
        except (OSError, ValueError):
            pass
    return {"run": "", "try": "", "n": 0}


def running(d):
    """(slot, on trial) of this boot: ("", False) for the factory."""
    st = read(d)
    slot = st.get("try") or st.get("run") or ""
    if slot and not _exists(d + "/slots/" + slot + "/.id"):
        slot = ""
    return slot, bool(slot) and slot == st.get("try")


class Trial:
    """Watches a trial boot from the client's loop (Client.adu): good once connected with its
    twin fetched and the reports sent; rolled back (and reset) when not connected in time."""

    def __init__(self, d):
        from adafruit_ticks import ticks_add, ticks_ms
        self.d = d
        self.until = ticks_add(ticks_ms(), int(read(d).get("t", T_SECONDS)) * 1000)

    def step(self, c):
        try:
            self._step(c)
        except Exception as e:  # no heap for the agent's report, a flash error: watch on
            c.du.pop("twin", None)
            log("trial watch: %s: %s" % (type(e).__name__, e))

    def _step(self, c):
        from adafruit_ticks import ticks_diff, ticks_ms
        if c.du.get("twin"):
            from azure_edge import run_and_unload
            run_and_unload("adu", "kick", c)  # the agent's report at connect
            return
        if c.connected and c._twin_rid is None and not c._replies and c.reconnects:
            from azure_edge import run_and_unload
            run_and_unload("slots", "good", self.d)
            log("trial application connected and reported: kept")
            c.adu = None
            from azure_edge import run_and_unload
            run_and_unload("adu", "trial_done", c)  # the deployment reported as installed
        elif not c.connected and ticks_diff(ticks_ms(), self.until) >= 0:
            from azure_edge import run_and_unload
            run_and_unload("slots", "rollback", self.d, "connect")
            log("trial application not connected in time: rolling back")
            c.adu = None
            c.reboot_requested = True


def _exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False
