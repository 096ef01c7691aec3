"""The update agent on the board (azure_edge.adu, adu_fetch, slots, trust), under CPython and
the real MicroPython: the twin shapes against Azure's Embedded C SDK, apply/cancel/duplicate,
the download from a Connected Cache stand-in with Range resume, a tampered file, the slot
switch with rollback on an import failure and on a crash loop, and SIGKILLs at random moments.

Every deployment is checked by the real azure_edge.adu_verify: the manifests are signed as the
local gateway's service signs them (edgekit.gateway.adu.sign_manifest), with an RSA-3072 root
made here that the device's bundle trusts in its adu_roots.json, as `edgekit bundle
--adu-dev-root` writes it."""
import base64
import hashlib
import io
import json
import random
import shutil
import signal
import subprocess
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from conftest import FIRMWARE, INTERPRETERS, ROOT

WORKER = ROOT / "tests" / "adu_worker.py"
ORIGIN = "files.example.com"


@pytest.fixture(params=["cpython", "micropython", "circuitpython"])
def runtime(request):
    return request.param


STANDINS = ROOT / "tests" / "circuitpython_standins"


def interpreter(runtime, cwd):
    """(argv, env) of the worker's interpreter. "circuitpython" is CPython under the stand-ins of
    tests/test_circuitpython.py (its hashlib, time, socketpool and ssl; no socket module), with
    the Wi-Fi of settings.toml in cwd joined as the supervisor joins it before code.py."""
    if runtime != "circuitpython":
        return INTERPRETERS[runtime](), None
    import os
    import sys
    (cwd / "settings.toml").write_text('CIRCUITPY_WIFI_SSID = "lab"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEKIT_", "PYTHON"))}
    env.update(PYTHONPATH=str(STANDINS), PYTHONDONTWRITEBYTECODE="1",
               EDGEKIT_STANDIN_NET=json.dumps({"ssid": "lab"}))
    return [sys.executable], env


@pytest.fixture
def lib(tmp_path):
    """The firmware's azure_edge as it is."""
    out = tmp_path / "lib"
    shutil.copytree(FIRMWARE / "azure_edge", out / "azure_edge")
    return out


@pytest.fixture(scope="module")
def signer(tmp_path_factory):
    """A gateway data folder whose ADU root and signing keys were made here (cryptography), and a
    bundle folder trusting that root: adu_roots.json as `edgekit bundle --adu-dev-root` writes it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from edgekit.bundle import ADU_ROOTS, adu_roots_json
    from edgekit.gateway import adu
    data = tmp_path_factory.mktemp("gwdata")
    folder = Path(adu.adu_dir(data))
    for name in (adu.ROOT_KEY, adu.SIGNING_KEY):
        key = rsa.generate_private_key(65537, 3072)
        (folder / name).write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    bundle = tmp_path_factory.mktemp("bundle")
    (bundle / ADU_ROOTS).write_bytes(adu_roots_json([adu.dev_root(data)]))
    SIGNER.update(data=data, bundle=bundle)
    return SIGNER


SIGNER = {}


@pytest.fixture(autouse=True)
def _signed(signer):
    return signer


class Cache:
    """Connected Cache played by http.server: GET with Range, the cacheHostOrigin checked;
    `drop` cuts the first answers after that many bytes; `redirect` answers 302 elsewhere."""

    def __init__(self):
        self.files = {}
        self.drop = {}
        self.redirect = None
        self.requests = []
        cache = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                url = urlsplit(self.path)
                cache.requests.append((url.path, self.headers.get("Range")))
                if parse_qs(url.query).get("cacheHostOrigin") != [ORIGIN]:
                    return self.send_error(400)
                if cache.redirect:
                    self.send_response(302)
                    self.send_header("Location", cache.redirect)
                    self.send_header("Content-Length", "0")
                    return self.end_headers()
                body = cache.files.get(url.path)
                if body is None:
                    return self.send_error(404)
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                part = body[start:]
                cut = cache.drop.pop(url.path, None)
                if cut is not None:
                    self.wfile.write(part[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(part)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def cache():
    c = Cache()
    yield c
    c.stop()


def app_tar(main_py, modules=None):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, text in [("main.py", main_py)] + sorted((modules or {}).items()):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def b64sha(data):
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def service(wid, files, version="2.0", handler="edgekit/app:1", signature=None, model="sensor"):
    """The desired `service` as ADU writes it: manifest as a string, fileUrls on the origin."""
    entries = {f"f{i}": {"fileName": name, "sizeInBytes": len(data), "hashes": {"sha256": b64sha(data)}}
               for i, (name, data) in enumerate(files)}
    manifest = {"manifestVersion": "5",
                "updateId": {"provider": "contoso", "name": "sensor", "version": version},
                "compatibility": [{"manufacturer": "contoso", "model": model}],
                "instructions": {"steps": [{"handler": handler, "files": list(entries),
                                            "handlerProperties": {"installedCriteria": version}}]},
                "files": entries, "createdDateTime": "2026-12-07T10:00:00Z"}
    from edgekit.gateway import adu
    text = json.dumps(manifest)
    return {"workflow": {"action": 3, "id": wid}, "updateManifest": text,
            "updateManifestSignature": signature or adu.sign_manifest(SIGNER["data"], text),
            "fileUrls": {fid: f"http://{ORIGIN}/content/{wid}/{fid}" for fid in entries}}


def serve(cache, svc, files):
    for fid, url in svc["fileUrls"].items():
        cache.files[urlsplit(url).path] = files[int(fid[1:])][1]


def run(runtime, lib, data, cmd, arg=None, cache=None, check=True):
    arg = dict(arg or {})
    arg.setdefault("adu_bundle", str(SIGNER["bundle"]))
    if cache is not None:
        arg["cache"] = f"127.0.0.1:{cache.port}"
    argfile = data.parent / "arg.json"
    argfile.write_text(json.dumps(arg))
    argv, env = interpreter(runtime, data.parent)
    argv += [str(WORKER), str(lib), str(data), cmd, str(argfile)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=data.parent, env=env)
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
        return json.loads(p.stdout.strip().splitlines()[-1]), p.stdout
    return p


def signed(code):
    return code - (1 << 32) if code & 0x80000000 else code


def desired(svc, version=2):
    return {"desired": {"deviceUpdate": {"__t": "c", "service": svc}, "$version": version}}


def agent_of(reports):
    return [r["deviceUpdate"]["agent"] for r in reports if "agent" in r.get("deviceUpdate", {})]


# Field names and nesting compared with Azure/azure-sdk-for-c sdk/src/azure/iot/az_iot_adu_client.c:
# az_iot_adu_client_get_agent_state_payload writes, inside the component (with "__t": "c"),
# agent {deviceProperties {manufacturer, model, contractModelId, aduVer}, compatPropertyNames,
# lastInstallResult {resultCode, extendedResultCode, resultDetails, step results}, state,
# workflow {action, id}, installedUpdateId (a string)}; _get_service_properties_response
# writes service {ac, av, value: {}}. Step results go under lastInstallResult.stepResults as
# device-update-plug-and-play.md shows (the C SDK writes step_N directly under it).
AGENT_KEYS = ["deviceProperties", "compatPropertyNames", "lastInstallResult", "state", "workflow",
              "installedUpdateId"]


def test_twin_shapes_match_the_c_sdk(runtime, lib, tmp_path):
    data = tmp_path / "data"
    svc = service("wf-shape", [("app.tar", b"x")], signature="bad")
    out, _ = run(runtime, lib, data, "twin", desired(svc, 7))
    # Acknowledged as taken (200): the deployment is checked in its own boot (adu_apply), and
    # the refusal comes in the agent's report at the next connect.
    ack = [r for r in out["reports"] if "service" in r.get("deviceUpdate", {})]
    assert ack == [{"deviceUpdate": {"__t": "c", "service": {"ac": 200, "av": 7, "value": {}}}}]
    agent = agent_of(out["reports"])[-1]
    assert set(agent) == set(AGENT_KEYS)  # JSON objects: MicroPython's dicts keep no order
    assert agent["deviceProperties"] == {"manufacturer": "contoso", "model": "sensor",
                                         "contractModelId": "dtmi:azure:iot:deviceUpdateContractModel;2",
                                         "aduVer": "DU;agent/1.0.0"}
    assert agent["compatPropertyNames"] == "manufacturer,model"
    assert agent["state"] == 255 and agent["workflow"] == {"action": 3, "id": "wf-shape"}
    res = agent["lastInstallResult"]
    assert set(res) == {"resultCode", "extendedResultCode", "resultDetails", "stepResults"}
    assert res["resultCode"] == 0 and res["extendedResultCode"] == signed(0xA0200002)  # JWSResult_BadStructure
    assert "is not a JWS" in res["resultDetails"]
    assert list(res["stepResults"]) == ["step_0"]
    assert json.loads(agent["installedUpdateId"])["provider"] == "contoso"  # a JSON string
    # the whole twin with no service: the agent alone, idle-or-failed as recorded
    out, _ = run(runtime, lib, data, "twin", {"desired": {"$version": 8}, "whole": True})
    assert [set(r["deviceUpdate"]) for r in out["reports"]] == [{"__t", "agent"}]


EXPIRY = json.dumps({"client": None, "roots": ["2027-01-07T01:00:00Z"]})


def test_the_idle_path_reports_as_the_agent_does(runtime, lib, tmp_path):
    # adu_boot.report builds the connect's report from text (no names interned for good): the
    # same JSON as adu.agent_report for a fresh agent, a failure, an installed slot, a retry, a cancel.
    data = tmp_path / "data"
    data.mkdir()
    (data / "boot.json").write_text("{}")
    res = {"resultCode": 700, "extendedResultCode": 0, "resultDetails": "",
           "stepResults": {"step_0": {"resultCode": 700, "extendedResultCode": 0, "resultDetails": ""}}}
    installed = json.dumps({"provider": "contoso", "name": "sensor", "version": "2.0"})
    states = [{"state": 0}, {},
              {"state": 255, "wf": "wf-1", "act": 3, "res": dict(res, resultCode=0)},
              {"state": 0, "wf": "wf-2", "act": 3, "res": res, "installed": installed, "slot": 1},
              {"state": 0, "wf": "wf-3", "act": 3, "retry": "2026-12-07T12:00:00Z", "installed": installed},
              {"state": 0, "wf": "wf-3", "act": 255, "installed": installed, "slot": 1}]
    out, _ = run(runtime, lib, data, "reports", {"states": states, "expiry": EXPIRY})
    for (agent, idle), st in zip(out, states):
        assert idle == agent, st
    assert json.loads(out[3][1]["deviceUpdate"]["agent"]["installedUpdateId"])["version"] == "2.0"
    (data / "boot.json").unlink()  # a USB deploy took the slot away: the factory runs again
    out, _ = run(runtime, lib, data, "reports", {"states": states[3:4]})
    assert out[0][0] == out[0][1] and json.loads(out[0][1]["deviceUpdate"]["agent"]["installedUpdateId"]) == \
        {"provider": "contoso", "name": "sensor", "version": "0.1.0"}
    assert "certExpiry" not in out[0][1]


def test_the_idle_path_loads_the_agent_only_for_a_deployment(runtime, lib, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    svc = service("wf-idle", [("app.tar", b"x")], signature="bad")
    handled = {"state": 0, "wf": "wf-idle", "act": 3, "av": 2}

    def idle(desired, state=None, whole=True):
        return run(runtime, lib, data, "idle", {"desired": desired, "whole": whole, "state": state,
                                                "expiry": EXPIRY})
    # no deviceUpdate in the twin: the agent is reported, nothing loaded; a patch: nothing at all
    out, _ = idle({"$version": 1})
    assert out["ran"] == ["adu_boot"] and not out["twin"]
    assert [set(r) for r in out["reports"]] == [{"deviceUpdate", "certExpiry"}]
    assert agent_of(out["reports"])[0]["state"] == 0
    out, _ = idle({"interval": 5, "$version": 2}, whole=False)
    assert out["ran"] == ["adu_boot"] and out["reports"] == [] and not out["twin"]
    # the workflow handled already, the twin at its version: reported alone; at a new version
    # (another desired property changed): acknowledged as the agent does, and the version kept
    out, log = idle(desired(svc, 2)["desired"], handled)
    assert out["ran"] == ["adu_boot"] and len(out["reports"]) == 1 and "already handled" in log
    out, _ = idle(desired(svc, 5)["desired"], handled)
    assert out["ran"] == ["adu_boot"] and out["reports"][0] == {
        "deviceUpdate": {"__t": "c", "service": {"ac": 200, "av": 5, "value": {}}}}
    assert out["adu"]["av"] == 5 and agent_of(out["reports"])[0]["workflow"] == {"action": 3, "id": "wf-idle"}
    # a new workflow, the service's retry, a cancel, a download to resume: the agent's
    for svc2, st in ((service("wf-new", [("app.tar", b"x")], signature="bad"), handled),
                     (dict(svc, workflow={"action": 3, "id": "wf-idle", "retryTimestamp": "2026-12-08"}),
                      handled),
                     ({"workflow": {"action": 255, "id": "wf-idle"}}, handled),
                     (svc, dict(handled, phase="download"))):
        out, _ = idle(desired(svc2, 6)["desired"], st)
        assert out["ran"][:2] == ["adu_boot", "adu"] and not out["twin"], svc2["workflow"]
        acks = [r["deviceUpdate"]["service"] for r in out["reports"] if "service" in r["deviceUpdate"]]
        assert [a["av"] for a in acks] == [6]


def test_apply_downloads_installs_and_switches_then_keeps_a_good_trial(runtime, lib, tmp_path, cache):
    data = tmp_path / "data"
    tar = app_tar("print('v2 main ran')\nimport mymod\nprint(mymod.WHO)\n", {"lib/mymod.py": "WHO = 'v2'\n"})
    files = [("app.tar", tar)]
    svc = service("wf-1", files)
    serve(cache, svc, files)
    cache.drop[f"/content/wf-1/f0"] = 700  # the link drops once: resumed with Range
    out, log = run(runtime, lib, data, "twin", desired(svc), cache=cache)
    assert out["reboot"] and out["adu"]["phase"] == "trial", log
    rngs = [r for _p, r in cache.requests]  # the whole file, then the rest from what arrived
    assert len(rngs) == 2 and rngs[0] is None and 0 < int(rngs[1][6:-1]) <= 700, rngs
    assert out["boot"]["try"] == "a" and out["boot"]["n"] == 0
    assert (data / "slots/a/main.py").exists() and (data / "slots/a/lib/mymod.py").exists()
    assert agent_of(out["reports"])[-1]["state"] == 6
    # the next boot runs slot a on trial: main.py's selector execs it
    p = run(runtime, lib, data, "select", check=False)
    assert "v2 main ran\nv2" in p.stdout, p.stdout + p.stderr
    # connected and reported on trial: kept, reported as installed
    out, _ = run(runtime, lib, data, "boot")
    assert out["boot"]["run"] == "a" and out["boot"]["try"] == ""
    agent = agent_of(out["reports"])[-1]
    assert agent["state"] == 0 and agent["lastInstallResult"]["resultCode"] == 700
    assert json.loads(agent["installedUpdateId"])["version"] == "2.0"
    # the next boot of the kept update, then the same workflow again (the twin after the
    # connect): ignored, nothing fetched (a kept trial once read as a cut before the switch)
    out, _ = run(runtime, lib, data, "boot")
    assert out["adu"]["phase"] == "" and out["adu"]["state"] == 0 and out["boot"]["run"] == "a"
    n = len(cache.requests)
    out, log = run(runtime, lib, data, "twin", desired(svc, 3), cache=cache)
    assert len(cache.requests) == n and not out["reboot"] and "already handled" in log


def test_a_decided_trial_stays_decided_at_the_next_boots(runtime, lib, tmp_path, cache):
    # Kept, the update is reported installed after any later boot too (a reset, a power cut);
    # rolled back, it stays failed. Neither is taken for a cut between install and switch.
    data = tmp_path / "data"
    files = [("app.tar", app_tar("print('v2 main ran')\n"))]
    svc = service("wf-next", files)
    serve(cache, svc, files)
    assert run(runtime, lib, data, "twin", desired(svc), cache=cache)[0]["reboot"]
    run(runtime, lib, data, "select", check=False)
    run(runtime, lib, data, "boot")  # connected on trial: kept
    for version in (3, 4):  # two more boots, the same deployment in the twin each time
        run(runtime, lib, data, "select", check=False)
        out, log = run(runtime, lib, data, "boot")
        out, log = run(runtime, lib, data, "twin", desired(svc, version), cache=cache)
        agent = agent_of(out["reports"])[-1]
        assert not out["reboot"] and "already handled" in log, log
        assert agent["state"] == 0 and agent["lastInstallResult"]["resultCode"] == 700, log
        assert json.loads(agent["installedUpdateId"])["version"] == "2.0"
    _install_trial(runtime, lib, data, cache, "import no_such_module_here\n", wid="wf-next3")
    for said in (1, 0):  # the rollback recorded at the boot after it, once
        run(runtime, lib, data, "select", check=False)
        out, log = run(runtime, lib, data, "boot")
        lines = [line for line in log.splitlines() if line.startswith("[edgekit]") and "rolled back" in line]
        assert out["adu"]["state"] == 255 and len(lines) == said, log
    assert json.loads(out["adu"]["installed"])["version"] == "2.0"


def test_tampered_file_and_redirect_are_refused(runtime, lib, tmp_path, cache):
    data = tmp_path / "data"
    files = [("app.tar", app_tar("print(1)\n"))]
    svc = service("wf-t", files)
    serve(cache, svc, files)
    path = urlsplit(svc["fileUrls"]["f0"]).path
    cache.files[path] = cache.files[path][:-1] + b"!"  # one byte changed, same size
    out, _ = run(runtime, lib, data, "twin", desired(svc), cache=cache)
    agent = agent_of(out["reports"])[-1]
    res = agent["lastInstallResult"]
    assert agent["state"] == 255 and res["extendedResultCode"] == 0x00100003  # the file's hash
    assert "app.tar does not match its SHA-256" in res["resultDetails"]
    assert not out["reboot"] and not (data / "slots").exists()
    assert not list((data / "dl").glob("*")) if (data / "dl").exists() else True
    # the same workflow again is ignored; the service's retry (a new retryTimestamp) runs it
    cache.files[path] = files[0][1]
    out, log = run(runtime, lib, data, "twin", desired(svc, 3), cache=cache)
    assert not out["reboot"] and "already handled" in log
    svc["workflow"]["retryTimestamp"] = "2026-12-07T12:00:00Z"
    out, log = run(runtime, lib, data, "twin", desired(svc, 4), cache=cache)
    assert out["reboot"], log
    assert agent_of(out["reports"])[-1]["workflow"]["retryTimestamp"] == "2026-12-07T12:00:00Z"
    cache.redirect = "http://elsewhere.example.net/x"
    svc = service("wf-r", files)
    out, _ = run(runtime, lib, data, "twin", desired(svc, 5), cache=cache)
    assert agent_of(out["reports"])[-1]["lastInstallResult"]["extendedResultCode"] == 0x7E000102


def test_cancel_and_incompatible(runtime, lib, tmp_path, cache):
    data = tmp_path / "data"
    svc = service("wf-c", [("app.tar", b"x")], model="other")
    out, _ = run(runtime, lib, data, "twin", desired(svc), cache=cache)
    res = agent_of(out["reports"])[-1]["lastInstallResult"]
    assert res["extendedResultCode"] == signed(0x80300009) and "not for contoso sensor" in res["resultDetails"]
    cancel = {"workflow": {"action": 255, "id": "wf-c"}}
    out, _ = run(runtime, lib, data, "twin", desired(cancel, 3))
    agent = agent_of(out["reports"])[-1]
    assert agent["state"] == 0 and agent["workflow"]["action"] == 255


def _install_trial(runtime, lib, data, cache, main_py, wid="wf-x"):
    files = [("app.tar", app_tar(main_py))]
    svc = service(wid, files, version="3.0")
    serve(cache, svc, files)
    out, log = run(runtime, lib, data, "twin", desired(svc), cache=cache)
    assert out["boot"]["try"], log


def test_rollback_when_the_trial_fails_to_import(runtime, lib, tmp_path, cache):
    data = tmp_path / "data"
    _install_trial(runtime, lib, data, cache, "import no_such_module_here\n")
    p = run(runtime, lib, data, "select", check=False)
    # reset: the unix port and CPython exit (SystemExit); CircuitPython's stand-in ends the process
    reset = '"ran": "reset"' in p.stdout or "[stand-in microcontroller] reset" in p.stdout
    assert "failed to import" in p.stdout and reset, p.stdout + p.stderr
    p = run(runtime, lib, data, "select", check=False)  # the reset: the good application
    assert '"ran": "factory"' in p.stdout and "running" not in p.stdout, p.stdout + p.stderr
    out, _ = run(runtime, lib, data, "boot")
    agent = agent_of([{"deviceUpdate": {"agent": a}} for a in []]) or None
    assert out["adu"]["state"] == 255 and out["adu"]["res"]["extendedResultCode"] == 0x7E000201
    assert out["boot"]["try"] == "" and out["boot"]["why"] == "import"
    assert json.loads(out["adu"]["installed"] or "null") is None  # the factory runs again


def test_rollback_after_k_crashed_boots_and_when_never_connected(runtime, lib, tmp_path, cache):
    data = tmp_path / "data"
    _install_trial(runtime, lib, data, cache, "raise RuntimeError('boom')\n")
    for _ in range(3):  # k = 3 boots on trial, each crashing
        p = run(runtime, lib, data, "select", check=False)
        assert p.returncode != 0 and "boom" in p.stdout + p.stderr, p.stdout + p.stderr
    p = run(runtime, lib, data, "select", check=False)
    assert "rolled back" in p.stdout and '"ran": "factory"' in p.stdout, p.stdout + p.stderr
    out, _ = run(runtime, lib, data, "boot")
    assert out["adu"]["res"]["extendedResultCode"] == 0x7E000202
    # a trial that never connects in its time: rolled back, reset asked
    _install_trial(runtime, lib, data, cache, "print('quiet')\n", wid="wf-y")
    out, _ = run(runtime, lib, data, "boot", {"connected": False, "expire": True})
    assert out["reboot"] and out["boot"]["why"] == "connect" and out["boot"]["try"] == ""


# --- end to end: firmware/main.py under the real MicroPython, a broker, the hub's twin ---------

from device_helpers import Device, Hub, readings_of, wait_for, write_bundle  # noqa: E402
from device_helpers import board, broker, pki  # noqa: E402,F401  (fixtures)


@pytest.fixture
def mp_board(board):
    """The board's /lib as deploy builds it (the real verifier in it)."""
    return board


def adu_bundle(tmp_path, pki, port, device, adu, **config):
    """A device bundle with the agent on, trusting the test's root as a dev root."""
    bundle = write_bundle(tmp_path, pki, port, device=device, adu=adu, **config)
    shutil.copy(SIGNER["bundle"] / "adu_roots.json", bundle / "adu_roots.json")
    return bundle


# The device tests' own heap (DEVICE_HEAP, 112K): a deployment needs no more than the device,
# since it runs in a boot of its own (adu_apply). It needed 128K while it ran beside the client
# (136K before the signature check ran ahead of the deployment's code); bench/update.py's
# "device" section has the smallest figures.
HEAP = "112K"


def test_end_to_end_update_through_the_twin_on_micropython(broker, pki, mp_board, tmp_path, cache):
    main = (FIRMWARE / "main.py").read_text().replace("app.run(read_sensors)",
                                                      "print('[app] v2 running')\napp.run(read_sensors)")
    files = [("app.tar", app_tar(main))]
    svc = service("wf-e2e", files)
    serve(cache, svc, files)
    hub = Hub(broker.port, pki[0].root_cert, desired={"deviceUpdate": {"__t": "c", "service": svc}})
    hub.start()
    adu = {"manufacturer": "contoso", "model": "sensor", "cache": f"127.0.0.1:{cache.port}"}
    bundle = adu_bundle(tmp_path, pki[0], broker.port, "adu-e2e", adu, interval=30)
    devs = []
    try:
        devs.append(Device("micropython", bundle, mp_board, heap=HEAP, logfile=tmp_path / "boot1.log"))
        # takes the deployment, writes it to flash and resets (the unix port exits)
        wait_for(lambda: not devs[0].alive(), 30, "the reset after taking the deployment")
        assert "rebooting to apply it" in devs[0].console(), devs[0].console()
        with hub.lock:
            first = list(hub.reported)
        assert {"deviceUpdate": {"__t": "c", "service": {"ac": 200, "av": 1, "value": {}}}} in first
        assert any(r.get("deviceUpdate", {}).get("agent", {}).get("state") == 6 for r in first)
        # the deployment's own boot: downloads, installs into slot a, switches, and resets
        devs.append(Device("micropython", bundle, mp_board, heap=HEAP, logfile=tmp_path / "boot2.log"))
        wait_for(lambda: not devs[1].alive(), 30, "the reset after the install")
        text = devs[1].console()
        assert "rebooting into it on trial" in text and "connected to" not in text, text
        devs.append(Device("micropython", bundle, mp_board, heap=HEAP, logfile=tmp_path / "boot3.log"))
        devs[2].wait_log(r"\[app\] v2 running", 15)
        devs[2].wait_log("trial application connected and reported: kept", 20)

        def installed():
            with hub.lock:
                for r in hub.reported:
                    a = r.get("deviceUpdate", {}).get("agent", {})
                    if a.get("lastInstallResult", {}).get("resultCode") == 700:
                        return a
        agent = wait_for(installed, 15, "the agent reporting the update installed")
        assert agent["state"] == 0 and json.loads(agent["installedUpdateId"])["version"] == "2.0"
        assert agent["workflow"] == {"action": 3, "id": "wf-e2e"}
        rep = [r for r in hub.reported if "certExpiry" in r][-1]["certExpiry"]
        assert rep["client"] is None and rep["roots"][0].endswith("Z")
        # the model id ADU finds its agents by, announced in the MQTT username
        assert "model-id=dtmi%3Aazure%3Aiot%3AdeviceUpdateContractModel%3B2" in \
            (broker.dir / "mosquitto.log").read_text(errors="replace")
    finally:
        for d in devs:
            d.stop()
        hub.stop()


# --- power cuts: the real MicroPython SIGKILLed at random moments --------------------------

def _whole_app(n=40):
    """An application of n modules whose main.py checks every one: it prints WHOLE v2 only
    when all of them are there, each complete."""
    mods = {f"lib/m{i}.py": f"V = 'v2'\nPAD = {'x' * 2000!r}\nN = {i}\n" for i in range(n)}
    main = ("ok = True\n" + "".join(f"import m{i}\nok = ok and m{i}.V == 'v2' and m{i}.N == {i} "
                                     f"and len(m{i}.PAD) == 2000\n" for i in range(n))
            + "print('WHOLE v2' if ok else 'TORN')\n")
    return app_tar(main, mods)


def _booted(runtime, lib, data):
    # A boot: main.py's selector, then the agent's boot (a trial connected at once is kept).
    p = run(runtime, lib, data, "select", check=False)
    out = p.stdout + p.stderr
    assert "Traceback" not in out and "TORN" not in out, out
    run(runtime, lib, data, "boot")
    return "WHOLE v2" in out


def test_power_cut_anywhere_boots_old_or_new_whole(lib, tmp_path, cache):
    runtime = "micropython"
    files = [("app.tar", _whole_app())]
    svc = service("wf-cut", files)
    serve(cache, svc, files)
    arg = desired(svc)
    # how long a whole deployment takes here, to spread the cuts over it
    (tmp_path / "probe").mkdir()
    t0 = time.monotonic()
    out, _ = run(runtime, lib, tmp_path / "probe" / "data", "twin", arg, cache=cache)
    span = time.monotonic() - t0
    assert out["reboot"]
    rnd = random.Random(24)
    outcomes, phases = set(), set()
    for i in range(12):
        data = tmp_path / f"cut{i}" / "data"
        data.parent.mkdir()
        a = dict(arg, cache=f"127.0.0.1:{cache.port}", adu_bundle=str(SIGNER["bundle"]))
        (data.parent / "arg.json").write_text(json.dumps(a))
        proc = subprocess.Popen(INTERPRETERS[runtime]() + [str(WORKER), str(lib), str(data), "twin",
                                                           str(data.parent / "arg.json")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=data.parent)
        time.sleep(rnd.uniform(0, span))  # the moment of the cut
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        try:
            phases.add(json.loads((data / "adu.json").read_text()).get("phase"))
        except (OSError, ValueError):
            phases.add(None)  # cut before the first record
        outcomes.add(_booted(runtime, lib, data))  # old or new, whole
        # the twin again after the reconnect: the deployment resumes and completes
        out, log = run(runtime, lib, data, "twin", arg, cache=cache)
        if out["reboot"]:
            assert _booted(runtime, lib, data), log
        assert run(runtime, lib, data, "select", check=False).stdout.count("WHOLE v2") == 1
    print(f"cuts over {span:.2f} s in phases {sorted(map(str, phases))}: booted {sorted(outcomes)}"
          " (False: the old application)")


# --- edgekit/trust:1: a second gateway root, then the switch to it --------------------------

class TlsGateway:
    """A TLS listener that completes handshakes with one server certificate, then closes."""

    def __init__(self, cert, key):
        import socket
        import ssl
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert), str(key))
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.done = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.done:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as s:
                    s.recv(1)
            except OSError:
                pass

    def stop(self):
        self.done = True
        self.sock.close()


@pytest.fixture(scope="module")
def two_pkis(tmp_path_factory):
    from device_helpers import make_pki
    return make_pki(tmp_path_factory.mktemp("old")), make_pki(tmp_path_factory.mktemp("new"))


def _der(pem_path, out):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    cert = x509.load_pem_x509_certificate(Path(pem_path).read_bytes())
    out.write_bytes(cert.public_bytes(Encoding.DER))
    return cert


def test_trust_update_adds_a_root_then_drops_the_old_after_a_verified_handshake(runtime, lib, tmp_path,
                                                                                 two_pkis):
    (old, old_server), (new, new_server) = two_pkis
    old_cert = _der(old.root_cert, tmp_path / "old.der")
    new_cert = _der(new.root_cert, tmp_path / "new.der")
    data = tmp_path / "data"
    arg = {"bundle_ca": str(tmp_path / "old.der"), "add": [str(tmp_path / "new.der")]}
    # the gateway has not switched yet: both roots trusted, the probe through the new one fails
    gw = TlsGateway(old_server.cert, old_server.key)
    try:
        out, log = run(runtime, lib, data, "trust", dict(arg, port=gw.port))
    finally:
        gw.stop()
    assert out["roots"] == 2 and out["probe"] and out["union"] is True, log
    assert out["state"]["pending"] and out["state"]["old"] is True, log
    # expiry of each trusted root, as the certificates say
    want = [c.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ") for c in (old_cert, new_cert)]
    assert out["expiry"]["roots"] == want
    # the gateway switched to the new root: still verified, and the old root goes
    gw = TlsGateway(new_server.cert, new_server.key)
    try:
        out, log = run(runtime, lib, data, "trust", dict(arg, port=gw.port, add=[]))
        assert out["union"] is True and out["state"] == {"pending": [], "old": False,
                                                         "roots": out["state"]["roots"]}, log
        assert "old ones are dropped" in log
        out, log = run(runtime, lib, data, "trust", dict(arg, port=gw.port, add=[]))
        assert out["roots"] == 1 and not out["probe"] and out["union"] is True, log
    finally:
        gw.stop()


def test_trust_deployment_through_the_twin(runtime, lib, tmp_path, cache, two_pkis):
    (_old, _s), (new, _ns) = two_pkis
    der = _der(new.root_cert, tmp_path / "new.der").public_bytes(
        __import__("cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]).Encoding.DER)
    data = tmp_path / "data"
    files = [("gateway-root-2.der", der)]
    svc = service("wf-trust", files, version="root-2", handler="edgekit/trust:1")
    serve(cache, svc, files)
    out, log = run(runtime, lib, data, "twin", desired(svc), cache=cache)
    agent = agent_of(out["reports"])[-1]
    assert agent["state"] == 0 and agent["lastInstallResult"]["resultCode"] == 700, log
    assert json.loads(agent["installedUpdateId"])["version"] == "root-2"
    assert not out["reboot"] and not (data / "slots").exists()  # the application is untouched
    state = json.loads((data / "trust" / "state.json").read_text())
    assert len(state["pending"]) == 1 and state["old"] is True


def test_no_heap_for_the_deployment_is_reported_failed_and_the_device_boots_on(lib, tmp_path, cache):
    # The deployment's own boot (adu_apply) out of heap: one console line, the failure recorded
    # (state 255, 0x7E000305, not left pending for ever), the job dropped so that the boot goes
    # on into the application; the agent reports it at the next connect.
    files = [("app.tar", app_tar("print(1)\n"))]
    svc = service("wf-oom", files)
    serve(cache, svc, files)
    data = tmp_path / "data"
    out, _ = run("micropython", lib, data, "take", desired(svc), cache=cache)
    assert agent_of(out["reports"])[-1]["state"] == 6 and (data / "job.json").exists()
    (data.parent / "arg.json").write_text(json.dumps({}))
    p = subprocess.run([INTERPRETERS["micropython"]()[0], "-X", "heapsize=" + OOM_HEAP, str(WORKER), str(lib),
                        str(data), "apply", str(data.parent / "arg.json")],
                       capture_output=True, text=True, timeout=60, cwd=data.parent)
    assert p.stdout.count("update refused: not enough heap for the deployment") == 1, p.stdout + p.stderr
    assert '"applied": true' in p.stdout and not (data / "job.json").exists(), p.stdout + p.stderr
    out, log = run("micropython", lib, data, "twin", dict(desired(svc, 3), whole=True), cache=cache)
    agent = agent_of(out["reports"])[-1]
    assert agent["state"] == 255 and agent["workflow"] == {"action": 3, "id": "wf-oom"}, log
    assert agent["lastInstallResult"]["extendedResultCode"] == signed(0x7E000305)
    assert not out["reboot"] and "already handled" in log  # not taken again


# The worker compiles the agent from its sources here: at 88K-112K it gets as far as the
# deployment's boot and no further (below, importing adu_apply finds no heap; from 120K the
# deployment completes): the middle of that range, so a few hundred bytes either way still hold.
OOM_HEAP = "100K"


def test_mcc_url_swaps_the_host_keeps_the_urls_port(fw):
    # Delivery Optimization's SwapUrlHostNameForMCC: the gateway's host, the original host as
    # cacheHostOrigin; a port in the URL (the local gateway's cache off 80) is kept.
    got = fw.run("from azure_edge.adu_fetch import mcc_url\nresult = [mcc_url(u, g) for u, g in ["
                 "('http://adu.edgekit.invalid/local/a.tar', 'gw.local'),"
                 "('http://adu.edgekit.invalid:8081/local/a.tar', 'gw.local'),"
                 "('http://adu.edgekit.invalid:80/x?y=1', 'gw.local'),"
                 "('http://adu.edgekit.invalid:8081/x', '127.0.0.1:9000')]]")
    assert got == ["http://gw.local/local/a.tar?cacheHostOrigin=adu.edgekit.invalid",
                   "http://gw.local:8081/local/a.tar?cacheHostOrigin=adu.edgekit.invalid",
                   "http://gw.local/x?y=1&cacheHostOrigin=adu.edgekit.invalid",
                   "http://127.0.0.1:9000/x?cacheHostOrigin=adu.edgekit.invalid"]


def test_state_files_cut_between_remove_and_rename_read_from_their_new_copy(tmp_path):
    # On FAT (CircuitPython) a rename does not replace: the writer removes, then renames. A cut
    # between leaves only the .new copy, which the agent's and the trust handler's state must be
    # read from, as slots.read does for boot.json, not taken for "no deployment".
    from azure_edge import adu, slots, trust

    d = str(tmp_path)
    (tmp_path / "trust").mkdir()
    (tmp_path / "adu.json.new").write_text(json.dumps({"state": 6, "phase": "trial"}))
    (tmp_path / "trust" / "state.json.new").write_text(json.dumps({"pending": ["r"], "old": False, "roots": []}))
    (tmp_path / "boot.json.new").write_text(json.dumps({"run": "b", "try": "", "n": 0}))
    assert adu.load(d)["phase"] == "trial"
    assert trust._state(d)["pending"] == ["r"]
    assert slots.read(d)["run"] == "b"


def test_a_resumed_unpack_hashes_what_the_slot_holds_and_drops_what_it_did_not(tmp_path):
    # adu_fetch.Unpack writes a .tar's members straight into the slot and the rest to the part
    # file. After a reset the part may know fewer members than the slot holds (the part reaches
    # the flash when closed): the replay hashes the part and the known members' files, removes
    # any other file, and the download goes on from there to the whole archive's hash.
    from azure_edge.adu_fetch import Failed, Unpack

    tar = app_tar("print('v2')\n", {"lib/a.py": "A = 1\n" * 300, "lib/b.py": "B = 2\n", "lib/empty.py": ""})
    slot, part = tmp_path / "slot", tmp_path / "f0.part"
    slot.mkdir()
    cut = 512 + 512 + 512 + 700  # main.py whole, lib/a.py's header and 700 bytes of it
    u = Unpack(str(slot))
    with open(part, "wb") as f:
        u.feed(memoryview(tar)[:cut], f)
    u.close()  # as a dropped link closes both
    assert (slot / "lib" / "a.py").stat().st_size == 700 and part.stat().st_size == 3 * 512 - 12
    (slot / "lib" / "evil.py").write_text("import os\n")  # a stream's file the part never knew
    h = hashlib.sha256()
    u = Unpack(str(slot))
    assert u.replay(str(part), h, bytearray(256)) == cut
    assert not (slot / "lib" / "evil.py").exists() and (slot / "main.py").exists()
    with open(part, "ab") as f:
        u.feed(memoryview(tar)[cut:], f)
    u.close()
    h.update(tar[cut:])
    assert h.digest() == hashlib.sha256(tar).digest()
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        for m in t.getmembers():
            assert (slot / m.name).read_bytes() == t.extractfile(m).read(), m.name
    assert sorted(p.name for p in (slot / "lib").iterdir()) == ["a.py", "b.py", "empty.py"]
    # a member outside the slot is refused as it streams, before anything is written for it
    bad = io.BytesIO()
    with tarfile.open(fileobj=bad, mode="w", format=tarfile.USTAR_FORMAT) as t:
        info = tarfile.TarInfo("../main.py")
        info.size = 1
        t.addfile(info, io.BytesIO(b"x"))
    with open(tmp_path / "bad.part", "wb") as f, pytest.raises(Failed, match="unsafe path"):
        Unpack(str(slot)).feed(memoryview(bad.getvalue()), f)
    assert not (tmp_path / "main.py").exists()
    # nor may one write the slot's .id, the mark the install writes once the hash has matched
    with open(tmp_path / "bad.part", "wb") as f, pytest.raises(Failed, match="unsafe path"):
        Unpack(str(slot)).feed(memoryview(app_tar("print(1)\n", {".id": "{}"})), f)
    assert not (slot / ".id").exists()
