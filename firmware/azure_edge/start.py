# The start of every entry file (firmware/main.py, firmware/examples/), before anything else:
#     from azure_edge import start
#     start.boot()
# A deployment the update agent took (DATA/job.json) is applied first, in this boot of its own
# (azure_edge/adu_apply.py). When the agent installed an application (DATA/boot.json), it runs
# instead and boot() never returns (docs/updates.md). A device that never took an update loads
# nothing more.
from azure_edge import unload


def boot():
    from azure_edge import state
    d = state.data_of()
    job = state._exists(d + "/job.json")
    updated = job or state._exists(d + "/boot.json")
    state = None
    unload("state", "start")  # (the names held the modules' code, which a slot does not need)
    if job:  # a deployment the agent took: applied now, before the application loads
        from azure_edge import run_and_unload
        if run_and_unload("adu_apply", "run", d) is not None:
            from azure_edge import port
            port.load().reset()  # into the normal boot, its heap clean (the agent reports)
    if updated:
        from azure_edge import runslot
        runslot.run_updated()  # (its code only here: main.py's name `start` holds this module's)
