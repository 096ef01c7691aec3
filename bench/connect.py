"""Connect time under MicroPython: TLS, MQTT CONNECT, subscriptions and the first twin GET answered.

ECC P-256 and RSA (certGen-style: 4096-bit CAs, 2048-bit leaves) chains, SAS and X.509 auth,
against mosquitto with a paho hub answering the twin. Baseline, in the same process and run:
a bare TLS handshake to the same listener with the same credentials. Also the cost of SAS
generation (azure_edge.sas under MicroPython).
"""
import subprocess

from edgekit.certs import demo

from bench.common import BenchError, board_lib, last_record, median, micropython, mp_env, ratio
from bench.rig import Rig

HEAP = "192K"  # speed, not memory, is measured here
GOAL = 1.5


def _pki(workdir, algo):
    pki = demo.make_demo_pki(workdir, "localhost", devices=["dev-x509"], algo=algo)
    server = demo.issue_server_cert(pki.edge_ca_chain, pki.edge_ca_key, "localhost")
    return pki, server


def _measure(rig, board, auth, connects, sas_runs, log_path):
    if auth == "x509":
        bundle = rig.bundle("dev-x509", port=rig.broker.mtls_port, x509=True)
    else:
        bundle = rig.bundle("conn-sas")
    cfg = {"bundle": str(bundle), "connects": connects, "sas_runs": sas_runs}
    out = subprocess.run([micropython(), "-X", "heapsize=" + HEAP, "-c", "import mp_connect"],
                         capture_output=True, text=True, timeout=300, env=mp_env(board, **cfg))
    log_path.write_text(out.stdout + out.stderr)
    rec = last_record(out.stdout, "done")
    if out.returncode or rec is None:
        raise BenchError(f"connect: {auth} run failed: {(out.stdout + out.stderr)[-600:]}")
    return rec


def run(workdir, quick=False, log=print):
    """Measure; return the 'connect' section of results.json."""
    connects = 3 if quick else 10
    sas_runs = 20 if quick else 200
    workdir.mkdir(parents=True, exist_ok=True)
    board = board_lib(workdir / "board")
    out = {"connects": connects, "heap": HEAP, "cases": {}}
    sas_us = []
    for algo in ("ecc", "rsa"):
        with Rig(workdir / algo, pki=_pki(workdir / algo / "pki", algo)) as rig:
            for auth in ("sas", "x509"):
                rec = _measure(rig, board, auth, connects, sas_runs, workdir / f"{algo}-{auth}.log")
                sas_us += rec["sas_us"]
                full, bare = median(rec["full_us"]) / 1000, median(rec["bare_us"]) / 1000
                case = {"full_connect_ms": round(full, 2), "bare_handshake_ms": round(bare, 2),
                        "connect_call_ms": round(median(rec["connect_us"]) / 1000, 2),
                        "overhead_ms": round(full - bare, 2),
                        "ratio": ratio(full, bare), "goal_met": full <= GOAL * bare,
                        "full_us": rec["full_us"], "bare_us": rec["bare_us"]}
                out["cases"][f"{algo}_{auth}"] = case
                log("connect: %s %-4s full %7.1f ms, bare TLS %7.1f ms (x%.2f)"
                    % (algo, auth, full, bare, case["ratio"]))
    sas_ms = median(sas_us) / 1000
    ecc_bare = out["cases"]["ecc_sas"]["bare_handshake_ms"]
    out["sas_generate_ms"] = round(sas_ms, 3)
    out["sas_runs"] = len(sas_us)
    out["sas_ratio_to_ecc_handshake"] = ratio(sas_ms, ecc_bare)
    out["goal_met"] = all(c["goal_met"] for c in out["cases"].values())
    log("connect: SAS generation %.2f ms (median of %d)" % (sas_ms, len(sas_us)))
    return out
