"""Deploy: bytes sent and wall time to the simulated board, first deploy, unchanged, one file changed.

`edgekit deploy` (edgekit.deploy.deploy) against `mpremote cp -r` of the very same files
(compiled .mpy tree, main.py, bundle), each to a fresh simulated board (edgekit.sim), the
bytes counted by a FaultProxy (no delay) between host and board. The sim has no baud limit:
the time a real 115200-baud link would take is estimated from the bytes (10 bits a byte).
"""
import shutil
import subprocess
import sys
import time
from pathlib import Path

from edgekit.boards import load_board
from edgekit.deploy import DeployError, deploy, plan_sources
from edgekit.deploy.compile import build
from edgekit.faultproxy import FaultProxy
from edgekit.sim import SimBoard

from bench.common import FIRMWARE_DIR, BenchError, ratio
from device_helpers import make_pki, write_bundle

DEVICE = "bench-deploy"
CHANGED = "azure_edge/topics.py"  # the file "one file changed" edits
BAUD = 115200


def _serial_seconds(nbytes):
    return round(nbytes * 10 / BAUD, 1)


def _firmware_copy(dest):
    shutil.copytree(FIRMWARE_DIR, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def _change_one_file(fw, n):
    path = fw / CHANGED
    # A new constant changes the bytecode (a comment would not reach the .mpy).
    path.write_text(path.read_text() + "\n_BENCH_EDIT = %d\n" % n)


class _Board:
    """A fresh simulated board behind a counting proxy."""

    def __init__(self, workdir):
        self.sim = SimBoard(Path(workdir) / "flash", heap="192K").start()
        self.proxy = FaultProxy("127.0.0.1", self.sim.port).start()
        self.url = "socket://127.0.0.1:%d" % self.proxy.port

    def counted(self, fn):
        """Run fn(); return (its result, bytes host->board, bytes board->host, seconds)."""
        up, down = self.proxy.bytes_up, self.proxy.bytes_down
        t0 = time.perf_counter()
        result = fn()
        took = time.perf_counter() - t0
        time.sleep(0.2)  # the proxy counts as it forwards: let the last bytes pass
        return result, self.proxy.bytes_up - up, self.proxy.bytes_down - down, took

    def close(self):
        self.proxy.stop()
        self.sim.stop()


def _figure(up, down, seconds, payload=None):
    fig = {"bytes_sent": up, "bytes_received": down, "wall_s": round(seconds, 3),
           "est_115200_baud_s": _serial_seconds(up + down)}
    if payload is not None:
        fig["payload_bytes"] = payload
    return fig


def _mpremote(url, args):
    done = subprocess.run([sys.executable, "-m", "mpremote", "connect", url] + args,
                          capture_output=True, text=True, timeout=300)
    if done.returncode:
        raise BenchError(f"deploy: mpremote {' '.join(args[:2])} failed: {(done.stdout + done.stderr)[-300:]}")


def _stage(payloads, stage):
    """The board's files laid out in a folder, for mpremote cp -r."""
    for p in payloads:
        dst = stage / p.board_path.lstrip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p.local, dst)
    return sorted(str(p) for p in stage.iterdir())


def run(workdir, quick=False, log=print):
    """Measure; return the 'deploy' section of results.json."""
    workdir.mkdir(parents=True, exist_ok=True)
    fw = _firmware_copy(workdir / "firmware")
    pki, _server = make_pki(workdir / "pki")
    write_bundle(workdir, pki, 8883, device=DEVICE)
    bundles = workdir / "bundles"
    build_dir = workdir / "build"
    board = load_board("sim")
    out = {"board": "sim (MicroPython unix port served as a serial board)", "changed_file": CHANGED,
           "retries": []}

    def payloads():
        return build(plan_sources("micropython", DEVICE, fw, bundles, build_dir=build_dir), "micropython",
                     arch=board.mpy_arch, build_dir=build_dir)[0]

    first_payloads = payloads()  # compile once up front (warms the build cache) and count the files
    out["files"] = len(first_payloads)
    out["tree_bytes"] = sum(p.size for p in first_payloads)

    target = _Board(workdir / "sim-edgekit")
    try:
        def edgekit():
            try:
                return deploy(board, DEVICE, port=target.url, firmware_dir=fw, bundles_dir=bundles,
                              build_dir=build_dir, reset=False)
            except DeployError as e:
                # Seen under load: after the soft reset the sim answered with the friendly
                # REPL, not the raw one. One retry; the retry is counted in results.json.
                out["retries"].append(str(e)[:200])
                time.sleep(1)
                return deploy(board, DEVICE, port=target.url, firmware_dir=fw, bundles_dir=bundles,
                              build_dir=build_dir, reset=False)
        ek = {}
        for case in ("first", "unchanged", "one_file"):
            if case == "one_file":
                _change_one_file(fw, 1)
            res, up, down, took = target.counted(edgekit)
            ek[case] = _figure(up, down, took, res.payload_bytes)
            ek[case]["files_copied"] = len(res.copied)
            ek[case]["deploy_wire_bytes"] = res.wire_bytes
    finally:
        target.close()
    out["edgekit"] = ek

    stage = workdir / "stage"
    base = {}
    target = _Board(workdir / "sim-mpremote")
    # mpremote takes seconds per call even with nothing to copy: --quick runs its first copy only.
    cases = ("first",) if quick else ("first", "unchanged", "one_file")
    try:
        for case in cases:
            if case == "one_file":
                _change_one_file(fw, 3)
                shutil.rmtree(stage)
            if not stage.exists():
                tops = _stage(payloads(), stage)
            _r, up, down, took = target.counted(lambda: _mpremote(target.url, ["cp", "-r"] + tops + [":"]))
            base[case] = _figure(up, down, took)
    finally:
        target.close()
    out["mpremote_cp"] = base

    first = ek["first"]["bytes_sent"]
    out["unchanged_ratio_to_first"] = ratio(ek["unchanged"]["bytes_sent"], first)
    out["one_file_ratio_to_first"] = ratio(ek["one_file"]["bytes_sent"], first)
    out["first_ratio_to_mpremote"] = ratio(first, base["first"]["bytes_sent"])
    if "unchanged" in base:
        out["unchanged_ratio_to_mpremote"] = ratio(ek["unchanged"]["bytes_sent"], base["unchanged"]["bytes_sent"])
    out["goal_met"] = ek["unchanged"]["bytes_sent"] < 0.02 * first
    for case in ("first", "unchanged", "one_file"):
        b = base.get(case, {})
        log("deploy: %-9s edgekit %7d B %6.2f s | mpremote cp -r %7s B %6s s" % (
            case, ek[case]["bytes_sent"], ek[case]["wall_s"], b.get("bytes_sent", "-"), b.get("wall_s", "-")))
    return out
