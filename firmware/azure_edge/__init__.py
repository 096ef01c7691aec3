# edgekit firmware: an Azure IoT Hub client for downstream devices of an IoT Edge gateway.
# The same files run on MicroPython, CircuitPython and CPython.
VERSION = "0.1.0"


def log(msg):
    """One console line, as every part of the firmware writes them."""
    print("[edgekit] " + msg)


def unload(*names):
    """Forget azure_edge.<name> modules so their code's heap can be collected (a board loads
    each module's code into RAM; code that ran once need not stay there)."""
    import sys
    for name in names:
        sys.modules.pop("azure_edge." + name, None)
        globals().pop(name, None)


def step(c):
    """The update agent's turn when a twin message left it work (azure_edge/twin.py sets this
    package as Client.adu): its idle path (adu_boot) loads now, outside MiniMQTT's receive path,
    and the agent itself only for a deployment, once adu_boot is gone (no hole left in its heap)."""
    c.adu = None
    try:
        if run_and_unload("adu_boot", "kick", c):
            run_and_unload("adu", "kick", c)
    except Exception as e:  # no heap for it now, a flash error: the device goes on without it
        c.du.pop("twin", None)  # the twin after the next connect brings the deployment again
        log("update agent: %s: %s" % (type(e).__name__, e))


def run_and_unload(module, fn, *args):
    """Call azure_edge.<module>.<fn>(*args), then unload that module: for code needed only at
    boot, after a crash or on a failure."""
    import gc
    gc.collect()  # room for the module's code in one piece
    try:
        return getattr(__import__("azure_edge." + module, None, None, (fn,)), fn)(*args)
    finally:
        unload(module)
