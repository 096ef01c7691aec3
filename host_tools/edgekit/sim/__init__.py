"""The simulated board (`edgekit sim`): real MicroPython served like a USB-serial board."""
from edgekit.sim.supervisor import DEFAULT_HEAP, SimBoard, SimError, micropython_path

__all__ = ["DEFAULT_HEAP", "SimBoard", "SimError", "micropython_path"]
