"""README.md's Quick tour, run literally as bash, twice in a row in the same folder: free ports read
back from serve, the device in the background and stopped at the end, device add --force."""
import os
import re
import shutil
import signal
import subprocess

from conftest import ROOT


def quick_tour():
    """The first sh block under '## Quick tour' in README.md."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Quick tour"):]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def _folder(tmp_path):
    """A copy of the checkout as the tour needs it: Makefile, pyproject, firmware, and the set-up .venv."""
    here = tmp_path / "clone"
    here.mkdir()
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, here / name)  # mtimes kept: make setup sees the venv is current
    (here / "firmware").symlink_to(ROOT / "firmware")
    (here / ".venv").symlink_to(ROOT / ".venv")
    return here


def _run(script, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEKIT_", "VIRTUAL_ENV"))}
    proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=150)
    finally:
        # Whatever the tour left running (it should leave nothing) goes with its session.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return proc.returncode, out


def _running_in(folder):
    """pids of processes whose working folder is folder (the tour's gateway and device were)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.path.realpath(f"/proc/{pid}/cwd") == str(folder.resolve()):
                found.append(int(pid))
        except OSError:
            pass
    return found


def test_quick_tour_runs_as_written_twice(tmp_path):
    script = quick_tour()
    assert "--listen 0 --detach" in script and "device add dev1 --force" in script and "gateway stop" in script
    here = _folder(tmp_path)
    try:
        for attempt in (1, 2):
            code, out = _run(script, here)
            assert code == 0, f"run {attempt} of the Quick tour failed:\n{out[-3000:]}"
            assert '"seq"' in out and '"pong"' in out, out[-3000:]
            assert "gateway stopped" in out
        # Nothing left running: the gateway and the device (both started in the folder) are gone.
        assert _running_in(here) == []
    finally:
        for pid in _running_in(here):
            os.kill(pid, signal.SIGKILL)
    # Its state went under the git-ignored .edgekit/, never into the bundle.
    assert (here / ".edgekit" / "gateway").is_dir() and not (here / "gw").exists()
    assert not (here / "bundles" / "dev1" / "outbox").exists()
