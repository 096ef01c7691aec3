"""Device state is never deployment input: the outbox lives outside the bundle, deploy leaves
the board's state alone, and an outbox at the old in-bundle path is moved on first boot."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIRMWARE, ROOT
from device_helpers import Hub, free_port, readings_of, stop_process, wait_for, write_bundle
from device_helpers import broker, pki  # noqa: F401  (fixtures)
from edgekit import use_firmware
from edgekit.deploy.plan import is_state, plan_sources
from edgekit.sim import SimBoard
from edgekit.sim import data as sim_data

use_firmware()
from azure_edge import state  # noqa: E402
from azure_edge.outbox import Outbox  # noqa: E402

DEVICE = "dev-state"
# The real app.run(), with each reading tagged by the run that made it.
TAGGED = ("import os, sys\nsys.path.append(%r)\nfrom azure_edge import app\n"
          "app.run(lambda: {'run': os.getenv('RUN_TAG')})\n" % str(FIRMWARE))


def test_outbox_paths():
    assert state.outbox_path("/edgekit", "d") == "/data/outbox"
    assert state.outbox_path("edgekit", "d") == "./data/outbox"  # a CIRCUITPY drive as cwd
    assert state.outbox_path("bundles/dev1", "dev1") == "./.edgekit/outbox/dev1"
    assert state.outbox_path("/w/bundles/dev1/", "dev1", "m") == "/w/.edgekit/outbox/dev1-m"


def test_plan_skips_a_bundle_outbox_and_marks_state(tmp_path, pki):  # noqa: F811
    bundle = write_bundle(tmp_path, pki[0], 8883, device=DEVICE)
    (bundle / "outbox").mkdir()
    (bundle / "outbox" / "00000000.seg").write_bytes(b"queued on the PC")
    paths = {s.board_path for s in plan_sources("micropython", DEVICE, FIRMWARE, tmp_path / "bundles")}
    assert "/edgekit/config.json" in paths
    assert not [p for p in paths if p.startswith("/edgekit/outbox")]
    assert is_state("/data/outbox/00000000.seg") and is_state("/edgekit/outbox/x")
    assert not is_state("/edgekit/config.json") and not is_state("/database.py")


def _run_host(home, tag, log_name):
    """The device on the PC, from HOME/bundles/DEVICE with HOME as the working folder."""
    env = dict(os.environ, EDGEKIT_BUNDLE=f"bundles/{DEVICE}", RUN_TAG=tag)
    log = open(home / log_name, "wb")
    proc = subprocess.Popen([sys.executable, "-c", TAGGED], cwd=home, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    return proc, log


def _queued(folder, tag):
    box = Outbox(str(folder))
    seqs = []
    for _ in range(len(box)):
        body = json.loads(bytes(box.peek()).split(b"\n", 1)[1])  # record: property bag, newline, body
        seqs.append(body.get("seq") if body.get("run") == tag else None)
        box.pop()
    return seqs


def _tree_bytes(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _set_port(bundle, port):
    cfg_path = bundle / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["port"] = port
    cfg_path.write_text(json.dumps(cfg))


def test_host_queue_then_deploy_loses_nothing_and_sends_once(tmp_path, pki, broker):  # noqa: F811
    home = tmp_path / "home"
    dead = free_port()  # no gateway there: every reading is queued
    bundle = write_bundle(home, pki[0], dead, device=DEVICE)
    # 1. A host run queues readings, under .edgekit/ and not in the bundle.
    proc, log = _run_host(home, "host-1", "host-1.log")
    host_box = home / ".edgekit" / "outbox" / DEVICE
    wait_for(lambda: len(list(host_box.glob("*"))) > 0, 20, "the host outbox")
    _sleep(3)  # about six readings, at one each 0.5 s
    stop_process(proc, log)
    assert not (bundle / "outbox").exists()
    # Older firmware kept a host outbox in the bundle: it rides along into the folder deploy reads.
    legacy = bundle / "outbox"
    legacy.mkdir()
    for f in host_box.iterdir():
        (legacy / f.name).write_bytes(f.read_bytes())
    host_before = _tree_bytes(host_box)

    # 2. The board (old firmware) queued readings of its own in the bundle, and its manifest
    # lists them (an old deploy copied a host outbox there).
    flash = tmp_path / "sim" / "flash"
    old_box = flash / "edgekit" / "outbox"
    old_box.mkdir(parents=True)
    side = tmp_path / "board-old"
    write_bundle(side, pki[0], dead, device=DEVICE, outbox_path=str(old_box))
    env = dict(os.environ, EDGEKIT_BUNDLE=str(side / "bundles" / DEVICE), RUN_TAG="board-old")
    with open(tmp_path / "board-old.log", "wb") as blog:
        p = subprocess.Popen([sys.executable, "-c", TAGGED], cwd=side, env=env, stdout=blog, stderr=subprocess.STDOUT)
        wait_for(lambda: len(list(old_box.glob("*"))) > 0, 20, "the board's old outbox")
        _sleep(3)
        stop_process(p)
    board_queued = _queued_copy(old_box, tmp_path / "peek-board", "board-old")
    host_queued = _queued_copy(host_box, tmp_path / "peek-host", "host-1")
    assert len(board_queued) >= 3 and len(host_queued) >= 3
    manifest = {"version": 1, "files": {f"/edgekit/outbox/{f.name}": ["0" * 64, f.stat().st_size]
                                        for f in old_box.iterdir()}}
    (flash / ".edgekit-manifest.json").write_text(json.dumps(manifest))

    # 3. Deploy (real mpremote to the simulated board), now pointing at the live gateway.
    _set_port(bundle, broker.port)
    hub = Hub(broker.port, pki[0].root_cert)
    hub.start()
    sim = SimBoard(flash).start()
    try:
        out = subprocess.run([sys.executable, "-m", "edgekit", "deploy", "sim", "--device", DEVICE,
                              "--port", sim.url, "--bundles", str(home / "bundles")],
                             cwd=ROOT, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "/edgekit/outbox" not in out.stdout and "/data" not in out.stdout
        wait_for(lambda: len(_tagged(hub, "board-old")) >= len(board_queued), 60,
                 "the board's queued readings at the hub")
        console = sim.log_path.read_text(errors="replace")
        assert "outbox moved from /edgekit/outbox to /data/outbox" in console
        assert not (flash / "edgekit" / "outbox").exists()
        # The sim board has the outbox partition, as a flashed board: the files the old firmware
        # queued go into it at this first boot (partlog_recover.adopt), then the files go.
        assert f"{len(board_queued)} reading(s) moved from the old outbox /data/outbox to the partition" in console
    finally:
        sim.stop()
    # /data is LittleFS on the sim's NOR chip (host_tools/edgekit/sim/board/_simflash.py), not a folder.
    assert "outbox" not in [name for name, *_ in sim_data.listdir(sim.data_image, "/")]
    # The board sent its own readings, once each, and none of the PC's.
    assert sorted(_tagged(hub, "board-old")) == sorted(board_queued)
    assert _tagged(hub, "host-1") == []
    assert _tree_bytes(host_box) == host_before

    # 4. The PC, back with the gateway up, sends its queued readings from where they were queued.
    proc, log = _run_host(home, "host-2", "host-2.log")
    try:
        wait_for(lambda: len(_tagged(hub, "host-1")) >= len(host_queued), 30, "the PC's queued readings")
        _sleep(1)
    finally:
        stop_process(proc, log)
        hub.stop()
    assert sorted(_tagged(hub, "host-1")) == sorted(host_queued)
    assert sorted(_tagged(hub, "board-old")) == sorted(board_queued)


def _tagged(hub, tag):
    return [r["seq"] for r in readings_of(hub, DEVICE) if r.get("run") == tag]


def _sleep(seconds):
    import time
    time.sleep(seconds)


def _queued_copy(folder, scratch, tag):
    """seq of each reading queued in folder by run tag, read from a copy (the original untouched)."""
    scratch.mkdir()
    for f in Path(folder).iterdir():
        (scratch / f.name).write_bytes(f.read_bytes())
    seqs = _queued(scratch, tag)
    assert None not in seqs, "a queued record of another run"
    return seqs


def test_migrate_moves_once_and_never_deletes(tmp_path):
    said = []
    old, new = tmp_path / "edgekit" / "outbox", tmp_path / "data" / "outbox"
    old.mkdir(parents=True)
    (old / "00000000.seg").write_bytes(b"queued")
    state.migrate(str(old), str(new), said.append)
    assert not old.exists() and (new / "00000000.seg").read_bytes() == b"queued"
    assert said == [f"outbox moved from {old} to {new}"]
    old.mkdir()
    (old / "00000001.seg").write_bytes(b"older")
    state.migrate(str(old), str(new), said.append)  # both there: neither is touched
    assert (old / "00000001.seg").read_bytes() == b"older" and (new / "00000000.seg").exists()
    assert "left in place" in said[-1]
    state.migrate(str(tmp_path / "none"), str(new), said.append)  # nothing to move: silent
    assert len(said) == 2
