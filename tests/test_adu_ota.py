"""The firmware image handler edgekit/firmware:1 (azure_edge/adu_ota.py) and the simulated board's
OTA slots it writes (board/esp32.py, board/_simota.py, sim/otaboot.py).

The stand-in is held to ESP-IDF's semantics (components/app_update/esp_ota_ops.c,
bootloader_support): otadata entries as IDF lays them out (checked here with zlib's CRC and
struct, not the stand-in's code), set_boot's verification of an image esptool wrote, and the
bootloader's rollback of an image booted once and never marked valid. The agent runs under the
real unix MicroPython with that stand-in, downloading from a Connected Cache stand-in."""
import json
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from conftest import tool
from test_adu_agent import (Cache, SIGNER, agent_of, b64sha, cache, desired, lib, run, serve,  # noqa: F401
                            service, signer, _signed)

from edgekit.sim import otaboot, supervisor

BOARD = supervisor.BOARD_FILES
FW = "edgekit/firmware:1"


def esp_image(payload=b"MicroPython v9 (test image)", chip="ESP32", pad_to=0):
    """An app image for `chip` as esptool writes it (checksum and SHA-256 appended)."""
    from esptool import bin_image
    image = getattr(bin_image, f"{chip}FirmwareImage")()
    ImageSegment = bin_image.ImageSegment
    image.entrypoint = 0x40080000
    data = payload + b"\0" * (-len(payload) % 4)
    if pad_to > len(data):
        data += b"\xa5" * (pad_to - len(data))
    # Flash-mapped data, placed as esptool places it (the segment's data at a 64 KiB page + 0x20).
    image.segments = [ImageSegment(image.ROM_LOADER.DROM_MAP_START + 0x20, data)]
    return image.save(None)


class Board:
    """A board flashed with MicroPython's OTA variant, without the serial port: its partition
    files, the bootloader (otaboot.boot) and the interpreter's environment."""

    def __init__(self, folder, ota=True):
        folder.mkdir(parents=True, exist_ok=True)
        self.partitions = supervisor.partition_table(None, ota)
        self.images = {r[0]: folder / f"flash-{r[0]}.img" for r in self.partitions
                       if ota and r[0] in ("otadata", "ota_0", "ota_1")}
        self.outbox = folder / "flash-outbox.img"
        self.running = None
        if ota:
            otaboot.first_flash(self)
            self.reset()

    def reset(self):
        self.running = otaboot.boot(self)
        return self.running

    def env(self):
        return {supervisor.PARTITIONS_ENV: supervisor.partitions_env(self.partitions, self.outbox, self.images),
                "EDGEKIT_SIM_RUNNING": self.running or ""}

    def python(self, code):
        env = dict(os.environ, MICROPYPATH=str(BOARD), **self.env())
        p = subprocess.run([tool("micropython"), "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr
        return p.stdout

    def otadata(self):
        raw = self.images["otadata"].read_bytes()
        return [struct.unpack("<I20sII", raw[i * 4096:i * 4096 + 32]) for i in (0, 1)]

    def slot(self, label):
        return self.images[label].read_bytes()


def idf_entry(seq, state):
    # esp_ota_select_entry_t with its crc as bootloader_common_ota_select_crc computes it.
    return (seq, b"\xff" * 20, state, zlib.crc32(struct.pack("<I", seq), 0xFFFFFFFF))


WRITE = """
import esp32
P = esp32.Partition
img = open(%r, 'rb').read()
n = P(P.RUNNING).get_next_update()
for b in range(0, len(img), 4096):
    n.writeblocks(b // 4096, img[b:b + 4096])
try:
    n.set_boot()
    print('boot', P(P.BOOT).info()[4])
except OSError as e:
    print('refused', e.args[0])
"""


def test_the_stand_in_follows_esp_idf(tmp_path):
    board = Board(tmp_path)
    # esptool leaves otadata erased: no factory app in this table, so ota_0 runs
    assert board.running == "ota_0" and board.otadata() == [(0xFFFFFFFF, b"\xff" * 20, 0xFFFFFFFF, 0xFFFFFFFF)] * 2
    out = board.python("""
import esp32
P = esp32.Partition
r = P(P.RUNNING)
n = r.get_next_update()
print(r.info()[4], P(P.BOOT).info()[4], n.info()[4], n.get_next_update().info()[4], n.ioctl(4, 0), n.ioctl(5, 0))
try:
    P.mark_app_valid_cancel_rollback()
except OSError as e:
    print('mark', e.args[0])
try:
    n.set_boot()
except OSError as e:
    print('set_boot', e.args[0])
""").split("\n")
    # 0x180000 / 4096 blocks; mark on an esptool-flashed board: ESP_FAIL ("Running firmware is
    # factory"); set_boot of an erased slot: ESP_ERR_OTA_VALIDATE_FAILED, otadata untouched
    assert out[:3] == ["ota_0 ota_0 ota_1 ota_0 384 4096", "mark 1", "set_boot -5379"], out
    assert board.otadata()[0][0] == 0xFFFFFFFF

    # images set_boot refuses, as esp_image_verify does: another chip, a changed byte (the
    # checksum or the appended SHA-256 no longer match), a wrong magic
    good = esp_image()
    for bad in (esp_image(chip="ESP32S3"), good[:40] + bytes([good[40] ^ 1]) + good[41:], b"\xe8" + good[1:]):
        (tmp_path / "bad.bin").write_bytes(bad)
        assert board.python(WRITE % str(tmp_path / "bad.bin")).strip() == "refused -5379"
    assert board.reset() == "ota_0"

    # a good image: otadata's sector 0 gets seq 2 (slot (2 - 1) % 2 = ota_1), state NEW
    (tmp_path / "v9.bin").write_bytes(good)
    assert board.python(WRITE % str(tmp_path / "v9.bin")).strip() == "boot ota_1"
    assert board.slot("ota_1")[:len(good)] == good
    assert board.otadata()[0] == idf_entry(2, 0)
    # the reset boots it once, PENDING_VERIFY; not marked valid, the next reset rolls it back
    assert board.reset() == "ota_1" and board.otadata()[0] == idf_entry(2, 1)
    assert board.reset() == "ota_0" and board.otadata()[0] == idf_entry(2, 4)  # ABORTED
    assert board.reset() == "ota_0"

    # again, kept this time: VALID, and the next update goes to ota_0 with seq 3 in sector 1
    assert board.python(WRITE % str(tmp_path / "v9.bin")).strip() == "boot ota_1"
    assert board.reset() == "ota_1"
    board.python("import esp32\nesp32.Partition.mark_app_valid_cancel_rollback()")
    assert board.otadata()[0] == idf_entry(2, 2)
    assert board.reset() == "ota_1" and board.reset() == "ota_1"
    assert board.python(WRITE % str(tmp_path / "v9.bin")).strip() == "boot ota_0"
    assert board.otadata()[1] == idf_entry(3, 0)
    assert board.reset() == "ota_0" and board.reset() == "ota_1"  # rolled back to the kept ota_1


def test_a_board_without_ota_slots(tmp_path):
    board = Board(tmp_path, ota=False)
    out = board.python("""
import esp32
P = esp32.Partition
print(P(P.RUNNING).info()[4])
try:
    P(P.RUNNING).get_next_update()
except OSError as e:
    print('next', e.args[0])
try:
    P.mark_app_valid_cancel_rollback()
except OSError as e:
    print('mark', e.args[0])
""").split("\n")
    # ENOENT from esp_ota_get_next_update_partition's NULL; no otadata: ESP_ERR_NOT_FOUND
    assert out[:3] == ["factory", "next 2", "mark -261"], out


# --- the agent (azure_edge.adu_ota) under the real MicroPython, on the stand-in ---

@pytest.fixture
def mp_lib(lib):
    # The board's esp32 module beside the firmware, as the sim board has it in MICROPYPATH.
    for name in ("esp32.py", "_simota.py", "_simnor.py"):
        shutil.copy(BOARD / name, lib / name)
    return lib


def deploy(board, monkeypatch, mp_lib, data, cache, image, wid, version="9.0", size=None):
    files = [("firmware.bin", image)]
    svc = service(wid, files, version=version, handler=FW)
    if size is not None:  # a manifest that tells another size than the file's
        m = json.loads(svc["updateManifest"])
        m["files"]["f0"]["sizeInBytes"] = size
        from edgekit.gateway import adu
        svc["updateManifest"] = json.dumps(m)
        svc["updateManifestSignature"] = adu.sign_manifest(SIGNER["data"], svc["updateManifest"])
    serve(cache, svc, files)
    return on_board(board, monkeypatch, mp_lib, data, "twin", desired(svc), cache=cache)


def on_board(board, monkeypatch, mp_lib, data, cmd, arg=None, cache=None):
    for k, v in board.env().items():
        monkeypatch.setenv(k, v)
    return run("micropython", mp_lib, data, cmd, arg, cache=cache)


def test_firmware_update_switches_slots_and_is_kept_after_connect(tmp_path, mp_lib, cache, monkeypatch):
    board = Board(tmp_path / "board")
    data = tmp_path / "data"
    image = esp_image(b"MicroPython v9" * 5000)  # 70 KB: many blocks, erased as the write enters each
    cache.drop["/content/wf-fw/f0"] = 9000  # the link drops once: resumed, the slot read back and hashed
    out, log = deploy(board, monkeypatch, mp_lib, data, cache, image, "wf-fw")
    assert out["reboot"] and out["adu"]["phase"] == "trial" and out["adu"]["fw"] == "ota_1", log
    assert "firmware image written to ota_1" in log and "rebooting into ota_1 on trial" in log
    assert [r for _p, r in cache.requests][1].startswith("bytes=")
    assert board.slot("ota_1")[:len(image)] == image
    assert agent_of(out["reports"])[-1]["state"] == 6

    assert board.reset() == "ota_1"  # machine.reset(): the bootloader boots the new image once
    out, log = on_board(board, monkeypatch, mp_lib, data, "boot")  # connected and reported
    assert "firmware image connected and reported: kept" in log, log
    agent = agent_of(out["reports"])[-1]
    assert agent["state"] == 0 and agent["lastInstallResult"]["resultCode"] == 700
    assert json.loads(agent["installedUpdateId"])["version"] == "9.0"
    assert board.otadata()[0] == idf_entry(2, 2)  # VALID: kept
    assert board.reset() == "ota_1"


def test_firmware_that_never_connects_is_rolled_back(tmp_path, mp_lib, cache, monkeypatch):
    board = Board(tmp_path / "board")
    data = tmp_path / "data"
    out, log = deploy(board, monkeypatch, mp_lib, data, cache, esp_image(), "wf-nc")
    assert out["reboot"], log
    assert board.reset() == "ota_1"
    # on trial and not connected when its time is up: a reset, never marked valid
    out, log = on_board(board, monkeypatch, mp_lib, data, "boot", {"connected": False, "expire": True})
    assert out["reboot"] and "not connected in time" in log, log
    assert board.reset() == "ota_0"  # the bootloader rolls back
    out, log = on_board(board, monkeypatch, mp_lib, data, "boot")
    assert out["adu"]["state"] == 255 and out["adu"]["res"]["extendedResultCode"] == 0x7E000404, log
    assert "rolled back by the bootloader (ota_0 runs)" in log
    assert "fw" not in out["adu"] and board.reset() == "ota_0"


@pytest.mark.parametrize("case", ["too-large", "tampered", "not-an-image"])
def test_bad_images_are_refused_before_set_boot(tmp_path, mp_lib, cache, monkeypatch, case):
    board = Board(tmp_path / "board")
    data = tmp_path / "data"
    image = esp_image()
    size = None
    if case == "too-large":
        size = 0x180000 + 1  # one byte more than ota_1: refused before any download
    elif case == "tampered":
        pass
    else:
        image = b"\x00" + image[1:]  # the manifest's hash matches; the bootloader's check does not
    wid = "wf-" + case
    if case == "tampered":
        files = [("firmware.bin", image)]
        svc = service(wid, files, handler=FW)
        serve(cache, svc, files)
        path = f"/content/{wid}/f0"
        cache.files[path] = image[:-1] + bytes([image[-1] ^ 1])
        for k, v in board.env().items():
            monkeypatch.setenv(k, v)
        out, log = run("micropython", mp_lib, data, "twin", desired(svc), cache=cache)
    else:
        out, log = deploy(board, monkeypatch, mp_lib, data, cache, image, wid, size=size)
    agent = agent_of(out["reports"])[-1]
    res = agent["lastInstallResult"]
    assert agent["state"] == 255 and not out["reboot"], log
    want = {"too-large": (0x7E000402, "does not fit ota_1"),
            "tampered": (0x00100003, "firmware.bin does not match its SHA-256"),
            "not-an-image": (0x7E000403, "the bootloader refuses the image")}[case]
    assert res["extendedResultCode"] == want[0] and want[1] in res["resultDetails"], res
    assert len([line for line in log.splitlines() if "update refused" in line]) == 1, log
    if case == "too-large":
        assert cache.requests == []
    assert board.otadata() == [(0xFFFFFFFF, b"\xff" * 20, 0xFFFFFFFF, 0xFFFFFFFF)] * 2  # never set_boot
    assert board.reset() == "ota_0"


@pytest.mark.parametrize("runtime", ["cpython", "micropython"])
def test_a_board_without_ota_slots_refuses_the_step(tmp_path, lib, cache, monkeypatch, runtime):
    # CPython has no esp32 module; the sim's MicroPython without the OTA variant has no slots.
    board = Board(tmp_path / "board", ota=False)
    if runtime == "micropython":
        for name in ("esp32.py", "_simota.py", "_simnor.py"):
            shutil.copy(BOARD / name, lib / name)
    for k, v in board.env().items():
        monkeypatch.setenv(k, v)
    files = [("firmware.bin", esp_image())]
    svc = service("wf-plain", files, handler=FW)
    serve(cache, svc, files)
    out, log = run(runtime, lib, tmp_path / "data", "twin", desired(svc), cache=cache)
    res = agent_of(out["reports"])[-1]["lastInstallResult"]
    assert res["extendedResultCode"] == 0x7E000401 and "no OTA partitions" in res["resultDetails"]
    assert [line for line in log.splitlines() if "update refused" in line] == [
        "[edgekit] update refused: no OTA partitions: flash MicroPython's OTA variant for firmware updates"]
    assert cache.requests == [] and not out["reboot"]


# --- the host: edgekit update create --handler firmware ---

def create_cmd(*args):
    from click.testing import CliRunner
    from edgekit.cli import main
    return CliRunner().invoke(main, ["update", "create", *map(str, args)])


def test_update_create_takes_an_app_image_for_the_board(tmp_path):
    image = tmp_path / "ESP32_GENERIC_OTA.app-bin"
    image.write_bytes(esp_image(b"v9" * 100))
    out = tmp_path / "updates"
    r = create_cmd(image, "--handler", "firmware", "--board", "esp32-devkitc", "--provider", "contoso",
                   "--name", "fw", "--version", "1.26.1", "--out", out)
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "contoso.fw.1.26.1" / "contoso.fw.1.26.1.importmanifest.json").read_text())
    [step] = manifest["instructions"]["steps"]
    assert step["handler"] == FW and step["files"] == ["fw-1.26.1.bin"]
    assert manifest["files"] == [{"filename": "fw-1.26.1.bin", "sizeInBytes": image.stat().st_size,
                                  "hashes": {"sha256": b64sha(image.read_bytes())}}]
    assert (out / "contoso.fw.1.26.1" / "fw-1.26.1.bin").read_bytes() == image.read_bytes()

    # refused, one line each: another chip, a damaged image, a merged image, no image at all
    s3 = tmp_path / "s3.app-bin"
    s3.write_bytes(esp_image(chip="ESP32S3"))
    damaged = tmp_path / "damaged.app-bin"
    good = esp_image(b"v9" * 100)
    damaged.write_bytes(good[:100] + bytes([good[100] ^ 1]) + good[101:])
    merged = tmp_path / "merged.bin"
    table = bytearray(b"\xff" * 0x1000)
    table[:2] = b"\xaa\x50"
    merged.write_bytes(esp_image()[:0x7000].ljust(0x7000, b"\xff") + bytes(table) + esp_image())
    for path, why in ((s3, "is for the esp32s3, not the board's esp32"), (damaged, "SHA-256 does not match"),
                      (merged, "is a merged image"), (tmp_path, "is not a file")):
        r = create_cmd(path, "--handler", "firmware", "--board", "esp32-devkitc", "--provider", "contoso",
                       "--name", "fw", "--version", "1.26.2", "--out", out)
        assert r.exit_code != 0 and why in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_power_cut_anywhere_boots_a_whole_image_and_reports_consistently(tmp_path, mp_lib, cache, monkeypatch):
    # The real MicroPython SIGKILLed at random moments of a firmware deployment (as
    # tests/test_adu_agent.py does for the app handler): the bootloader then boots the old image or
    # the new one whole (set_boot only follows a checked image, and verifies it), and the agent,
    # given the twin again, ends with v9 kept in ota_1 or, cut between its record and set_boot,
    # with the old image running and the deployment reported failed.
    import random
    import signal
    import time
    from conftest import INTERPRETERS
    from test_adu_agent import WORKER
    image = esp_image(b"MicroPython v9 " * 6000)
    files = [("firmware.bin", image)]
    svc = service("wf-cut", files, version="9.0", handler=FW)
    serve(cache, svc, files)
    arg = dict(desired(svc), cache=f"127.0.0.1:{cache.port}", adu_bundle=str(SIGNER["bundle"]))
    probe = Board(tmp_path / "probe")
    t0 = time.monotonic()
    out, _ = deploy(probe, monkeypatch, mp_lib, tmp_path / "probe" / "data", cache, image, "wf-cut")
    span = time.monotonic() - t0
    assert out["reboot"]
    factory = Board(tmp_path / "f").slot("ota_0")
    rnd = random.Random(24)
    phases, ends = set(), set()
    for i in range(10):
        board = Board(tmp_path / f"cut{i}")
        data = tmp_path / f"cut{i}" / "data"
        (data.parent / "arg.json").write_text(json.dumps(arg))
        env = dict(os.environ, **board.env())
        proc = subprocess.Popen(INTERPRETERS["micropython"]() + [str(WORKER), str(mp_lib), str(data), "twin",
                                                                 str(data.parent / "arg.json")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=data.parent, env=env)
        time.sleep(rnd.uniform(0, span))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        try:
            phases.add(json.loads((data / "adu.json").read_text()).get("phase"))
        except (OSError, ValueError):
            phases.add(None)
        for _ in range(3):  # boot, and give the twin again until the deployment has ended
            run_slot = board.reset()
            assert board.slot(run_slot)[:len(image)] in (image, factory[:len(image)]), run_slot
            out, log = on_board(board, monkeypatch, mp_lib, data, "boot")
            if out["adu"].get("phase") in ("", None) and out["adu"].get("res"):
                break
            out, log = on_board(board, monkeypatch, mp_lib, data, "twin", dict(desired(svc), whole=True),
                                cache=cache)
            if not out["reboot"] and out["adu"].get("res"):
                break
        st = out["adu"]
        if board.running == "ota_1":
            assert st["res"]["resultCode"] == 700 and json.loads(st["installed"])["version"] == "9.0", st
            assert board.otadata()[0][2] == 2  # VALID
        else:
            assert board.running == "ota_0" and st["state"] == 255, st
            assert st["res"]["extendedResultCode"] == 0x7E000404, st
        ends.add(board.running)
        assert board.reset() == board.running  # settled
    print(f"cuts over {span:.2f} s in phases {sorted(map(str, phases))}: ended in {sorted(ends)}")


def test_a_deployment_during_a_firmware_trial_is_refused_and_the_trial_goes_on(tmp_path, mp_lib, cache, monkeypatch):
    # ota_0 holds the image the bootloader rolls back to while ota_1 is on trial: nothing may
    # overwrite it (esp_ota_begin refuses the same with ESP_ERR_OTA_ROLLBACK_INVALID_STATE).
    board = Board(tmp_path / "board")
    data = tmp_path / "data"
    out, log = deploy(board, monkeypatch, mp_lib, data, cache, esp_image(), "wf-a")
    assert out["reboot"], log
    assert board.reset() == "ota_1"
    old = board.slot("ota_0")
    files = [("firmware.bin", esp_image(b"v10"))]
    svc = service("wf-b", files, version="10.0", handler=FW)
    serve(cache, svc, files)
    out, log = on_board(board, monkeypatch, mp_lib, data, "twin", desired(svc, 3), cache=cache)
    assert "deployment wf-b refused: a firmware image is on trial" in log, log
    ack = [r for r in out["reports"] if "service" in r["deviceUpdate"]]
    assert ack[0]["deviceUpdate"]["service"]["ac"] == 406
    assert out["adu"]["phase"] == "trial" and out["adu"]["wf"] == "wf-a" and not out["reboot"]
    assert board.slot("ota_0") == old and cache.requests[-1][0] != "/content/wf-b/f0"
    out, log = on_board(board, monkeypatch, mp_lib, data, "boot")
    assert out["adu"]["res"]["resultCode"] == 700 and board.reset() == "ota_1"
