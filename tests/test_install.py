"""An installed edgekit needs no checkout: the sdist builds a wheel that carries the firmware, the
board files and the MiniMQTT trimming, and that wheel, installed with its dependencies from the
package index into a fresh venv, runs boards, certs demo and the whole demo from an empty folder."""
import os
import subprocess
import sys
import tarfile
import zipfile

import pytest

from conftest import ROOT


def _run(argv, cwd, timeout, env=None):
    out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, f"{' '.join(map(str, argv))} failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(fresh venv's bin folder, the wheel), the wheel built from the sdist as pip does."""
    work = tmp_path_factory.mktemp("install")
    dist = work / "dist"
    _run([sys.executable, "-m", "build", "--sdist", "--outdir", str(dist), str(ROOT)], work, 180)
    sdist = next(dist.glob("edgekit-*.tar.gz"))
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(sdist)], work, 180)
    wheel = next(dist.glob("edgekit-*.whl"))
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], work, 60)
    # Dependencies from the index (or pip's cache), as a user's install gets them.
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)], work, 300)
    return venv / "bin", sdist, wheel


def _clean_env(tmp):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEKIT_", "PYTHON", "VIRTUAL_ENV"))}
    env["HOME"] = str(tmp)
    return env


def test_sdist_and_wheel_carry_firmware_and_boards(installed):
    _bin, sdist, wheel = installed
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert {"firmware/azure_edge/client.py", "firmware/main.py", "boards/esp32-devkitc.json",
            "host_tools/edgekit/slim.py"} <= names
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert {"edgekit/firmware/azure_edge/client.py", "edgekit/firmware/azure_edge/state.py",
            "edgekit/firmware/main.py", "edgekit/firmware/code.py", "edgekit/board_files/sim.json",
            "edgekit/slim.py"} <= names
    assert not [n for n in names if n.startswith(("host_tools/", "azure_edge/", "tests/"))]


def test_installed_tool_runs_from_an_empty_folder(installed, tmp_path):
    bin_dir, _sdist, _wheel = installed
    edgekit = str(bin_dir / "edgekit")
    env = _clean_env(tmp_path)
    here = tmp_path / "empty"
    here.mkdir()
    boards = _run([edgekit, "boards"], here, 60, env)
    assert "esp32-devkitc" in boards and "sim" in boards
    _run([edgekit, "certs", "demo", "pki", "--gateway-host", "localhost", "--device", "dev1"], here, 120, env)
    assert (here / "pki" / "certs" / "azure-iot-test-only.root.ca.cert.pem").is_file()
    demo = _run([edgekit, "demo"], here, 180, env)
    assert "demo passed" in demo
    # State in the working folder, nothing written next to the installed package.
    assert (here / ".edgekit" / "demo").is_dir()
    site = next((bin_dir.parent / "lib").glob("python3*/site-packages/edgekit"))
    assert not (site.parent / ".edgekit").exists() and not (site.parent / "build").exists()


def test_edgekit_home_moves_bundles_and_state(installed, tmp_path):
    bin_dir, _sdist, _wheel = installed
    edgekit = str(bin_dir / "edgekit")
    home = tmp_path / "home"
    env = dict(_clean_env(tmp_path), EDGEKIT_HOME=str(home))
    here = tmp_path / "elsewhere"
    here.mkdir()
    _run([edgekit, "certs", "demo", "pki", "--gateway-host", "gw", "--device", "dev1"], here, 120, env)
    root = here / "pki" / "certs" / "azure-iot-test-only.root.ca.cert.pem"
    cs = "HostName=h.azure-devices.net;DeviceId=dev1;SharedAccessKey=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=;GatewayHostName=gw"
    _run([edgekit, "bundle", "dev1", "-c", cs, "--ca", str(root), "--no-wifi"], here, 60, env)
    assert (home / "bundles" / "dev1" / "config.json").is_file()
    assert not (here / "bundles").exists()
