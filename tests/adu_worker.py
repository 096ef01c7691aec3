# Drives the update agent (azure_edge.adu, slots, adu_fetch) under CPython or MicroPython for
# tests/test_adu_agent.py, with a stand-in client. argv: LIB DATA COMMAND JSON-FILE
#   twin JSON      on_twin with {"desired": ..., "whole": bool}; a deployment it takes asks for
#                  a reset: then the deployment's own boot (adu_apply.run, as start.boot runs
#                  it) and, unless that switched to a trial, the whole twin again as at the
#                  next connect (the agent reports the result there)
#   take JSON      on_twin alone: a deployment is taken, its boot not run
#   boot           adu.boot on a fresh client, then step a trial as connected (or not: JSON)
#   apply          the deployment's boot (adu_apply.run) alone
#   select         start.boot() without its reset: a pending deployment's boot, then
#                  runslot.run_updated() (prints what ran)
#   idle JSON      adu_boot.kick (the connect's path) with {"desired", "whole", "state": adu.json}
#   reports JSON   adu.agent_report and adu_boot.report of each of {"states": [...]}
# One JSON line at the end: {"reports": [...], "reboot": bool, "adu": state, "boot": boot.json}
import json
import sys

sys.path.insert(0, sys.argv[1])
if sys.implementation.name == "micropython":
    from azure_edge import net
    net.install()  # adafruit_ticks is MicroPython's own time module there
DATA = sys.argv[2]
CMD = sys.argv[3]
# The JSON argument comes in a file: the unix MicroPython dies ("uncaught NLR") on a long argv.
with open(sys.argv[4]) as _f:
    ARG = json.loads(_f.read())


class Cs:
    connect_host = ARG.get("gateway", "127.0.0.1")


class C:
    def __init__(self):
        self.du = {"manufacturer": "contoso", "model": "sensor", "boots": 3, "minutes": 10,
                   "d": DATA, "b": ARG.get("adu_bundle"), "cache": ARG.get("cache")}
        self.adu = None
        self.connected = ARG.get("connected", True)
        self._twin_rid = None
        self._replies = []
        self.reconnects = 1
        self.cs = Cs()
        self.port = 8883
        self.reboot_requested = False
        self.reports = []

    def report(self, props):
        self.reports.append(json.loads(json.dumps(props)))


def run_job(c, limit=100000):
    import time
    from adafruit_ticks import ticks_diff, ticks_ms
    n = 0
    while c.adu is not None and not c.reboot_requested and n < limit:
        c.adu.step(c)
        n += 1
        wait = getattr(c.adu, "wait", 0)
        if wait and ticks_diff(wait, ticks_ms()) > 0:
            time.sleep(0.01)  # a retry's pause: a fast job would spend the limit before it ends


def pending():
    try:
        open(DATA + "/job.json").close()
        return True
    except OSError:
        return False


def main():
    from azure_edge import adu, adu_boot, slots
    c = C()
    if CMD in ("twin", "take"):
        adu.on_twin(c, ARG["desired"], ARG.get("whole", False))
        run_job(c)
        if CMD == "twin" and c.reboot_requested and pending():
            from azure_edge import adu_apply
            lean = adu_apply.run(DATA)
            c.reboot_requested = bool(lean and lean.reboot_requested)  # switched to a trial
            if not c.reboot_requested:
                adu.on_twin(c, ARG["desired"], True)
    elif CMD == "boot":
        adu_boot.boot(c)
        if ARG.get("expire"):
            if c.adu is not None:
                c.adu.until = 0  # the trial's time is up (ticks 0 is long past: no sleep)
                from adafruit_ticks import ticks_add, ticks_ms
                c.adu.until = ticks_add(ticks_ms(), -1)
        run_job(c, 3)
    elif CMD == "idle":
        # The connect's path (azure_edge.step: adu_boot.kick, then adu.kick if it says so) with the
        # twin twin.py kept; which modules it ran (the agent only for a deployment), then the job.
        import azure_edge
        ran = []
        run = azure_edge.run_and_unload
        azure_edge.run_and_unload = lambda *a: ran.append(a[0]) or run(*a)
        c.du["expiry"] = ARG.get("expiry")
        if ARG.get("state") is not None:
            adu_boot.write(DATA, ARG["state"])
        c.du["twin"] = (ARG["desired"], ARG.get("whole", True))
        c.adu = azure_edge  # as twin.py leaves it
        c.adu.step(c)
        azure_edge.run_and_unload = run
        run_job(c)
        print(json.dumps({"reports": c.reports, "ran": ran, "adu": adu.load(DATA), "twin": "twin" in c.du}))
        return
    elif CMD == "reports":
        # The agent's report by the agent (adu.agent_report) and by the idle path (adu_boot.report).
        c.du["expiry"] = ARG.get("expiry")
        print(json.dumps([[adu.agent_report(c, st), adu_boot.report(c, st)] for st in ARG["states"]]))
        return
    elif CMD == "trust":
        # Roots added by edgekit/trust:1 beside the bundle's: what the TLS context trusts, a
        # handshake through all of them, then the probe through the new ones alone.
        from azure_edge import trust
        with open(ARG["bundle_ca"], "rb") as f:
            ca = f.read()
        if sys.implementation.name == "circuitpython":
            ca = trust.pem(ca)  # a CircuitPython bundle's root is PEM text (its TLS takes no DER)
        if ARG.get("add"):
            trust.add(DATA, ARG["add"])
        roots, probe = trust.roots(DATA, ca)
        n = len(roots) if isinstance(roots, list) else 1
        if isinstance(roots, str):
            n = roots.count("-----BEGIN CERTIFICATE-----")  # all the roots in one PEM text
        out = {"roots": n, "probe": probe,
               "expiry": adu_boot.expiry(roots, None)}
        try:
            out["union"] = trust._handshake("localhost", ARG["port"], roots if isinstance(roots, list) else [roots])
        except Exception as e:
            out["union"] = repr(e)
        if probe:
            Cs.connect_host = "localhost"
            c.port = ARG["port"]
            c.adu = trust.Probe()
            c.adu.step(c)
        out["state"] = trust._state(DATA)
        print(json.dumps(out))
        return
    elif CMD == "apply":  # the deployment's boot alone, as start.boot runs it
        from azure_edge import adu_apply
        print(json.dumps({"applied": adu_apply.run(DATA) is not None}))
        return
    elif CMD == "select":
        if pending():
            from azure_edge import adu_apply
            adu_apply.run(DATA)
        from azure_edge import runslot
        try:
            runslot.run_updated()
        except SystemExit:  # port.reset() off a board: the unix port and CPython exit
            print(json.dumps({"ran": "reset"}))
            return
        print(json.dumps({"ran": "factory"}))
        return
    print(json.dumps({"reports": c.reports, "reboot": c.reboot_requested, "adu": adu.load(DATA),
                      "boot": slots.read(DATA)}))


main()
