"""`edgekit deploy`: firmware, MQTT dependencies and a device bundle onto a board.

deploy() plans the files (plan.py), compiles MicroPython code to .mpy with a cache
(compile.py), compares SHA-256 hashes with the manifest kept on the board and copies
only what changed, over mpremote or a mounted CircuitPython drive (link.py).
"""
from edgekit.deploy.core import DeployResult, deploy, open_link
from edgekit.deploy.plan import MANIFEST, DeployError, plan_sources

__all__ = ["MANIFEST", "DeployError", "DeployResult", "deploy", "open_link", "plan_sources"]
