"""`python -m bench.update_ab REV [REV ...] [--runs N]`: bench/update.py's update at several git
revisions of firmware/azure_edge ("." for the working tree), interleaved with the raw GET in one
run: per revision the medians and minima, the ratio of the medians to the GET's, erases and bytes
programmed. The machine may be shared and its load moves the agent's time more than the GET's
(one mostly computes, the other mostly waits), so a before/after of the update path compares
only within one such run; results.json is not touched.
"""
import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import update as U
from bench.common import BenchError
from edgekit import FIRMWARE_DIR, ROOT
from edgekit.faultproxy import FaultProxy


def _firmware(rev, into):
    """firmware/azure_edge as at `rev` ("." the working tree), under into/firmware."""
    if rev == ".":
        return FIRMWARE_DIR
    out = into / "firmware"
    out.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev, "firmware/azure_edge"], cwd=ROOT, capture_output=True)
    if archive.returncode:
        raise BenchError(f"update_ab: no revision {rev!r}: {archive.stderr.decode().strip()[:200]}")
    subprocess.run(["tar", "-x", "-C", str(out), "--strip-components=1"], input=archive.stdout, check=True)
    return out


def run(revs, runs, workdir):
    data, bundle = U._signer(workdir)
    libs = {}
    for i, rev in enumerate(revs):
        wd = workdir / ("rev%d" % i)
        wd.mkdir()
        libs[rev] = (wd, U._lib(wd, _firmware(rev, wd)))
    tar = U._app_tar(U.APP_BYTES)
    record = U._imported(workdir, data, tar)
    cache = U._Cache(data).start()
    proxy = FaultProxy("127.0.0.1", cache.port, delay=U.RTT_S / 2).start()
    from edgekit.gateway.adu import ORIGIN_HOST
    path = "%s?cacheHostOrigin=%s" % (next(iter(record["files"].values()))["path"], ORIGIN_HOST)
    ms = {rev: [] for rev in ["GET"] + revs}
    flash = {}
    try:
        for i in range(runs):
            arg = {"adu_bundle": str(bundle), "cache": f"127.0.0.1:{proxy.port}", "path": path,
                   "desired": U._desired(data, "wf-ab-%d" % i, record, cache.port)}
            ms["GET"].append(U._record(U._mp(workdir, libs[revs[0]][1], "raw", arg), "raw")["ms"])
            for rev, (wd, lib) in libs.items():
                rec = U._record(U._mp(wd, lib, "update", arg), rev)
                if not rec["reboot"]:
                    raise BenchError(f"update_ab: {rev} did not install and switch: {rec}")
                ms[rev].append(rec["ms"])
                flash[rev] = "%d erases, %d B programmed" % (rec["erases"], rec["programmed_bytes"])
    finally:
        proxy.stop()
        cache.stop()
    get = statistics.median(ms["GET"])
    for rev, times in ms.items():
        med = statistics.median(times)
        print("%-12s median %5.1f ms  min %3d ms  x%.2f  %s  %s" % (
            rev, med, min(times), med / get, flash.get(rev, ""), times))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.update_ab", description=__doc__.split("\n\n")[0])
    p.add_argument("revs", nargs="+", help="git revisions (\".\": the working tree)")
    p.add_argument("--runs", type=int, default=9)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="edgekit-update-ab-"))
    try:
        run(args.revs, args.runs, work)
    except BenchError as e:
        sys.exit("error: %s" % e)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
