"""The gateway's side of Device Update for IoT Hub (issue 24): `edgekit update create`, and
`edgekit gateway update import|deploy|cancel|status` with the Connected Cache, against a real `serve`.

Shapes are compared with Azure's own sources, named where each test checks them:
- the import manifest v5 with Azure/azure-iot-cli-extension `manifest_init_v5` (the code behind
  `az iot du update init v5`) and MicrosoftDocs import-schema.md: the `az` extension itself could not
  be installed here (azure-cli installs from PyPI, but `az extension add --name azure-iot` needs
  aka.ms, which this machine cannot reach, and the extension is on no registry);
- the desired `deviceUpdate.service` with Azure/azure-sdk-for-c az_iot_adu_client.c
  `az_iot_adu_client_parse_service_properties` and `az_iot_adu_client_parse_update_manifest`;
- the JWS with the real signed manifest in azure-sdk-for-c sdk/tests/iot/adu/test_az_iot_adu.c.
"""
import asyncio
import base64
import hashlib
import io
import json
import os
import socket
import stat
import tarfile
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from edgekit import FIRMWARE_DIR, update
from edgekit.bundle import BundleError, plan_bundle
from edgekit.cli import main
from edgekit.gateway import adu, cache, hub, registry, serve
from gateway_helpers import GatewayProcess, MqttDevice

# What az_iot_adu_client_parse_service_properties accepts inside "service" (anything else is
# AZ_ERROR_JSON_INVALID_STATE), and the order of adu_request_payload in test_az_iot_adu.c.
SDK_SERVICE = ["workflow", "updateManifest", "updateManifestSignature", "fileUrls"]
SDK_WORKFLOW = {"action", "id", "retryTimestamp"}
# az_iot_adu_client_parse_update_manifest: top level in the order of the SDK's test manifest;
# a step takes handler, files, handlerProperties (installedCriteria alone); a file fileName,
# sizeInBytes (a JSON number), hashes, relatedFiles, downloadHandler, mimeType.
SDK_MANIFEST = ["manifestVersion", "updateId", "compatibility", "instructions", "files", "createdDateTime"]
SDK_STEP = {"handler", "files", "handlerProperties"}
SDK_FILE = {"fileName", "sizeInBytes", "hashes", "relatedFiles", "downloadHandler", "mimeType"}
# The real signature in test_az_iot_adu.c, decoded: header {"alg","sjwk"}; sjwk header {"alg","kid"};
# sjwk payload {"kty","n","e","alg","kid"} (n, e standard base64); payload {"sha256"}.
MS_HEADER, MS_SJWK_HEADER = ["alg", "sjwk"], ["alg", "kid"]
MS_SJWK_PAYLOAD, MS_PAYLOAD = ["kty", "n", "e", "alg", "kid"], ["sha256"]
# manifest_init_v5 (azext_iot/deviceupdate/commands_update.py): what it puts in, printed by knack's
# format_json (sorted keys, indent 2, ensure_ascii False, then a newline).
AZ_TOP = {"manifestVersion", "createdDateTime", "updateId", "compatibility", "instructions", "files"}
AZ_STEP = {"type", "handler", "files", "handlerProperties"}
AZ_FILE = {"hashes", "filename", "sizeInBytes"}


def _b64url(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _parts(token):
    h, p, s = token.split(".")
    return json.loads(_b64url(h)), json.loads(_b64url(p)), _b64url(s), (h + "." + p).encode()


def verify_chain(signature, manifest, root):
    """What a board does (docs/updates.md): root -> sjwk -> JWS -> manifest hash. Raises on any mismatch."""
    header, payload, sig, signed = _parts(signature)
    s_header, s_payload, s_sig, s_signed = _parts(header["sjwk"])
    if s_header["kid"] != root["kid"]:
        raise ValueError(f"unknown kid {s_header['kid']}")
    rsa.RSAPublicNumbers(int.from_bytes(_b64url(root["e"]), "big"), int.from_bytes(_b64url(root["n"]), "big")) \
        .public_key().verify(s_sig, s_signed, padding.PKCS1v15(), hashes.SHA256())
    signing = rsa.RSAPublicNumbers(int.from_bytes(base64.b64decode(s_payload["e"]), "big"),
                                   int.from_bytes(base64.b64decode(s_payload["n"]), "big")).public_key()
    signing.verify(sig, signed, padding.PKCS1v15(), hashes.SHA256())
    if payload["sha256"] != base64.b64encode(hashlib.sha256(manifest.encode()).digest()).decode():
        raise ValueError("manifest hash mismatch")


@pytest.fixture(scope="module")
def app_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("app")
    (folder / "main.py").write_text("import blink\nblink.run()\n")
    (folder / "blink.py").write_text("def run():\n    print('v2 é')\n")
    (folder / "pkg").mkdir()
    (folder / "pkg" / "__init__.py").write_text("")
    return folder


@pytest.fixture(scope="module")
def made(app_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("updates")
    target, path, manifest = update.create(app_folder, out, "edgekit", "blinker", "2.0", "Contoso", "ESP32")
    return path


@pytest.fixture(scope="module")
def gw(tmp_path_factory, made):
    g = GatewayProcess(tmp_path_factory.mktemp("adu-gw"), devices=(), extra=["--cache-port", "0"])
    for d in ("lab-1", "lab-2", "field-1"):
        g.add_device(d)
    g.start()
    hub.update_tags(g.data, "lab-1", {"ADUGroup": "lab"})
    hub.update_tags(g.data, "lab-2", {"ADUGroup": "lab", "site": "A"})
    hub.update_tags(g.data, "field-1", {"ADUGroup": "field"})
    adu.import_update(g.data, made)
    yield g
    g.stop()


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


# --- edgekit update create ------------------------------------------------------------------

def test_import_manifest_is_v5_as_az_update_init_writes_it(made, app_folder, tmp_path):
    text = made.read_text()
    doc = json.loads(text)
    assert text == json.dumps(doc, ensure_ascii=False, indent=2, sort_keys=True, separators=(",", ": ")) + "\n"
    assert set(doc) == AZ_TOP and doc["manifestVersion"] == "5.0"
    assert doc["updateId"] == {"provider": "edgekit", "name": "blinker", "version": "2.0"}
    assert doc["compatibility"] == [{"manufacturer": "Contoso", "model": "ESP32"}]
    assert len(doc["createdDateTime"]) == 20 and doc["createdDateTime"].endswith("Z")  # %Y-%m-%dT%H:%M:%SZ
    [step] = doc["instructions"]["steps"]
    assert set(step) == AZ_STEP and step["type"] == "inline" and step["handler"] == "edgekit/app:1"
    assert step["handlerProperties"] == {"installedCriteria": "2.0"}
    [f] = doc["files"]
    assert set(f) == AZ_FILE and step["files"] == [f["filename"]] == ["blinker-2.0.tar"]
    data = (made.parent / f["filename"]).read_bytes()
    assert f["sizeInBytes"] == len(data)
    assert f["hashes"]["sha256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert sorted(tar.getnames()) == ["lib/blink.py", "lib/pkg/__init__.py", "main.py"]
        assert tar.extractfile("main.py").read() == b"import blink\nblink.run()\n"
    # Same sources, same bytes: the hash names the content, not the moment it was made.
    _, again, _ = update.create(app_folder, tmp_path, "edgekit", "blinker", "2.0", "Contoso", "ESP32")
    assert json.loads(again.read_text())["files"] == doc["files"]
    # The documented schema's rules are checked the same way the local service checks them.
    assert adu.check_import_manifest(doc) is doc


def test_update_create_takes_the_firmware_tree_with_an_example_and_refuses_bad_input(tmp_path):
    code, out = run("update", "create", FIRMWARE_DIR, "--provider", "edgekit", "--name", "relay", "--version",
                    "1.0.1", "--example", "relay", "--out", tmp_path)
    assert code == 0, out
    tar = tarfile.open(tmp_path / "edgekit.relay.1.0.1" / "relay-1.0.1.tar")
    names = tar.getnames()
    assert "main.py" in names and "lib/azure_edge/client.py" in names and not any("examples" in n for n in names)
    assert tar.extractfile("main.py").read() == (FIRMWARE_DIR / "examples" / "relay.py").read_bytes()
    for args, words in ((["--version", "1"], "2 to 4 dot-separated"),
                        (["--version", "1.0", "--provider", "a b"], "--provider"),
                        (["--version", "1.0", "--example", "nope"], "no example")):
        argv = ["update", "create", FIRMWARE_DIR, "--provider", "edgekit", "--name", "x", "--out", tmp_path] + args
        code, out = run(*argv)
        assert code == 1 and words in out and out.count("\n") == 1, out


def test_a_trust_update_carries_each_root_as_der_and_refuses_a_leaf(gw, tmp_path):
    from cryptography import x509
    (tmp_path / "roots").mkdir()
    (tmp_path / "roots" / "new-root.pem").write_bytes(open(gw.ca, "rb").read())
    _, path, manifest = update.create(tmp_path / "roots", tmp_path / "out", "edgekit", "roots", "1.0", handler="trust")
    [step] = manifest["instructions"]["steps"]
    assert step["handler"] == "edgekit/trust:1" and step["files"] == ["new-root.der"]
    der = (path.parent / "new-root.der").read_bytes()
    pem = x509.load_pem_x509_certificate(open(gw.ca, "rb").read())
    assert x509.load_der_x509_certificate(der).subject == pem.subject
    (tmp_path / "roots" / "server.pem").write_bytes((gw.data / "tls" / "server.cert.pem").read_bytes())
    with pytest.raises(update.UpdateError, match="not a CA certificate"):
        update.create(tmp_path / "roots", tmp_path / "out2", "edgekit", "roots", "1.0", handler="trust")


# --- import ----------------------------------------------------------------------------------

def test_a_bad_import_manifest_is_one_line_saying_what_is_wrong(made, tmp_path):
    good = json.loads(made.read_text())
    cases = [
        (lambda d: d.update(manifestVersion="4.0"), "manifestVersion"),
        (lambda d: d["updateId"].pop("version"), "updateId must hold"),
        (lambda d: d.update(extra=1), "'extra'"),
        (lambda d: d["files"][0].update(sizeInBytes="12"), "sizeInBytes"),
        (lambda d: d["files"][0]["hashes"].update(sha256="abc"), "base64 SHA-256"),
        (lambda d: d["instructions"]["steps"][0].update(files=["other.tar"]), "step 0: files"),
        (lambda d: d["instructions"]["steps"][0].update(type="reference"), "reference steps"),
        (lambda d: d.update(compatibility=[]), "compatibility"),
    ]
    data = tmp_path / "data"
    for change, words in cases:
        doc = json.loads(json.dumps(good))
        change(doc)
        path = tmp_path / "bad.importmanifest.json"
        path.write_text(json.dumps(doc))
        code, out = run("gateway", "update", "import", path, "--data", data)
        assert code == 1 and words in out and out.count("\n") == 1, (words, out)
    (tmp_path / "blinker-2.0.tar").write_bytes(b"tampered")
    (tmp_path / "ok.importmanifest.json").write_text(made.read_text())
    code, out = run("gateway", "update", "import", tmp_path / "ok.importmanifest.json", "--data", data)
    assert code == 1 and "does not match the manifest" in out and out.count("\n") == 1
    (tmp_path / "x.json").write_text("{nope")
    code, out = run("gateway", "update", "import", tmp_path / "x.json", "--data", data, "--json")
    assert code == 1 and json.loads(out)["status"] == 400 and "not JSON" in json.loads(out)["error"]
    assert not os.path.exists(data / "adu" / "updates.json")


# --- keys and the signature ------------------------------------------------------------------

def test_dev_root_is_made_once_owner_only_and_signs_a_chain_that_verifies(gw):
    folder = gw.data / "adu"
    assert not (folder / adu.ROOT_KEY).exists()  # made at the first signature (or bundle), not before
    root = adu.dev_root(gw.data)
    for name in (adu.ROOT_KEY, adu.SIGNING_KEY):
        assert stat.S_IMODE(os.stat(folder / name).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert root == adu.dev_root(gw.data) and root["kid"].startswith("EDGEKIT.DEV.") and root["kid"].endswith(".R")
    assert len(_b64url(root["n"])) == 384 and _b64url(root["e"]) == b"\x01\x00\x01"
    manifest = adu.update_manifest(adu.find_update(gw.data, "edgekit/blinker/2.0"))
    signature = adu.sign_manifest(gw.data, manifest)
    verify_chain(signature, manifest, root)
    header, payload, _, _ = _parts(signature)
    s_header, s_payload, _, _ = _parts(header["sjwk"])
    assert list(header) == MS_HEADER and list(payload) == MS_PAYLOAD and header["alg"] == "RS256"
    assert list(s_header) == MS_SJWK_HEADER and list(s_payload) == MS_SJWK_PAYLOAD
    assert s_payload["kty"] == "RSA" and s_payload["e"] == "AQAB" and s_payload["kid"] == root["kid"] + ".S"
    assert base64.b64decode(s_payload["n"], validate=True)  # standard base64, as Microsoft's
    assert not any(p.endswith("=") for p in signature.split("."))


def test_a_changed_byte_or_an_unknown_kid_breaks_the_chain(gw):
    root = adu.dev_root(gw.data)
    manifest = adu.update_manifest(adu.find_update(gw.data, "edgekit/blinker/2.0"))
    signature = adu.sign_manifest(gw.data, manifest)
    with pytest.raises(ValueError, match="hash"):
        verify_chain(signature, manifest.replace('"2.0"', '"2.1"'), root)
    h, p, s = signature.split(".")
    flipped = s[:10] + ("A" if s[10] != "A" else "B") + s[11:]
    with pytest.raises(InvalidSignature):
        verify_chain(".".join((h, p, flipped)), manifest, root)
    header = json.loads(_b64url(h))
    sh, sp, ss = header["sjwk"].split(".")
    key = json.loads(_b64url(sp))
    key["n"] = base64.b64encode(rsa.generate_private_key(65537, 2048).public_key().public_numbers().n.to_bytes(
        256, "big")).decode()
    header["sjwk"] = ".".join((sh, adu.b64url(json.dumps(key).encode()), ss))
    with pytest.raises(InvalidSignature):
        verify_chain(".".join((adu.b64url(json.dumps(header).encode()), p, s)), manifest, root)
    with pytest.raises(ValueError, match="unknown kid"):
        verify_chain(signature, manifest, dict(root, kid="ADU.200702.R"))


# --- deploy, the wire shape, the cache -------------------------------------------------------

def _connected(gw, device):
    dev = MqttDevice.from_connection_string(gw, registry.show_connection_string(gw.data, device))
    assert dev.connect() == 0
    assert dev.subscribe("$iothub/twin/PATCH/properties/desired/#") == 1
    return dev


@pytest.fixture(scope="module")
def deployed(gw):
    """The group deploy, and the desired patch lab-1 received for it."""
    dev = _connected(gw, "lab-1")
    try:
        code, out = run("gateway", "update", "deploy", "edgekit/blinker/2.0", "--group", "lab", "--data", gw.data,
                        "--json")
        assert code == 0, out
        topic, body = dev.next_message(prefix="$iothub/twin/PATCH/properties/desired/")
    finally:
        dev.close()
    return json.loads(out), json.loads(body)


def test_group_deploy_writes_the_service_exactly_as_adu_and_only_to_the_group(gw, deployed):
    result, patch = deployed
    assert [d["device"] for d in result["devices"]] == ["lab-1", "lab-2"]
    assert list(patch) == ["deviceUpdate", "$version"]
    component = patch["deviceUpdate"]
    assert list(component) == ["__t", "service"] and component["__t"] == "c"
    svc = component["service"]
    assert list(svc) == SDK_SERVICE
    assert set(svc["workflow"]) <= SDK_WORKFLOW and svc["workflow"] == {"action": 3, "id": result["workflow"]}
    text = svc["updateManifest"]
    assert isinstance(text, str) and "\\u" not in text and " " not in text
    manifest = json.loads(text)
    assert list(manifest) == SDK_MANIFEST and manifest["manifestVersion"] == "5"
    assert manifest["updateId"] == {"provider": "edgekit", "name": "blinker", "version": "2.0"}
    assert manifest["compatibility"] == [{"manufacturer": "Contoso", "model": "ESP32"}]
    [step] = manifest["instructions"]["steps"]
    assert set(step) <= SDK_STEP and list(step["handlerProperties"]) == ["installedCriteria"]
    assert step["handler"] == "edgekit/app:1" and step["files"] == list(manifest["files"])
    for fid, f in manifest["files"].items():
        assert set(f) <= SDK_FILE and type(f["sizeInBytes"]) is int and fid.startswith("f") and len(fid) == 17
    assert list(svc["fileUrls"]) == list(manifest["files"])
    verify_chain(svc["updateManifestSignature"], text, adu.dev_root(gw.data))
    twins = {d: registry_twin(gw, d) for d in ("lab-2", "field-1")}
    assert twins["lab-2"]["desired"]["deviceUpdate"]["service"]["workflow"]["id"] == result["workflow"]
    assert "deviceUpdate" not in twins["field-1"]["desired"]


def registry_twin(gw, device):
    code, out = run("gateway", "twin", device, "--data", gw.data, "--json")
    assert code == 0, out
    return json.loads(out)["twin"]


def _cache_url(gw, url, origin=True):
    # Delivery Optimization's SwapUrlHostNameForMCC: the gateway's host, the URL's port and path,
    # and ?cacheHostOrigin=<original host>.
    rest = url.split("://", 1)[1]
    hostport, path = rest.split("/", 1)
    host, _, port = hostport.partition(":")
    query = f"?cacheHostOrigin={host}" if origin is True else (f"?cacheHostOrigin={origin}" if origin else "")
    return f"http://127.0.0.1:{port or 80}/{path}{query}"


def _get(url, headers=None):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def test_the_cache_serves_by_cache_host_origin_with_ranges(gw, made, deployed):
    twin = registry_twin(gw, "lab-1")
    svc = twin["desired"]["deviceUpdate"]["service"]
    [(fid, url)] = svc["fileUrls"].items()
    cache_port = json.loads((gw.data / "gateway.json").read_text())["cache_port"]
    assert url.startswith(f"http://{adu.ORIGIN_HOST}:{cache_port}/")
    content = (made.parent / "blinker-2.0.tar").read_bytes()
    status, body, headers = _get(_cache_url(gw, url))
    assert status == 200 and body == content and headers.get("Accept-Ranges") == "bytes"
    status, body, headers = _get(_cache_url(gw, url), {"Range": "bytes=1000-"})
    assert status == 206 and body == content[1000:]
    assert headers["Content-Range"] == f"bytes 1000-{len(content) - 1}/{len(content)}"
    status, body, _ = _get(_cache_url(gw, url), {"Range": "bytes=10-19"})
    assert status == 206 and body == content[10:20]
    assert _get(_cache_url(gw, url), {"Range": f"bytes={len(content)}-"})[0] == 416
    assert _get(_cache_url(gw, url, origin=None))[0] == 400
    assert _get(_cache_url(gw, url, origin="elsewhere.example"))[0] == 404
    assert _get(_cache_url(gw, url.rsplit("/", 1)[0] + "/other.tar"))[0] == 404


def test_the_cache_takes_a_free_port_when_80_is_busy_and_says_so(tmp_path, monkeypatch):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    taken = busy.getsockname()[1]
    monkeypatch.setattr(cache, "DEFAULT_PORT", taken)  # stands for 80 held by another server
    lines = []

    async def main():
        fallback = cache.Cache(tmp_path, "127.0.0.1", None, lines.append)
        port = (await fallback.ensure())["port"]
        assert port not in (taken, 0) and (await fallback.ensure())["port"] == port
        await fallback.stop()
        with pytest.raises(cache.CacheError, match="another --cache-port"):
            await cache.Cache(tmp_path, "127.0.0.1", taken, lines.append).ensure()
        return port

    try:
        port = asyncio.run(main())
    finally:
        busy.close()
    assert lines == [f"cache: port {taken} is not available (Address already in use); serving on 127.0.0.1:{port} "
                     "instead (deployments carry that port in their file URLs)",
                     f"connected cache on http://127.0.0.1:{port}/ (update files for devices)"]


def test_the_first_deploy_starts_the_cache_of_a_serve_that_had_none(gw, made, tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "DEFAULT_PORT", 0)  # 80 on a gateway; a free port here, the same code path
    data = tmp_path / "data"
    registry.add_device(data, "solo")
    lines = []

    async def main():
        stop = asyncio.Event()
        task = asyncio.ensure_future(serve.serve(gw.pki.outdir, "localhost", data, port=0, out=lines.append,
                                                 stop=stop))
        while not (data / "gateway.json").exists() and not task.done():
            await asyncio.sleep(0.02)  # polling for readiness, as GatewayProcess.start does
        started_with_cache = any("connected cache" in line for line in lines)
        adu.import_update(data, made)
        try:
            result = await asyncio.to_thread(adu.deploy, data, "edgekit/blinker/2.0", ["solo"])
            info = json.loads((data / "gateway.json").read_text())
        finally:
            stop.set()
            await task
        return started_with_cache, result, info

    started_with_cache, result, info = asyncio.run(main())
    assert not started_with_cache and result["cache_port"] == info["cache_port"] > 0
    assert f"connected cache on http://127.0.0.1:{info['cache_port']}/ (update files for devices)" in lines
    from edgekit.gateway.store import read_twin
    service = read_twin(data, "solo")["desired"]["deviceUpdate"]["service"]
    assert service["workflow"]["id"] == result["workflow"]
    assert all(u.startswith(f"http://{adu.ORIGIN_HOST}:{info['cache_port']}/") for u in service["fileUrls"].values())


def test_deploy_to_nobody_or_an_unknown_update_is_one_line(gw):
    for args, words in ((["edgekit/blinker/2.0", "--group", "nobody"], "ADUGroup=nobody"),
                        (["edgekit/blinker/9.9", "--device", "lab-1"], "no imported update"),
                        (["edgekit/blinker/2.0", "--device", "ghost"], "no device 'ghost'"),
                        (["edgekit/blinker/2.0"], "--device (one or more) or --group")):
        code, out = run("gateway", "update", "deploy", *args, "--data", gw.data)
        assert code == 1 and words in out and out.count("\n") == 1, out


# --- status and cancel -----------------------------------------------------------------------

def _report(gw, device, agent):
    dev = MqttDevice.from_connection_string(gw, registry.show_connection_string(gw.data, device))
    assert dev.connect() == 0
    assert dev.subscribe("$iothub/twin/res/#") == 1
    try:
        dev.publish("$iothub/twin/PATCH/properties/reported/?$rid=7",
                    json.dumps({"deviceUpdate": {"__t": "c", "agent": agent}}))
        topic, _ = dev.next_message(prefix="$iothub/twin/res/")
        assert topic.startswith("$iothub/twin/res/204/")
    finally:
        dev.close()


def test_status_reads_each_agent_and_cancel_writes_action_255(gw, deployed):
    workflow = deployed[0]["workflow"]
    code, out = run("gateway", "update", "status", "--device", "lab-1", "--data", gw.data, "--json")
    assert json.loads(out)["devices"][0]["result"] == "pending"  # the agent has not reported this workflow
    installed = json.dumps({"provider": "edgekit", "name": "blinker", "version": "2.0"})
    _report(gw, "lab-1", {"deviceProperties": {"manufacturer": "Contoso", "model": "ESP32"}, "state": 0,
                          "workflow": {"action": 3, "id": workflow}, "installedUpdateId": installed,
                          "lastInstallResult": {"resultCode": 700, "extendedResultCode": 0,
                                                "stepResults": {"step_0": {"resultCode": 700,
                                                                           "extendedResultCode": 0}}}})
    _report(gw, "lab-2", {"state": 255, "workflow": {"action": 3, "id": workflow},
                          "installedUpdateId": json.dumps({"provider": "edgekit", "name": "blinker", "version": "1.0"}),
                          "lastInstallResult": {"resultCode": 0, "extendedResultCode": -2147024891,
                                                "step_0": {"resultCode": 0, "extendedResultCode": 1}}})
    code, out = run("gateway", "update", "status", "--group", "lab", "--data", gw.data, "--json")
    assert code == 0, out
    rows = {r["device"]: r for r in json.loads(out)["devices"]}
    assert rows["lab-1"]["result"] == "succeeded" and rows["lab-1"]["installed_update"] == "edgekit/blinker/2.0"
    assert rows["lab-1"]["last_install_result"]["stepResults"]["step_0"]["resultCode"] == 700
    assert rows["lab-2"]["result"] == "failed" and rows["lab-2"]["state_name"] == "failed"
    assert rows["lab-2"]["last_install_result"]["stepResults"] == {"step_0": {"resultCode": 0, "extendedResultCode": 1}}
    code, out = run("gateway", "update", "status", "--data", gw.data)
    assert code == 0 and "lab-1\tedgekit/blinker/2.0\tsucceeded" in out

    code, out = run("gateway", "update", "cancel", "--device", "lab-2", "--data", gw.data, "--json")
    assert code == 0, out
    svc = registry_twin(gw, "lab-2")["desired"]["deviceUpdate"]["service"]
    assert svc == {"workflow": {"action": 255, "id": workflow}}  # manifest, signature and URLs removed (null)
    row = json.loads(run("gateway", "update", "status", "--device", "lab-2", "--data", gw.data, "--json")[1])
    assert row["devices"][0]["result"] == "cancelling" and row["devices"][0]["deployment"]["action"] == 255
    code, out = run("gateway", "update", "cancel", "--device", "field-1", "--data", gw.data)
    assert code == 1 and "no deployment to 'field-1'" in out


# --- tags and bundles ------------------------------------------------------------------------

def test_tags_are_the_twins_kept_across_new_credentials_and_checked(gw, deployed):
    code, out = run("gateway", "device", "tag", "field-1", "ADUGroup=lab", "--remove", "nothing", "--data", gw.data)
    assert code == 0 and out.strip() == "field-1: ADUGroup=lab"
    assert adu.targets(gw.data, group="lab") == ["field-1", "lab-1", "lab-2"]
    run("gateway", "device", "tag", "field-1", "ADUGroup=field", "--data", gw.data)
    gw.add_device("field-1", replace=True)  # new credentials, the same twin and so the same tags
    assert hub.get_twin(gw.data, "field-1")["tags"] == {"ADUGroup": "field"}
    for bad in ("a.b=1", "$x=1", "novalue"):
        code, out = run("gateway", "device", "tag", "field-1", bad, "--data", gw.data)
        assert code == 1 and out.count("\n") == 1, out


def test_only_a_bundle_for_the_emulator_carries_its_dev_root(gw):
    cs = registry.show_connection_string(gw.data, "lab-1")
    planned = plan_bundle("lab-1", cs, gw.ca, adu_dev_root=str(gw.data))
    config = json.loads(planned.files["config.json"][0])
    assert config["adu"] == {"manufacturer": "edgekit", "model": "esp32"}  # a dev root turns the agent on
    root = adu.dev_root(gw.data)
    roots = json.loads(planned.files["adu_roots.json"][0])
    assert roots == {"rootKeys": {root["kid"]: {"keyType": "RSA", "n": root["n"], "e": 65537}},
                     "disabledRootKeys": [], "disabledSigningKeys": []}
    plain = plan_bundle("lab-1", cs, gw.ca, adu={"model": "relay-s3"})
    assert "adu_roots.json" not in plain.files  # Microsoft's roots only
    assert json.loads(plain.files["config.json"][0])["adu"] == {"manufacturer": "edgekit", "model": "relay-s3"}
    assert "adu" not in json.loads(plan_bundle("lab-1", cs, gw.ca).files["config.json"][0])
    real = cs.replace("GatewayHostName=localhost", "GatewayHostName=gw.contoso.com")
    with pytest.raises(BundleError, match="never for a real gateway"):
        plan_bundle("lab-1", real, gw.ca, adu_dev_root=str(gw.data))
