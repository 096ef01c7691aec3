"""Every firmware file compiles with mpy-cross, and the /lib build (edgekit.deploy.compile) runs
under MicroPython with MiniMQTT trimmed."""
import subprocess
from pathlib import Path

import pytest

from conftest import FIRMWARE, ROOT, tool

from edgekit import mpy
from edgekit.deploy import compile as lib


def test_every_firmware_file_compiles(tmp_path):
    sources = sorted(FIRMWARE.rglob("*.py"))
    assert len(sources) >= 5
    for src in sources:
        out = tmp_path / (src.stem + ".mpy")
        mpy.compile_file(src, out)
        assert out.read_bytes()[:1] == b"M"  # the .mpy magic


def test_lib_build_runs_under_micropython(tmp_path):
    # The one /lib build deploy, the tests and the bench use: firmware and MiniMQTT as .mpy.
    built = lib.build_lib(tmp_path)
    assert {str(p) for p, _ in built} >= {"azure_edge/sas.mpy", "azure_edge/topics.mpy",
                                         "adafruit_minimqtt/adafruit_minimqtt.mpy"}
    assert all((tmp_path / p).stat().st_size == size for p, size in built)
    # MiniMQTT is the trimmed build (slim.py), the same bytes compile_source gives.
    mqtt = tmp_path / "adafruit_minimqtt" / "adafruit_minimqtt.mpy"
    lib.compile_source(_minimqtt_source(), tmp_path / "direct.mpy",
                       source_name="/lib/adafruit_minimqtt/adafruit_minimqtt.py")
    assert mqtt.read_bytes() == (tmp_path / "direct.mpy").read_bytes()
    (tmp_path / "direct.mpy").unlink()
    script = ("from azure_edge import sas\n"
              "print(sas.generate('h/devices/d', 'AAAA', 10))\n")
    done = subprocess.run([tool("micropython"), "-c", script], cwd=tmp_path,
                          capture_output=True, text=True, timeout=20,
                          env={"MICROPYPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("SharedAccessSignature sr=h%2Fdevices%2Fd&sig=")
    # No .py fell through: only compiled files were on the path.
    assert not list(Path(tmp_path).rglob("*.py"))


def _minimqtt_source():
    import adafruit_minimqtt.adafruit_minimqtt as m
    return Path(m.__file__)


def test_minimqtt_is_trimmed_for_micropython_keeping_line_numbers(tmp_path):
    from edgekit import slim

    path = _minimqtt_source()
    original = path.read_text()
    trimmed = slim.slim_source(original)
    before, after = original.splitlines(), trimmed.splitlines()
    assert len(after) == len(before)
    assert "self.logger.debug(" in original and "self.logger.debug(" not in trimmed
    for name in slim.UNUSED:
        assert f"def {name}(" in original and f"def {name}(" not in trimmed
    # What stays is where it was: tracebacks from the board point at the library's real lines.
    kept = [i for i, line in enumerate(before) if line.lstrip().startswith("def ") and line in after]
    assert len(kept) > 12 and all(before[i] == after[i] for i in kept)
    # The /lib build trims when given the library's file; mpy.compile_file compiles as it is.
    mpy.compile_file(path, tmp_path / "full.mpy")
    lib.compile_source(path, tmp_path / "slim.mpy")
    assert (tmp_path / "slim.mpy").stat().st_size < 0.8 * (tmp_path / "full.mpy").stat().st_size


def test_trimming_drops_names_that_would_only_cost_interned_strings(tmp_path):
    # Every global, attribute and constant name a module loads becomes a qstr in the heap for
    # good; integer constants made private are folded into the code by mpy-cross instead.
    from edgekit import slim

    original = _minimqtt_source().read_text()
    trimmed = slim.slim_source(original)
    assert "MQTT_PUBLISH = const(" in original and "\n_MQTT_PUBLISH = const(0x30)" in trimmed
    assert "| MQTT_PUBLISH" not in trimmed.replace("_MQTT_PUBLISH", "")
    for gone in ("from typing import", "__repo__", "class NullLogger", "self.logger", "_default_sock"):
        assert gone in original and gone not in trimmed, gone
    assert "__version__" in trimmed
    # A method asked to stay, stays (the bench's MiniMQTT baseline keeps publish).
    kept = slim.slim_source(original, keep=("publish",))
    assert "    def publish(" in kept and "    def publish(" not in trimmed
    # Both still compile and import on the real MicroPython.
    for name, text in (("trimmed", trimmed), ("kept", kept)):
        pkg = tmp_path / name / "adafruit_minimqtt"
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "adafruit_minimqtt.py").write_text(text)
        done = subprocess.run([tool("micropython"), "-c",
                               "from azure_edge import net\nnet.install()\n"
                               "from adafruit_minimqtt.adafruit_minimqtt import MQTT\n"
                               "print(sorted(k for k in dir(MQTT) if k == 'publish'))"],
                              capture_output=True, text=True, timeout=20,
                              env={"MICROPYPATH": f"{tmp_path / name}:{FIRMWARE}"})
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == ("['publish']" if name == "kept" else "[]")


def test_trimming_stops_when_the_library_changed_under_it():
    from edgekit import slim

    original = _minimqtt_source().read_text()
    calls_removed = original.replace("    def _connected(self)",
                                     "    def _again(self):\n        self.reconnect()\n\n"
                                     "    def _connected(self)", 1)
    with pytest.raises(slim.SlimError, match="still uses reconnect"):
        slim.slim_source(calls_removed)
    renamed = original.replace("def will_set(", "def set_will(", 1)
    with pytest.raises(slim.SlimError, match="has no method will_set"):
        slim.slim_source(renamed)


def test_lib_build_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def (:\n")
    with pytest.raises(lib.BuildError, match="mpy-cross rejects .*bad.py"):
        lib.compile_source(bad, tmp_path / "bad.mpy")
    with pytest.raises(lib.BuildError, match="not the firmware package"):
        lib.build_lib(tmp_path / "out", firmware_dir=tmp_path)
