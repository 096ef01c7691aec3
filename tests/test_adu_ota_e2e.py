"""A MicroPython firmware image over the air, end to end (edgekit/firmware:1): the simulated board
flashed with MicroPython's OTA variant (SimBoard(ota=True): ota_0, ota_1, otadata and ESP-IDF's
bootloader with rollback) behind `edgekit gateway serve`, driven with the commands a user runs.

The sim cannot run an image: the same unix MicroPython runs whichever slot the bootloader picks,
and esp32.Partition(RUNNING) names that slot (docs/updates.md). So "runs v9" here means: the
bootloader chose the slot v9 was written to, and the agent reports v9 installed.

In order: v9 written into ota_1, booted, kept after its first connect (otadata VALID); v10
written into ota_0 while the gateway then goes away: its trial never connects, the board resets,
the bootloader rolls back to ota_1, and once the gateway is back the deployment is reported
failed with v9 still installed; v11 tampered with on the gateway is refused before set_boot."""
import json

import pytest

from device_helpers import free_port, wait_for
from test_adu_e2e import DEVICE, adu_lab, edgekit
from test_adu_ota import esp_image

TRIAL_MINUTES = 0.5  # the bundle's adu "minutes" (T): a trial not connected by then is reset


@pytest.fixture
def lab(tmp_path):
    # a free port of its own, kept when the test stops and starts the gateway again
    with adu_lab(tmp_path, port=free_port(), ota=True, trial_minutes=TRIAL_MINUTES) as both:
        yield both


def test_firmware_image_switches_slots_is_kept_and_rolls_back(lab, tmp_path):
    gw, sim = lab
    updates = tmp_path / "updates"

    def console():
        return sim.log_path.read_text(errors="replace")

    def status():
        [row] = json.loads(edgekit("gateway", "update", "status", "--device", DEVICE, "--json",
                                   "--data", gw.data))["devices"]
        return row

    def settled(result, timeout=60):
        def done():
            row = status()
            return row if row["result"] in ("failed", "succeeded", "cancelled") else None
        try:
            row = wait_for(done, timeout, f"the deployment {result}")
        except AssertionError as e:
            raise AssertionError(f"{e}: {status()}\n{console()[-4000:]}") from None
        assert row["result"] == result, (row, console()[-3000:])
        return row

    def release(version, image):
        path = tmp_path / f"micropython-{version}.app-bin"
        path.write_bytes(image)
        edgekit("update", "create", path, "--handler", "firmware", "--board", "sim", "--provider", "contoso",
                "--name", "fw", "--version", version, "--manufacturer", "edgekit", "--model", "sim",
                "--out", updates)
        manifest = updates / f"contoso.fw.{version}" / f"contoso.fw.{version}.importmanifest.json"
        edgekit("gateway", "update", "import", manifest, "--data", gw.data)

    wait_for(lambda: status()["state_name"] == "idle", 40, "the agent's first report")
    assert sim.running == "ota_0"  # as esptool left it: otadata erased, no factory app

    # v9 into ota_1: downloaded from the gateway's cache into the slot, set_boot, reset, kept
    release("9.0", esp_image(b"MicroPython v9 " * 4000))
    edgekit("gateway", "update", "deploy", "contoso/fw/9.0", "--group", "lab", "--data", gw.data)
    row = settled("succeeded")
    assert row["installed_update"] == "contoso/fw/9.0" and row["last_install_result"]["resultCode"] == 700
    text = console()
    assert "firmware image written to ota_1" in text and "[sim bootloader] booting ota_1" in text
    assert "firmware image connected and reported: kept" in text, text[-3000:]
    assert sim.running == "ota_1"

    # v10 into ota_0, and the gateway gone before its first boot: never connected, rolled back
    release("10.0", esp_image(b"MicroPython v10 " * 4000))
    mark = len(console())
    edgekit("gateway", "update", "deploy", "contoso/fw/10.0", "--device", DEVICE, "--data", gw.data)
    wait_for(lambda: "firmware image written to ota_0" in console()[mark:], 60, "v10 written")
    gw.stop()
    wait_for(lambda: "not connected in time" in console()[mark:], 90, "the trial's time running out")
    # (the take's own reset boots ota_1 too, before the write: the rollback is the boot after this)
    late = mark + console()[mark:].index("not connected in time")
    wait_for(lambda: "[sim bootloader] booting ota_1" in console()[late:], 20, "the rollback")
    after = console()[mark:]
    assert after.index("[sim bootloader] booting ota_0") < after.index("not connected in time"), after[-3000:]
    assert sim.running == "ota_1"
    gw.start()
    row = settled("failed")
    assert row["installed_update"] == "contoso/fw/9.0", row
    res = row["last_install_result"]
    assert res["extendedResultCode"] == 0x7E000404 and "rolled back" in res["resultDetails"], res

    # v11 tampered with on the gateway after the import: refused before set_boot, ota_1 kept
    release("11.0", esp_image(b"MicroPython v11 " * 4000))
    [stored] = list((gw.data / "adu").rglob("fw-11.0.bin"))
    blob = bytearray(stored.read_bytes())
    blob[-1] ^= 1
    stored.write_bytes(bytes(blob))
    mark = len(console())
    edgekit("gateway", "update", "deploy", "contoso/fw/11.0", "--device", DEVICE, "--data", gw.data)
    row = settled("failed")
    assert "does not match its SHA-256" in row["last_install_result"]["resultDetails"], row
    assert row["installed_update"] == "contoso/fw/9.0" and sim.running == "ota_1"
    # (the take and the deployment's own boot each reset the board: ota_1 booted again, never ota_0)
    assert "[sim bootloader] booting ota_0" not in console()[mark:] and "Traceback" not in console()
