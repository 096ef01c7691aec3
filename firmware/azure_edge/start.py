# The start of every entry file (firmware/main.py, firmware/examples/), before anything else:
#     from azure_edge import start
#     start.boot()
# When the update agent installed an application (DATA/boot.json), it runs instead and boot()
# never returns (docs/updates.md). A device that never took an update loads nothing more.
from azure_edge import unload


def boot():
    from azure_edge import state
    updated = state.updated()
    state = None
    unload("state", "start")  # (the names held the modules' code, which a slot does not need)
    if updated:
        from azure_edge import slots
        slots.boot()  # runs the updated application (its main.py loops forever), or returns
        unload("slots")
