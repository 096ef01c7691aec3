"""Connect time under MicroPython: TLS, MQTT CONNECT, subscriptions and the first twin GET answered.

ECC P-256 and RSA (certGen-style: 4096-bit CAs, 2048-bit leaves) chains, SAS and X.509 auth,
against mosquitto with a paho hub answering the twin ('cases'), and against `edgekit gateway
serve` in its default profile ('emulator_cases'), which issues its own server certificate
from the edge CA as IoT Edge does. Baseline, in the same process and run: a bare TLS handshake
to the same listener with the same credentials. Also the cost of SAS generation
(azure_edge.sas under MicroPython).
"""
import socket
import ssl
import subprocess

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from edgekit.certs import demo
from edgekit.certs.pem import load_certificates

from bench.common import BenchError, board_lib, last_record, median, micropython, mp_env, ratio
from bench.rig import EmulatorRig, Rig

HEAP = "192K"  # speed, not memory, is measured here
GOAL = 1.5


def _pki(workdir, algo):
    pki = demo.make_demo_pki(workdir, "localhost", devices=["dev-x509"], algo=algo)
    server = demo.issue_server_cert(pki.edge_ca_chain, pki.edge_ca_key, "localhost")
    return pki, server


def _measure(bundle, board, auth, connects, sas_runs, log_path):
    cfg = {"bundle": str(bundle), "connects": connects, "sas_runs": sas_runs}
    out = subprocess.run([micropython(), "-X", "heapsize=" + HEAP, "-c", "import mp_connect"],
                         capture_output=True, text=True, timeout=300, env=mp_env(board, **cfg))
    log_path.write_text(out.stdout + out.stderr)
    rec = last_record(out.stdout, "done")
    if out.returncode or rec is None:
        raise BenchError(f"connect: {auth} run failed: {(out.stdout + out.stderr)[-600:]}")
    return rec


def _case(rec):
    full, bare = median(rec["full_us"]) / 1000, median(rec["bare_us"]) / 1000
    return {"full_connect_ms": round(full, 2), "bare_handshake_ms": round(bare, 2),
            "connect_call_ms": round(median(rec["connect_us"]) / 1000, 2),
            "overhead_ms": round(full - bare, 2),
            "ratio": ratio(full, bare), "goal_met": full <= GOAL * bare,
            "full_us": rec["full_us"], "bare_us": rec["bare_us"]}


def _key_name(cert):
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA-%d" % key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "EC " + key.curve.name
    return type(key).__name__


def _server_profile(emu):
    """What the emulator serves: its leaf's key, and the TLS version and suite CPython negotiates."""
    leaf = load_certificates(emu.gw.data / "tls" / "server.cert.pem")[0]
    ctx = ssl.create_default_context(cafile=str(emu.pki.root_cert))
    with socket.create_connection(("127.0.0.1", emu.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=emu.gw.hostname) as s:
            version, cipher = s.version(), s.cipher()[0]
    return {"server_leaf": _key_name(leaf), "tls_version": version, "cipher": cipher}


def _emulator(workdir, board, connects, log):
    """The four cases against the emulator; a case that cannot connect is an error entry, not a crash."""
    cases, profiles = {}, {}
    for algo in ("ecc", "rsa"):
        pki = demo.make_demo_pki(workdir / f"emulator-{algo}" / "pki", "localhost", devices=["dev-x509"], algo=algo)
        with EmulatorRig(workdir / f"emulator-{algo}", pki=pki) as emu:
            profiles[algo] = _server_profile(emu)
            for auth in ("sas", "x509"):
                bundle = emu.bundle("dev-x509", x509=True) if auth == "x509" else emu.bundle("conn-sas")
                try:
                    rec = _measure(bundle, board, auth, connects, 0, workdir / f"emulator-{algo}-{auth}.log")
                except BenchError as e:
                    last = str(e).strip().splitlines()[-1]  # the device's own last word: why it failed
                    cases[f"{algo}_{auth}"] = {"error": f"{auth} run failed: {last[:200]}"}
                    log("connect: emulator %s %-4s FAILED: %s" % (algo, auth, cases[f"{algo}_{auth}"]["error"]))
                    continue
                case = cases[f"{algo}_{auth}"] = _case(rec)
                log("connect: emulator %s %-4s full %7.1f ms, bare TLS %7.1f ms (x%.2f), leaf %s, %s"
                    % (algo, auth, case["full_connect_ms"], case["bare_handshake_ms"], case["ratio"],
                       profiles[algo]["server_leaf"], profiles[algo]["cipher"]))
    return cases, profiles


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
                if auth == "x509":
                    bundle = rig.bundle("dev-x509", port=rig.broker.mtls_port, x509=True)
                else:
                    bundle = rig.bundle("conn-sas")
                rec = _measure(bundle, board, auth, connects, sas_runs, workdir / f"{algo}-{auth}.log")
                sas_us += rec["sas_us"]
                case = out["cases"][f"{algo}_{auth}"] = _case(rec)
                log("connect: %s %-4s full %7.1f ms, bare TLS %7.1f ms (x%.2f)"
                    % (algo, auth, case["full_connect_ms"], case["bare_handshake_ms"], case["ratio"]))
    out["emulator_cases"], out["emulator_tls"] = _emulator(workdir, board, connects, log)
    sas_ms = median(sas_us) / 1000
    ecc_bare = out["cases"]["ecc_sas"]["bare_handshake_ms"]
    out["sas_generate_ms"] = round(sas_ms, 3)
    out["sas_runs"] = len(sas_us)
    out["sas_ratio_to_ecc_handshake"] = ratio(sas_ms, ecc_bare)
    out["goal_met"] = all(c["goal_met"] for c in out["cases"].values())
    log("connect: SAS generation %.2f ms (median of %d)" % (sas_ms, len(sas_us)))
    return out
