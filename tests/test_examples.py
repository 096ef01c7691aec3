"""Every firmware/examples/ entry file, run as the board's entry file under CPython and the real
MicroPython against the gateway emulator, driven from the hub side (methods, twin, C2D)."""
import pytest

from conftest import FIRMWARE
from device_helpers import DEVICE_HEAP, Device, build_board, readings_of, wait_for, write_bundle
from gateway_helpers import gateway  # noqa: F401  (a fixture)
from test_circuitpython import lab as cp_lab  # noqa: F401  (a fixture: mosquitto, paho hub, NTP)

from edgekit.gateway import hub

RUNTIMES = ["cpython", "micropython"]
EXAMPLES = FIRMWARE / "examples"


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    return build_board(tmp_path_factory.mktemp("board"))


def run_example(gw, tmp_path, board, runtime, name, **config):
    """The example running as device '<name>-<runtime>', connected; (device, its id)."""
    dev_id = f"{name.replace('_', '-')}-{runtime}"
    cs = gw.add_device(dev_id, gateway_host="localhost")
    folder = write_bundle(tmp_path, gw.pki, gw.port, device=dev_id, connection_string=cs, **config)
    dev = Device(runtime, folder, board, heap=DEVICE_HEAP, main=EXAMPLES / f"{name}.py")
    try:
        dev.wait_log(r"connected to localhost:\d+ as " + dev_id, timeout=20)
    except AssertionError:
        dev.stop()
        raise AssertionError(dev.console()[-2000:]) from None
    return dev, dev_id


def at_least(n, items):
    return items if len(items) >= n else None


def healthy(dev):
    text = dev.console()
    assert dev.alive() and "Traceback" not in text and "failed" not in text, text[-2000:]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_sensor_batch(runtime, gateway, tmp_path, board):  # noqa: F811
    dev, dev_id = run_example(gateway, tmp_path, board, runtime, "sensor_batch", interval=0.2)
    try:
        found = wait_for(lambda: at_least(2, readings_of(gateway, dev_id, props=True)), 20, "two batches")
        for props, body in found:
            assert props["batch"] == "5" and len(body["readings"]) == 5
        seqs = [r["seq"] for _p, b in found for r in b["readings"]]
        assert seqs == list(range(1, len(seqs) + 1))  # unpacked in order, none lost
        assert all(r["age"] >= 0 and 21 <= r["celsius"] < 22 for _p, b in found for r in b["readings"])
        healthy(dev)
    finally:
        dev.stop()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_relay(runtime, gateway, tmp_path, board):  # noqa: F811
    dev, dev_id = run_example(gateway, tmp_path, board, runtime, "relay")
    try:
        wait_for(lambda: hub.get_twin(gateway.data, dev_id)["reported"].get("relay") is False, 15,
                 "relay state reported after connecting")
        assert hub.invoke_method(gateway.data, dev_id, "relay", {"on": True}, timeout=10) == \
            (200, {"relay": True})
        wait_for(lambda: hub.get_twin(gateway.data, dev_id)["reported"].get("relay") is True, 15,
                 "relay on in the twin")
        status, answer = hub.invoke_method(gateway.data, dev_id, "relay", {"on": "yes"}, timeout=10)
        assert status == 400 and "on" in answer["error"]
        # The built-in methods and reported properties are still there.
        assert hub.invoke_method(gateway.data, dev_id, "ping", {}, timeout=10)[0] == 200
        assert hub.get_twin(gateway.data, dev_id)["reported"]["firmware"].startswith("0.1.0+")
        healthy(dev)
    finally:
        dev.stop()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_threshold(runtime, gateway, tmp_path, board):  # noqa: F811
    dev, dev_id = run_example(gateway, tmp_path, board, runtime, "threshold", interval=0.1)
    try:
        assert readings_of(gateway, dev_id) == []  # no threshold yet: no alarm
        hub.update_twin(gateway.data, dev_id, {"threshold": 26.5})
        wait_for(lambda: hub.get_twin(gateway.data, dev_id)["reported"].get("threshold") == 26.5, 15,
                 "threshold confirmed in the twin")
        props, alarm = wait_for(lambda: readings_of(gateway, dev_id, props=True), 15, "an alarm")[0]
        assert props["alarm"] == "high"
        assert alarm["alarm"] == "high" and alarm["threshold"] == 26.5 and alarm["celsius"] > 26.5
        healthy(dev)
    finally:
        dev.stop()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_c2d_command(runtime, gateway, tmp_path, board):  # noqa: F811
    dev, dev_id = run_example(gateway, tmp_path, board, runtime, "c2d_command")
    try:
        sent = hub.send_c2d(gateway.data, dev_id, '{"command": "blink", "times": 2}')
        dev.wait_log(r"\[app\] blink x2")
        hub.send_c2d(gateway.data, dev_id, "", properties={"command": "dance"})
        acks = wait_for(lambda: at_least(2, readings_of(gateway, dev_id, props=True)), 15, "two acks")
        (p1, a1), (_p2, a2) = acks[:2]
        assert a1 == {"ack": "blink", "done": True} and a2 == {"ack": "dance", "done": False}
        assert p1.get("$.cid") in (None, sent["mid"])
        dev.wait_log(r"C2D message, 32 bytes")  # info level: a line per message received
        healthy(dev)
    finally:
        dev.stop()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_async_app(runtime, gateway, tmp_path, board):  # noqa: F811
    dev, dev_id = run_example(gateway, tmp_path, board, runtime, "async_app")
    try:
        found = wait_for(lambda: at_least(3, readings_of(gateway, dev_id)), 20, "three messages")
        frames = [m["frames"] for m in found]
        # The display task ran between every two messages: it got turns while the link was served.
        assert all(a < b for a, b in zip(frames, frames[1:])), frames
        assert hub.invoke_method(gateway.data, dev_id, "ping", {}, timeout=10)[0] == 200
        healthy(dev)
    finally:
        dev.stop()


def test_deploy_main_ships_an_example_with_its_build_id(tmp_path):
    from edgekit.deploy.plan import DeployError, plan_sources

    write_bundle_dir = tmp_path / "bundles" / "dev-m"
    write_bundle_dir.mkdir(parents=True)
    (write_bundle_dir / "config.json").write_text("{}")
    build = tmp_path / "build"

    def plan(runtime, main):
        srcs = plan_sources(runtime, "dev-m", FIRMWARE, tmp_path / "bundles", main=main, build_dir=build)
        return {s.board_path: s for s in srcs}

    mp = plan("micropython", EXAMPLES / "relay.py")
    assert mp["/main.py"].path == EXAMPLES / "relay.py"
    ids = {}
    for main in (None, EXAMPLES / "relay.py"):
        text = plan("micropython", main)["/lib/azure_edge/build.py"].path.read_text()
        ids[main] = text.split('"')[1]
    assert all(len(i) == 12 for i in ids.values()) and len(set(ids.values())) == 2  # another build
    assert plan("micropython", None)["/lib/azure_edge/build.py"].path.read_text().split('"')[1] == ids[None]
    cp = plan("circuitpython", EXAMPLES / "async_app.py")
    assert cp["/code.py"].path == EXAMPLES / "async_app.py" and "/main.py" not in cp
    with pytest.raises(DeployError, match="no such file"):
        plan("micropython", tmp_path / "nope.py")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_firmware_reports_the_build_id(runtime, tmp_path, board):
    import shutil
    import subprocess
    import sys

    from conftest import tool

    lib = tmp_path / "lib"
    shutil.copytree(board / "lib" if runtime == "micropython" else FIRMWARE, lib,
                    ignore=shutil.ignore_patterns("examples", "__pycache__"))
    code = "from azure_edge import startup; print(startup.build_id())"
    argv = [tool("micropython"), "-c", code] if runtime == "micropython" else [sys.executable, "-c", code]
    env = {"MICROPYPATH": f".frozen:{lib}", "PYTHONPATH": str(lib), "PATH": "/usr/bin:/bin"}
    run = lambda: subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30).stdout.strip()  # noqa: E731
    assert run() == "0.1.0+src"  # from a checkout: no deploy, no hash
    (lib / "azure_edge" / "build.py").write_text('BUILD = "0123456789ab"\n')
    assert run() == "0.1.0+0123456789ab"


def test_deploy_main_missing_file_is_one_line(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    bundle = tmp_path / "bundles" / "dev-m"
    bundle.mkdir(parents=True)
    (bundle / "config.json").write_text("{}")
    done = subprocess.run([sys.executable, "-m", "edgekit", "deploy", "esp32-devkitc", "--device", "dev-m",
                           "--port", "/dev/null", "--bundles", str(tmp_path / "bundles"),
                           "--main", str(tmp_path / "nope.py")],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1 and "nope.py: no such file" in lines[0], done.stderr


def test_example_as_circuitpython_code_py(tmp_path, cp_lab):  # noqa: F811
    # The third runtime: the example shipped as code.py (deploy --main), run as CircuitPython
    # runs it under the stand-ins of test_circuitpython (Wi-Fi radio, RTC, chip only). Not the
    # asyncio one: CPython's asyncio needs the socket module, which the stand-ins take away as
    # CircuitPython has none, and CircuitPython's own asyncio library is not here.
    name = "relay"
    import shutil

    from test_circuitpython import SSID, PASSWORD, Board
    from edgekit.deploy import plan

    device = "cp-" + name.replace("_", "-")
    write_bundle(tmp_path, cp_lab.pki, cp_lab.broker.port, device=device, runtime="circuitpython",
                 wifi_ssid=SSID, wifi_password=PASSWORD, ntp_host="localhost")
    drive = tmp_path / "CIRCUITPY"
    for src in plan.plan_sources("circuitpython", device, FIRMWARE, tmp_path / "bundles",
                                 main=EXAMPLES / f"{name}.py", build_dir=tmp_path / "build"):
        dest = drive / src.board_path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src.path, dest)
    board = Board(drive, cp_lab)
    try:
        board.wait_log(r"connected to localhost:%d as %s" % (cp_lab.broker.port, device), timeout=20)
        assert cp_lab.hub.call("relay", {"on": True}, rid="cp-relay-1") == (200, {"relay": True})
        wait_for(lambda: any(r.get("relay") is True for r in cp_lab.hub.reported), 10, "relay reported")
        assert "Traceback" not in board.console()
    finally:
        board.stop()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_every_example_runs_an_installed_update_first(runtime, tmp_path):
    """An example deployed as main.py (deploy --main) starts as firmware/main.py does: when the
    update agent installed an application (DATA/boot.json and a complete slot), that runs."""
    import subprocess

    from conftest import INTERPRETERS
    bundle = tmp_path / "bundles" / "b"  # its data folder: tmp/.edgekit/data/b (azure_edge.state)
    bundle.mkdir(parents=True)
    slot = tmp_path / ".edgekit" / "data" / "b" / "slots" / "a"
    (slot / "lib").mkdir(parents=True)
    (slot / "main.py").write_text("import sys\nprint('the updated application ran')\nsys.exit(0)\n")
    (slot / ".id").write_text('{"provider": "p", "name": "n", "version": "2.0"}')
    (slot.parent.parent / "boot.json").write_text('{"run": "a", "try": "", "n": 0}')
    env = {"EDGEKIT_BUNDLE": str(bundle), "PYTHONPATH": str(FIRMWARE), "MICROPYPATH": str(FIRMWARE),
           "PATH": "/usr/bin:/bin"}
    for example in sorted(EXAMPLES.glob("*.py")) + [FIRMWARE / "main.py"]:
        p = subprocess.run(INTERPRETERS[runtime]() + [str(example)], capture_output=True, text=True,
                           timeout=30, cwd=tmp_path, env=env)
        assert "the updated application ran" in p.stdout and p.returncode == 0, \
            f"{example.name}: {p.stdout}{p.stderr}"


def _cp_drive(tmp_path):
    """A CIRCUITPY-like drive with the firmware in lib/ and an (empty) bundle folder: its data
    folder is the drive's data/ (azure_edge.state.data_dir), as /data beside /edgekit on a board."""
    import shutil
    drive = tmp_path / "CIRCUITPY"
    shutil.copytree(FIRMWARE / "azure_edge", drive / "lib" / "azure_edge")
    (drive / "edgekit").mkdir()
    return drive


def _cp_run(drive, timeout=20):
    """code.py run as CircuitPython runs it, under tests/circuitpython_standins."""
    import os
    import subprocess
    import sys

    from test_circuitpython import STANDINS
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEKIT_", "PYTHON"))}
    env.update(PYTHONPATH=f"{STANDINS}{os.pathsep}{drive / 'lib'}", PYTHONDONTWRITEBYTECODE="1")
    try:
        return subprocess.run([sys.executable, "code.py"], capture_output=True, text=True,
                              timeout=timeout, cwd=drive, env=env)
    except subprocess.TimeoutExpired as e:  # e.g. the factory application waiting for a bundle
        raise AssertionError(f"code.py still running after {timeout} s: {e.stdout}{e.stderr}") from None


def _slot(drive, name, main_py):
    slot = drive / "data" / "slots" / name
    (slot / "lib").mkdir(parents=True)
    (slot / "main.py").write_text(main_py)
    (slot / ".id").write_text('{"provider": "p", "name": "n", "version": "%s"}' % name)


def test_every_circuitpython_entry_runs_an_installed_update_first(tmp_path):
    """firmware/code.py, and each example deployed as code.py (deploy --main), starts with
    start.boot() on CircuitPython too: an installed update (DATA/boot.json, a complete slot) runs."""
    import json
    drive = _cp_drive(tmp_path)
    _slot(drive, "a", "import sys\nprint('the updated application ran')\nsys.exit(0)\n")
    (drive / "data" / "boot.json").write_text(json.dumps({"run": "a", "try": "", "n": 0}))
    for entry in [FIRMWARE / "code.py"] + sorted(EXAMPLES.glob("*.py")):
        (drive / "code.py").write_text(entry.read_text())
        p = _cp_run(drive)
        assert "the updated application ran" in p.stdout and p.returncode == 0, \
            f"{entry.name}: {p.stdout}{p.stderr}"


def test_code_py_resets_on_a_crashed_trial_and_the_next_boot_rolls_it_back(tmp_path):
    """A trial update that crashes (not an import error) under code.py: the board resets (never
    "Code done running", where no next boot would come), and once it has booted k times without
    being kept, the next boot runs the good application again."""
    import json
    drive = _cp_drive(tmp_path)
    (drive / "code.py").write_text((FIRMWARE / "code.py").read_text())
    _slot(drive, "a", "import sys\nprint('the good application ran')\nsys.exit(0)\n")
    _slot(drive, "b", "raise RuntimeError('boom')\n")
    (drive / "data" / "boot.json").write_text(json.dumps({"run": "a", "try": "b", "n": 0, "k": 1}))
    p = _cp_run(drive)
    out = p.stdout + p.stderr
    assert "RuntimeError: boom" in out and "crashed; resetting in 10 s" in out, out
    assert p.returncode == 3 and "[stand-in microcontroller] reset" in out, out  # microcontroller.reset()
    assert json.loads((drive / "data" / "boot.json").read_text())["n"] == 1
    p = _cp_run(drive)
    assert "rolled back slot b (crash)" in p.stdout and "the good application ran" in p.stdout, p.stdout + p.stderr
    boot = json.loads((drive / "data" / "boot.json").read_text())
    assert boot["try"] == "" and boot["run"] == "a" and boot["why"] == "crash"
