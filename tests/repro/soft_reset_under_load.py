"""Deploy onto a connected firmware on the simulated board, again and again, with the CPU loaded.

Issue 22: `make test` once failed on a loaded machine with "the board did not soft-reset
within 10 s" right after a deploy copied its files. This runs that path RUNS times: each
run takes files off the board, deploys (copy, soft reset), and waits until the firmware
says it is connected again. LOAD CPU-bound processes (stress-ng if installed, else Python
busy loops) compete with it throughout. It prints each failure, then runs / failures /
load average, and exits 1 if any run failed. It cleans up after itself (broker, board,
load, temporary folder), also on Ctrl-C.

    .venv/bin/python tests/repro/soft_reset_under_load.py [--runs 50] [--load 2] [--all]

--all takes every file off the board each run (a first deploy: ~33 files), which is
slower; by default main.py and the bundle's config.json are copied.
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: conftest, device_helpers

from conftest import ROOT  # noqa: E402
from device_helpers import Hub, Mosquitto, make_pki, write_bundle  # noqa: E402
from edgekit.sim import SimBoard  # noqa: E402

DEVICE = "dev-reset"
MANIFEST = ".edgekit-manifest.json"


def start_load(n, seconds):
    """n CPU-bound processes in their own process group; stopped by stop_load()."""
    stress = shutil.which("stress-ng")
    if stress:
        argv = [[stress, "--cpu", str(n), "--timeout", f"{seconds}s", "--quiet"]]
    else:
        argv = [[sys.executable, "-c", f"import time\nend=time.time()+{seconds}\nwhile time.time()<end: pass"]] * n
    return [subprocess.Popen(a, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for a in argv], ("stress-ng" if stress else "python busy loops")


def stop_load(procs):
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def take_files_off(flash, every):
    """Remove files (and the manifest) so the next deploy has files to copy."""
    if every:
        for p in flash.iterdir():
            if p.name != "data":  # the device's state stays, as on a board
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        return
    for rel in ("main.py", "edgekit/config.json", MANIFEST):
        (flash / rel).unlink(missing_ok=True)


def deploy(sim, bundles):
    """One `edgekit deploy` onto the board; (ok, the lines that say why not)."""
    try:
        out = subprocess.run([sys.executable, "-m", "edgekit", "deploy", "sim", "--device", DEVICE,
                              "--port", sim.url, "--bundles", str(bundles), "--watch", "30"],
                             cwd=ROOT, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        return False, "deploy did not end within 240 s"
    text = out.stdout + out.stderr
    if out.returncode == 0 and "board console:" in out.stdout and "soft reset" in out.stdout:
        return True, ""
    return False, " | ".join(text.strip().splitlines()[-3:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--load", type=int, default=2, help="CPU-bound load processes (0: none)")
    ap.add_argument("--all", action="store_true", help="copy every file each run (a first deploy)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="edgekit-reset-"))
    load, load_kind = [], "none"
    broker = hub = sim = None
    failures = []
    peak = 0.0
    done = 0
    started = time.monotonic()
    try:
        pki = make_pki(work / "pki")
        broker = Mosquitto(work / "mosquitto", *pki)
        broker.start()
        hub = Hub(broker.port, pki[0].root_cert)
        hub.start()
        write_bundle(work / "home", pki[0], broker.port, device=DEVICE)
        flash = work / "sim" / "flash"
        sim = SimBoard(flash).start()
        if args.load:
            load, load_kind = start_load(args.load, args.runs * 120)
            time.sleep(2)  # let the load average climb before the first run
        for run in range(1, args.runs + 1):
            take_files_off(flash, args.all or run == 1)
            t0 = time.monotonic()
            ok, why = deploy(sim, work / "home" / "bundles")
            peak = max(peak, os.getloadavg()[0])
            done = run
            if not ok:
                failures.append(run)
                tail = sim.log_path.read_bytes()[-300:].decode(errors="replace")
                print(f"run {run}: FAILED after {time.monotonic() - t0:.1f} s: {why}\n  console tail: {tail!r}",
                      flush=True)
            else:
                print(f"run {run}: ok in {time.monotonic() - t0:.1f} s", flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    finally:
        stop_load(load)
        if sim:
            sim.stop()
        if hub:
            hub.stop()
        if broker:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    load1, load5, _ = os.getloadavg()
    print(f"runs {done}, failures {len(failures)}{' ' + str(failures) if failures else ''},"
          f" load {args.load} x {load_kind}, load average now {load1:.2f} (5 min {load5:.2f}),"
          f" peak 1-min {peak:.2f}, {time.monotonic() - started:.0f} s")
    return 1 if failures or done < args.runs else 0


if __name__ == "__main__":
    sys.exit(main())
