"""edgekit host tools: certificates, bundles, flashing, deploying, gateway checks and emulation."""
from pathlib import Path

__version__ = "0.1.0"

# The repository (or installed checkout) root: firmware/ and boards/ live beside host_tools/.
ROOT = Path(__file__).resolve().parent.parent
FIRMWARE_DIR = ROOT / "firmware"
BOARDS_DIR = ROOT / "boards"
