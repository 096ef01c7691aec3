"""edgekit host tools: certificates, bundles, flashing, deploying, gateway checks and emulation."""
import hashlib
import os
from pathlib import Path

__version__ = "0.1.0"

_HERE = Path(__file__).resolve().parent
# In a checkout firmware/ and boards/ sit at the top, beside host_tools/ (this package is
# host_tools/edgekit/); an installed wheel carries them inside the package (pyproject.toml maps them there).
ROOT = _HERE.parent.parent
FIRMWARE_DIR = _HERE / "firmware" if (_HERE / "firmware").is_dir() else ROOT / "firmware"
BOARDS_DIR = _HERE / "board_files" if (_HERE / "board_files").is_dir() else ROOT / "boards"
# Where a user's files go: the working folder, or $EDGEKIT_HOME. Never the checkout or the
# installed package (site-packages may not be writable, and state must not ride along with code).
HOME = Path(os.environ.get("EDGEKIT_HOME") or ".")
BUNDLES_DIR = HOME / "bundles"  # device bundles (`--bundles` picks another folder)
STATE_DIR = HOME / ".edgekit"  # sim flash, demo, gateway data, host outboxes (git-ignored)


def use_firmware():
    """Put firmware/ on sys.path, so the host runs the board's own protocol core (azure_edge).

    Appended, not prepended: firmware/code.py must not shadow the standard library's `code`.
    """
    import sys

    if str(FIRMWARE_DIR) not in sys.path:
        sys.path.append(str(FIRMWARE_DIR))


def sha256_file(path):
    """Hex SHA-256 of a file's bytes, read in blocks so a firmware image need not fit in memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()
