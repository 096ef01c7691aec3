"""The simulated board's /data seen from the host: the NOR chip's wear counters, and the
files LittleFS keeps on it (read by the real micropython, the only LittleFS here)."""
import json
import subprocess
from pathlib import Path

BOARD_FILES = Path(__file__).resolve().parent / "board"

_LIST = """
import json, vfs, _simnor
nor = _simnor.Nor(%r, %r, blocks=%d)
fs = vfs.VfsLfs2(nor)  # listing writes nothing
print(json.dumps([(e[0], e[1] == 0x4000, e[3]) for e in fs.ilistdir(%r)]))
"""


def wear(wear_path):
    """The chip's counters (board/_simnor.py): erases, programmed_bytes, hottest_block,
    hottest_erases, erases_per_block...; None before the board's first sync."""
    try:
        return json.loads(Path(wear_path).read_text())
    except (OSError, ValueError):
        return None


def listdir(image, path="/", micropython=None, blocks=512):
    """[(name, is_folder, size)] of a folder on the image's LittleFS (only read)."""
    from edgekit.sim.supervisor import micropython_path

    image = Path(image)
    code = _LIST % (str(image.parent), image.name, blocks, path)
    done = subprocess.run([micropython or micropython_path(), "-c", code], capture_output=True,
                          text=True, timeout=30, env={"MICROPYPATH": str(BOARD_FILES)})
    if done.returncode:
        raise OSError(f"cannot list {path} on {image}: {done.stdout.strip()[-200:]}")
    return [tuple(e) for e in json.loads(done.stdout)]
