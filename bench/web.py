"""The web view's cost to the gateway: the same backlog drain through `gateway serve --web`, with
no page open, then with the page open in headless Chromium charting the draining device.

The firmware (MicroPython) queues readings while away, then drains them into the emulator; the
clock runs from its connect to its outbox being empty (every reading PUBACKed, which the emulator
does once the reading is stored). Rounds alternate without and with the page, so drift of the
machine hits both alike; the figure is the median of each.
"""
import re
import shutil
import subprocess

from bench.common import (BenchError, board_lib, last_record, launch, median, micropython, mp_env, ratio,
                          wait_until)
from device_helpers import write_bundle
from gateway_helpers import GatewayProcess

HEAP = "192K"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def _browser(workdir):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1280,1000", f"--user-data-dir={workdir / 'chromium'}"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def _drain(gw, board, workdir, device, cs, readings, timeout=240):
    """Readings per second of one firmware drain of `readings` queued readings into the gateway."""
    bundle = write_bundle(workdir / device, gw.pki, gw.port, device=device, connection_string=cs,
                          outbox_bytes=4 * 1024 * 1024, interval=3600)
    proc = subprocess.Popen([micropython(), "-X", "heapsize=" + HEAP, "-c", launch("mp_drain")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=mp_env(board, bundle=str(bundle), readings=readings))
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise BenchError(f"web: the drain of {device} did not finish in {timeout} s")
    rec = last_record(out, "done")
    if proc.returncode or rec is None:
        raise BenchError(f"web: the drain of {device} failed: {out[-600:]}")
    return readings / ((rec["end_ns"] - rec["start_ns"]) / 1e9)


def run(workdir, quick=False, log=print):
    """Measure; return the 'web' section of results.json."""
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        return {"skipped": "no headless Chromium: apt-get install chromium chromium-driver"}
    readings, rounds = (200, 1) if quick else (1000, 3)
    workdir.mkdir(parents=True, exist_ok=True)
    board = board_lib(workdir / "board")
    gw = GatewayProcess(workdir / "gateway", devices=(), extra=["--web"])
    gw.start()
    browser = None
    rates = {"no_page": [], "page": []}
    try:
        url = re.search(r"web view on (http://\S+)", gw.log.read_text()).group(1)
        browser = _browser(workdir)
        # A first drain warms what only the first run pays for (caches, the gateway's first TLS).
        _drain(gw, board, workdir, "web-warm-up", gw.add_device("web-warm-up", gateway_host="localhost"),
               readings)
        for n in range(rounds):
            device = f"web-off-{n}"
            cs = gw.add_device(device, gateway_host="localhost")
            rates["no_page"].append(_drain(gw, board, workdir, device, cs, readings))
            device = f"web-on-{n}"
            cs = gw.add_device(device, gateway_host="localhost")
            # The page picks the device and charts seq from its address, as a reload would: counters like
            # seq are not charted unless picked, and the chart is part of what the page costs.
            browser.get(f"{url}&device={device}&fields=seq")
            wait_until(lambda: browser.find_elements("css selector", f'#devices tr.selected[data-id="{device}"]'), 20,
                       f"web: the page showing {device}", poll=0.2)
            rates["page"].append(_drain(gw, board, workdir, device, cs, readings))
            wait_until(lambda: browser.find_elements("css selector", '#charts .chart[data-field="seq"]'), 20,
                       "web: a chart of the drained readings", poll=0.2)
            browser.get("about:blank")  # closed again for the next round without the page
    finally:
        if browser is not None:
            browser.quit()
        gw.stop()
    off, on = median(rates["no_page"]), median(rates["page"])
    out = {"readings": readings, "rounds": rounds, "heap": HEAP,
           "no_page_readings_per_s": round(off, 1), "page_readings_per_s": round(on, 1),
           "ratio_page_to_no_page": ratio(on, off), "runs": {k: [round(r, 1) for r in v] for k, v in rates.items()},
           "clock": "connect start to the outbox empty (every reading acknowledged and stored)"}
    out["goal_met"] = bool(out["ratio_page_to_no_page"] >= 0.9)
    log("web: drain %.1f /s without the page, %.1f /s with it (x%.2f)" % (off, on, out["ratio_page_to_no_page"]))
    return out
