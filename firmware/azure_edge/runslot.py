# Runs the application an update installed (DATA/slots/<slot>), for start.boot: apart from
# start.py, whose code every entry file holds for good by its name `start`, while this module's
# is loaded only on a device that took an update (docs/updates.md).
from azure_edge import log, unload


def run_updated():
    """Run the application slots.boot picks, if any (never returns while it runs)."""
    from azure_edge import slots
    pick = slots.boot()
    slots = None
    unload("slots")  # here, not in slots: its code would stay in the heap while the slot runs
    if pick:
        run(*pick)


def _drop_azure_edge(sys):
    for name in list(sys.modules):
        if name == "azure_edge" or name.startswith("azure_edge."):
            del sys.modules[name]


def run(d, st, slot, trial):
    """Run slot's main.py. A trial that fails to import is rolled back and the board reset."""
    import os
    import sys
    s = d + "/slots/" + slot
    log("running %s application from %s" % ("the trial" if trial else "the updated", s))
    # The factory's azure_edge gives way to the slot's own, if it brings one (else it stays: a
    # second copy of the package would be held by this module's names while the slot runs).
    try:
        os.stat(s + "/lib/azure_edge")
        _drop_azure_edge(sys)
    except OSError:
        pass
    sys.path.insert(0, s + "/lib")
    why = None
    try:
        with open(s + "/main.py") as f:
            code = f.read()
        try:  # compiled here, so that the source's text is not held while the slot runs
            code = compile(code, s + "/main.py", "exec")
        except NameError:  # a port built without compile(): exec compiles the text
            pass
        exec(code, {"__name__": "__main__"})
    except (ImportError, SyntaxError) as e:
        if not trial:
            raise
        why = "%s: %s" % (type(e).__name__, e)
    if why is None:
        return
    # Rolled back outside the except clause, with the trial's code dropped (the traceback holds
    # its frames), then a reset: the good application starts in a clean heap, not beside what
    # the failed one left (its interned names, a fragmented heap; on the simulated board at 192K
    # the good one then found no room for its outbox).
    code = None
    sys.path.remove(s + "/lib")
    _drop_azure_edge(sys)
    log("the trial application failed to import (%s): rolling back" % why)
    from azure_edge import port, slots
    slots._back(d, st, "import")
    port.load().reset()
