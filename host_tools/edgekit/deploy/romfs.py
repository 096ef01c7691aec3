"""ROMFS: the compiled /lib as one read-only image in a flash partition (`edgekit deploy --romfs`).

MicroPython runs .mpy code in place from a ROMFS, so the code of the firmware and MiniMQTT
stays out of the heap (`make bench` measures how much). Standard ESP32 builds have no ROMFS
partition; boards whose firmware has one (MICROPY_VFS_ROM and a romfs partition) mount it
at /rom and put /rom/lib ahead of /lib on sys.path. Images are built and written with
mpremote's own ROMFS code.
"""
import contextlib
import io
import shutil
import tempfile
from pathlib import Path


def image_from_tree(lib_dir):
    """A ROMFS image holding lib_dir as /lib (bytes)."""
    from mpremote.romfs import make_romfs

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(lib_dir, Path(tmp) / "lib")
        with contextlib.redirect_stdout(io.StringIO()):  # make_romfs prints the tree
            return make_romfs(tmp, mpy_cross=False)


def image_from_payloads(payloads):
    """A ROMFS image of the deploy payloads that belong in /lib (bytes)."""
    with tempfile.TemporaryDirectory() as tmp:
        lib = Path(tmp) / "lib"
        for p in payloads:
            dest = lib / p.board_path[len("/lib/"):]
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p.local, dest)
        return image_from_tree(lib)


class _State:
    """The two calls mpremote's `romfs deploy` makes on its session state."""

    def __init__(self, transport):
        self.transport = transport

    def ensure_raw_repl(self):
        pass  # the deploy link holds the raw REPL already

    def did_action(self):
        pass


def write_image(transport, image, partition=0):
    """Write image to the board's ROMFS partition with mpremote's `romfs deploy` (prints progress)."""
    from argparse import Namespace

    from mpremote.commands import _do_romfs_deploy

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lib.romfs"
        path.write_bytes(image)
        _do_romfs_deploy(_State(transport), Namespace(path=str(path), partition=partition, mpy=False))
