"""edgekit deploy end to end: real mpy-cross, real mpremote, the simulated board."""
import json
import ssl
import subprocess
import sys

import pytest

from conftest import FIRMWARE, ROOT, tool, wait_log
from edgekit.boards import load_board
from edgekit.deploy import MANIFEST, DeployError, deploy
from edgekit.deploy.compile import check_board_mpy, mpy_cross_version
from edgekit.deploy.package import package_json, render
from edgekit.sim import SimBoard

MAIN = """import json
import adafruit_minimqtt
from azure_edge import greeting
cfg = json.load(open("/edgekit/config.json"))
print("DEPLOYED-MAIN", greeting.TEXT, cfg["connection_string"].split("DeviceId=")[1].split(";")[0],
      adafruit_minimqtt.__name__ == "adafruit_minimqtt")
"""
CONNSTR = "HostName=hub.azure-devices.net;DeviceId=dev-7;SharedAccessKey=c2VjcmV0;GatewayHostName=gw.local"


def make_firmware(root, runtime="micropython"):
    """A small firmware tree written by the test (not the lead's firmware/)."""
    fw = root / "firmware"
    (fw / "azure_edge").mkdir(parents=True)
    (fw / "azure_edge" / "__init__.py").write_text("")
    (fw / "azure_edge" / "greeting.py").write_text("TEXT = 'hello-1'\n")
    (fw / "azure_edge" / "extra.py").write_text("def twice(x):\n    return 2 * x\n")
    (fw / "lib").mkdir()
    (fw / "lib" / "shim.py").write_text("SHIM = True\n")
    (fw / ("main.py" if runtime == "micropython" else "code.py")).write_text(MAIN)
    return fw


def make_bundle(root, runtime="micropython", connection_string=CONNSTR, ca=None):
    """A bundle in the runtime's CA format (DER for MicroPython, PEM for CircuitPython), or ca's."""
    bundle = root / "bundles" / "dev-7"
    bundle.mkdir(parents=True)
    ca = ca or ("ca.pem" if runtime == "circuitpython" else "ca.der")
    (bundle / "config.json").write_text(json.dumps({"connection_string": connection_string, "ca": ca}))
    der = bytes(range(256)) * 4
    (bundle / ca).write_bytes(ssl.DER_cert_to_PEM_cert(der).encode() if ca.endswith(".pem") else der)
    if runtime == "circuitpython":
        (bundle / "settings.toml").write_text('CIRCUITPY_WIFI_SSID = "net"\n')
    return root / "bundles"


@pytest.fixture
def sim(tmp_path):
    board = SimBoard(tmp_path / "sim" / "flash", heap="192K").start()
    yield board
    board.stop()


def test_deploy_to_sim_end_to_end(tmp_path, sim):
    fw, bundles, build = make_firmware(tmp_path), make_bundle(tmp_path), tmp_path / "build"
    board = load_board("sim")
    messages = []

    def run(**kw):
        return deploy(board, "dev-7", port=sim.url, firmware_dir=fw, bundles_dir=bundles,
                      build_dir=build, progress=messages.append, **kw)

    first = run()
    expected = {"/main.py", "/lib/azure_edge/__init__.mpy", "/lib/azure_edge/greeting.mpy",
                "/lib/azure_edge/extra.mpy", "/lib/shim.mpy", "/lib/adafruit_minimqtt/__init__.mpy",
                "/lib/adafruit_minimqtt/adafruit_minimqtt.mpy", "/edgekit/config.json", "/edgekit/ca.der",
                "/lib/azure_edge/build.mpy"}  # the build id (plan.build_source)
    assert set(first.copied) == expected
    flash = sim.flash
    for path in expected:
        local = (build / "bytecode" / path.lstrip("/")) if path.endswith(".mpy") else None
        on_board = (flash / path.lstrip("/")).read_bytes()
        assert on_board == (local.read_bytes() if local else on_board)
    assert (flash / "edgekit" / "ca.der").read_bytes() == (bundles / "dev-7" / "ca.der").read_bytes()
    assert first.payload_bytes == sum((flash / p.lstrip("/")).stat().st_size for p in expected)
    assert first.wire_bytes > first.payload_bytes
    manifest = json.loads((flash / MANIFEST.lstrip("/")).read_text())["files"]
    assert set(manifest) == expected
    assert not list(flash.rglob("*.part"))
    # After the soft reset main.py runs from the deployed files.
    wait_log(sim, "DEPLOYED-MAIN hello-1 dev-7 True")

    again = run()
    assert again.copied == [] and again.payload_bytes == 0
    # Nothing changed: only the manifest check crosses the wire.
    assert again.wire_bytes < 1024 and again.wire_bytes < 0.05 * first.wire_bytes, \
        (again.wire_bytes, first.wire_bytes)
    wait_log(sim, "DEPLOYED-MAIN hello-1", 2)

    (fw / "azure_edge" / "greeting.py").write_text("TEXT = 'hello-2'\n")
    changed = run()
    # A new build: the changed module and the build id naming it.
    assert changed.copied == ["/lib/azure_edge/greeting.mpy", "/lib/azure_edge/build.mpy"]
    assert changed.payload_bytes == sum((flash / "lib" / "azure_edge" / f).stat().st_size
                                        for f in ("greeting.mpy", "build.mpy"))
    # Beyond the manifest check every deploy makes, it costs a tenth of the first at most.
    assert changed.wire_bytes - again.wire_bytes < 0.1 * first.wire_bytes, \
        (changed.wire_bytes, again.wire_bytes, first.wire_bytes)
    wait_log(sim, "DEPLOYED-MAIN hello-2 dev-7 True")

    # A module dropped from the firmware is removed from the board and the manifest.
    (fw / "azure_edge" / "extra.py").unlink()
    dropped = run()
    assert dropped.copied == ["/lib/azure_edge/build.mpy"] and dropped.removed == ["/lib/azure_edge/extra.mpy"]
    assert not (flash / "lib" / "azure_edge" / "extra.mpy").exists()
    assert "/lib/azure_edge/extra.mpy" not in json.loads((flash / MANIFEST.lstrip("/")).read_text())["files"]

    # A file changed on the board behind deploy's back: a new size is caught from the
    # manifest; a same-size change needs --verify (hashing on the board).
    (flash / "lib" / "shim.mpy").write_bytes(b"garbage")
    assert run().copied == ["/lib/shim.mpy"]
    cfg = flash / "edgekit" / "config.json"
    cfg.write_bytes(cfg.read_bytes().replace(b"dev-7", b"dev-8"))
    assert run().copied == []
    assert run(verify=True).copied == ["/edgekit/config.json"]
    assert b"dev-7" in cfg.read_bytes()
    assert any("up to date" in m for m in messages)


def test_files_already_on_the_board_are_not_resent(tmp_path, sim):
    # No manifest yet (a board filled by hand): deploy hashes on the board instead.
    fw, bundles = make_firmware(tmp_path), make_bundle(tmp_path)
    board = load_board("sim")
    (sim.flash / "edgekit").mkdir(parents=True)
    (sim.flash / "edgekit" / "ca.der").write_bytes((bundles / "dev-7" / "ca.der").read_bytes())
    result = deploy(board, "dev-7", port=sim.url, firmware_dir=fw, bundles_dir=bundles,
                    build_dir=tmp_path / "build", reset=False)
    assert "/edgekit/ca.der" not in result.copied and "/edgekit/config.json" in result.copied


def test_cli_deploys_to_the_background_sim(tmp_path):
    fw, bundles = make_firmware(tmp_path), make_bundle(tmp_path)
    state = tmp_path / "state"
    cmd = [sys.executable, "-m", "edgekit", "deploy", "sim", "--device", "dev-7", "--firmware", str(fw),
           "--bundles", str(bundles), "--state-dir", str(state)]
    try:
        done = subprocess.run(cmd + ["--monitor", "--monitor-seconds", "3"], capture_output=True, text=True,
                              cwd=ROOT, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "10 to copy" in done.stdout and "soft reset" in done.stdout, done.stdout
        assert "DEPLOYED-MAIN hello-1 dev-7 True" in done.stdout  # --monitor tails the console
        again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert "10 of 10 file(s) up to date" in again.stdout, again.stdout + again.stderr
        assert "sent 0 bytes of files" in again.stdout
    finally:
        subprocess.run([sys.executable, "-m", "edgekit", "sim", "stop", "--state-dir", str(state)],
                       cwd=ROOT, timeout=30)
    assert not (state / "state.json").exists()


def test_cli_errors_are_one_line(tmp_path):
    fw, bundles = make_firmware(tmp_path), make_bundle(tmp_path)
    cases = [
        (["sim", "--device", "nobody", "--port", "socket://127.0.0.1:1"], "no bundle for device 'nobody'"),
        (["no-such-board", "--device", "dev-7"], "unknown board 'no-such-board'"),
        (["sim", "--device", "dev-7", "--port", "socket://127.0.0.1:1"], "cannot open socket://127.0.0.1:1"),
        (["esp32-devkitc", "--device", "dev-7", "--drive", str(tmp_path)], "--drive is for CircuitPython"),
    ]
    for args, message in cases:
        done = subprocess.run([sys.executable, "-m", "edgekit", "deploy", *args, "--firmware", str(fw),
                               "--bundles", str(bundles)], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert done.returncode == 1
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr


def test_missing_entry_point_is_refused(tmp_path):
    fw, bundles = make_firmware(tmp_path), make_bundle(tmp_path)
    (fw / "main.py").unlink()
    with pytest.raises(DeployError, match="main.py is missing"):
        deploy(load_board("sim"), "dev-7", port="socket://127.0.0.1:1", firmware_dir=fw, bundles_dir=bundles,
               build_dir=tmp_path / "build")


def test_wrong_arch_board_is_refused(tmp_path, sim):
    # esp32-devkitc wants xtensawin code; the sim reports x64: deploy must not guess.
    fw, bundles = make_firmware(tmp_path), make_bundle(tmp_path)
    with pytest.raises(DeployError, match="reports native arch x64.*says xtensawin"):
        deploy(load_board("esp32-devkitc"), "dev-7", port=sim.url, firmware_dir=fw, bundles_dir=bundles,
               build_dir=tmp_path / "build")
    assert not (sim.flash / "lib").exists()


def test_mpy_version_rules(tmp_path):
    from edgekit.deploy.compile import Payload
    from edgekit.mpy import compile_file

    writer = mpy_cross_version()
    assert writer[:2] == (6, 3)
    plain = tmp_path / "plain.py"
    plain.write_text("X = 1\n")
    native = tmp_path / "fast.py"
    native.write_text("import micropython\n@micropython.native\ndef f(x):\n    return x + 1\n")
    p_plain = compile_file(plain, tmp_path / "plain.mpy", arch="xtensawin")
    p_native = compile_file(native, tmp_path / "fast.mpy", arch="xtensawin")
    bytecode = [Payload("/lib/plain.mpy", p_plain, "", 0, plain)]
    both = bytecode + [Payload("/lib/fast.mpy", p_native, "", 0, native)]
    v6_3_xtensawin = 6 | (3 << 8) | (10 << 10)   # MicroPython 1.23+ on an ESP32
    v6_2_xtensawin = 6 | (2 << 8) | (10 << 10)   # MicroPython 1.22
    v5 = 5 | (10 << 10)                          # MicroPython 1.18
    assert check_board_mpy(v6_3_xtensawin, "xtensawin", both, writer) == (6, 3, "xtensawin")
    check_board_mpy(v6_2_xtensawin, "xtensawin", bytecode, writer)  # bytecode-only loads on any v6
    with pytest.raises(DeployError, match="fast.mpy holds xtensawin native code.*1.23 or newer"):
        check_board_mpy(v6_2_xtensawin, "xtensawin", both, writer)
    with pytest.raises(DeployError, match=r"loads \.mpy v5.*1\.23 or newer"):
        check_board_mpy(v5, "xtensawin", bytecode, writer)
    with pytest.raises(DeployError, match="cannot load .mpy"):
        check_board_mpy(None, "xtensawin", bytecode, writer)


def test_circuitpython_through_the_drive(tmp_path):
    fw, bundles = make_firmware(tmp_path, "circuitpython"), make_bundle(tmp_path, "circuitpython")
    drive = tmp_path / "CIRCUITPY"
    drive.mkdir()
    board = load_board("lolin-s2-mini")
    first = deploy(board, "dev-7", drive=drive, firmware_dir=fw, bundles_dir=bundles)
    files = {p.relative_to(drive).as_posix() for p in drive.rglob("*") if p.is_file()}
    assert files == {"code.py", "settings.toml", "edgekit/config.json", "edgekit/ca.pem",
                     "lib/azure_edge/__init__.py", "lib/azure_edge/greeting.py", "lib/azure_edge/extra.py",
                     "lib/azure_edge/build.py",
                     "lib/shim.py", "lib/adafruit_minimqtt/__init__.py",
                     "lib/adafruit_minimqtt/adafruit_minimqtt.py", "lib/adafruit_minimqtt/matcher.py",
                     "lib/adafruit_connection_manager.py", "lib/adafruit_ticks.py", ".edgekit-manifest.json",
                     "lib/adafruit_hashlib/__init__.py", "lib/adafruit_hashlib/_md5.py",
                     "lib/adafruit_hashlib/_sha1.py", "lib/adafruit_hashlib/_sha256.py",
                     "lib/adafruit_hashlib/_sha512.py"}
    assert (drive / "lib" / "azure_edge" / "greeting.py").read_text() == "TEXT = 'hello-1'\n"
    assert first.payload_bytes == sum((drive / p).stat().st_size for p in files if p != ".edgekit-manifest.json")
    assert deploy(board, "dev-7", drive=drive, firmware_dir=fw, bundles_dir=bundles).copied == []
    (fw / "azure_edge" / "greeting.py").write_text("TEXT = 'hello-2'\n")
    assert deploy(board, "dev-7", drive=drive, firmware_dir=fw, bundles_dir=bundles).copied == [
        "/lib/azure_edge/greeting.py", "/lib/azure_edge/build.py"]


def test_package_json_is_current():
    committed = (FIRMWARE / "package.json").read_text()
    assert committed == render(package_json(FIRMWARE)), (
        "firmware/package.json is stale: run '.venv/bin/python -m edgekit.deploy.package'")


def test_mip_installs_the_package_onto_the_sim(tmp_path, sim):
    # The MQTT files come from GitHub, which tests cannot reach: install the repository's part.
    fw = make_firmware(tmp_path)
    (fw / "package.json").write_text(render(package_json(fw, include_mqtt=False)))
    done = subprocess.run([tool("mpremote"), "connect", sim.url, "mip", "install", "--target", "/lib",
                           str(fw / "package.json")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for rel in ("azure_edge/__init__.py", "azure_edge/greeting.py", "shim.py"):
        assert (sim.flash / "lib" / rel).read_bytes() == (
            fw / ("lib/" + rel if rel == "shim.py" else rel)).read_bytes()


def test_romfs_needs_a_board_with_a_romfs_partition(tmp_path, sim):
    # The sim's MicroPython (the unix port) has no ROMFS partition: a clear refusal, nothing written.
    fw, bundles = make_firmware(tmp_path), make_bundle(tmp_path)
    with pytest.raises(DeployError, match="no ROMFS partition.*deploy without --romfs"):
        deploy(load_board("sim"), "dev-7", port=sim.url, firmware_dir=fw, bundles_dir=bundles,
               build_dir=tmp_path / "build", romfs=True)
    assert not (sim.flash / "lib").exists()
    with pytest.raises(DeployError, match="--romfs is for MicroPython boards"):
        deploy(load_board("lolin-s2-mini"), "dev-7", drive=tmp_path, firmware_dir=fw,
               bundles_dir=bundles, romfs=True)


def test_romfs_image_runs_the_firmware_in_place(tmp_path):
    # The image deploy --romfs writes, mounted as a board mounts its partition: the real
    # firmware and MiniMQTT import from it and work.
    from edgekit.deploy.compile import build
    from edgekit.deploy.plan import plan_sources
    from edgekit.deploy.romfs import image_from_payloads

    bundles = make_bundle(tmp_path)
    payloads, _ = build(plan_sources("micropython", "dev-7", FIRMWARE, bundles), "micropython",
                        build_dir=tmp_path / "build")
    image = tmp_path / "lib.romfs"
    image.write_bytes(image_from_payloads([p for p in payloads if p.board_path.startswith("/lib/")]))
    code = (f"import vfs,sys\nvfs.mount(vfs.VfsRom(open({str(image)!r},'rb').read()),'/rom')\n"
            "sys.path[:0]=['/rom/lib']\n"
            "from azure_edge import net,topics\nnet.install()\n"
            "from adafruit_minimqtt.adafruit_minimqtt import MQTT\n"
            "print(topics.client_id('dev-7','m1'), MQTT.__name__, topics.__file__)\n")
    done = subprocess.run([tool("micropython"), "-c", code], capture_output=True, text=True,
                          timeout=30, env={"MICROPYPATH": ".frozen"})
    assert done.stdout.split() == ["dev-7/m1", "MQTT", "/rom/lib/azure_edge/topics.mpy"], done.stderr


def test_plain_deploy_forgets_an_earlier_romfs_image(tmp_path, sim):
    # After a --romfs deploy, a plain one must not leave the image to shadow /lib: on a board
    # with a partition it is emptied; here (no partition) its manifest entry goes.
    fw, bundles = make_firmware(tmp_path), make_bundle(tmp_path)
    board = load_board("sim")
    deploy(board, "dev-7", port=sim.url, firmware_dir=fw, bundles_dir=bundles,
           build_dir=tmp_path / "build", reset=False)
    manifest = sim.flash / MANIFEST.lstrip("/")
    data = json.loads(manifest.read_text())
    data["files"]["romfs:0"] = ["0" * 64, 1234]
    manifest.write_text(json.dumps(data))
    deploy(board, "dev-7", port=sim.url, firmware_dir=fw, bundles_dir=bundles,
           build_dir=tmp_path / "build", reset=False)
    assert "romfs:0" not in json.loads(manifest.read_text())["files"]


@pytest.mark.parametrize("heard, words", [
    # What a 115200 console looks like read at 460800: framing junk, not text.
    (bytes([0x00, 0xF8, 0x80, 0xFE, 0x00, 0x78, 0xE0, 0x00]) * 8, "in garbage (64 bytes): the port's speed"),
    (b"ets Jun  8 2016 00:22:57\r\n\r\nrst:0x1 (POWERON_RESET),boot:0x3 (DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2))"
     b"\r\nwaiting for download\r\n", "sits in its ROM bootloader"),
    (b"\r\nMicroPython v1.26.1 on 2025-09-11; Generic ESP32 module with ESP32\r\n>>> busy\r\n", "it said: >>> busy"),
    (b"", "nothing answered"),
])
def test_a_silent_repl_is_explained_from_what_the_board_sent(heard, words):
    from edgekit.deploy.link import no_repl_reason

    reason = no_repl_reason("/dev/ttyUSB0", 460800, heard)
    assert reason.startswith("no MicroPython raw REPL at /dev/ttyUSB0 at 460800 baud")
    assert words in reason and "\n" not in reason


def test_a_ctrl_a_lost_while_the_board_starts_is_sent_again(sim):
    # A board still starting (just reset by DTR/RTS, or a fresh sim under load) can lose the
    # Ctrl-A that asks for the raw REPL, then show its friendly prompt. The link asks once more
    # instead of calling a flashed board unflashed (a CI run met it). The real board sits behind a
    # relay that drops the first Ctrl-A, as a UART that is not listening yet does.
    import socket
    import threading

    from edgekit.deploy.link import ReplLink

    host, port = sim.url.split("//")[1].split(":")
    relay = socket.socket()
    relay.bind(("127.0.0.1", 0))
    relay.listen(1)
    dropped = []

    def pipe(src, dst, drop_first_ctrl_a):
        try:
            while data := src.recv(4096):
                if drop_first_ctrl_a and not dropped and b"\x01" in data:
                    dropped.append(data)
                    data = data.replace(b"\x01", b"", 1)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            dst.close()

    def serve():
        client, _ = relay.accept()
        board = socket.create_connection((host, int(port)))
        threading.Thread(target=pipe, args=(board, client, False), daemon=True).start()
        pipe(client, board, True)

    threading.Thread(target=serve, daemon=True).start()
    link = ReplLink(f"socket://127.0.0.1:{relay.getsockname()[1]}")
    try:
        assert dropped, "the relay never saw a Ctrl-A"
        assert link.board_info()["name"] == "micropython"
    finally:
        link.close()
        relay.close()
