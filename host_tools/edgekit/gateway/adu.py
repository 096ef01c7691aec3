"""The Device Update for IoT Hub (ADU) service, played locally: import, deploy, cancel, status.

State lives under DATA/adu/ (0700): the dev root and signing keys (0600), updates.json (what was
imported), deployments.json (what was deployed to whom) and updates/<provider>/<name>/<version>/
(the files the cache serves). Deploy and cancel write the twin's desired `deviceUpdate` component
through the running gateway (hub.update_twin), exactly as ADU writes it; status reads the reported
`deviceUpdate.agent` back (hub.get_twin).

Wire shapes, from the sources (docs/updates.md lists them):
- desired: {"deviceUpdate": {"__t": "c", "service": {"workflow": {"action": 3, "id": ...},
  "updateManifest": "<JSON string>", "updateManifestSignature": "<JWS>", "fileUrls": {id: url}}}}
  in that order, as Azure/azure-sdk-for-c sdk/tests/iot/adu/test_az_iot_adu.c `adu_request_payload`;
  the members are those az_iot_adu_client.c `az_iot_adu_client_parse_service_properties` accepts.
- updateManifest: {"manifestVersion": "5", "updateId", "compatibility", "instructions": {"steps":
  [{"handler", "files": [ids], "handlerProperties": {"installedCriteria"}}]}, "files": {id: {"fileName",
  "sizeInBytes", "hashes": {"sha256"}}}, "createdDateTime"}: az_iot_adu_client_parse_update_manifest
  refuses `type` or `description` in a step and any handlerProperties member but installedCriteria;
  "fileName" as the agents read it (iot-hub-device-update ADUCITF_FIELDNAME_FILENAME), where the
  docs' update-manifest.md example says "filename".
- updateManifestSignature: JWS RS256, header {"alg": "RS256", "sjwk": <JWS>}, payload
  {"sha256": base64(SHA-256(manifest))}; sjwk: header {"alg": "RS256", "kid": <root kid>}, payload
  {"kty": "RSA", "n": base64, "e": base64, "alg": "RS256", "kid": <signing kid>}, with n and e in
  standard base64 (RFC 4648 section 4, as Microsoft's signed manifests carry them; the JWS parts
  themselves are base64url without padding). Checked on the real signature in test_az_iot_adu.c.
"""
import base64
import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import re
import shutil
import uuid

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from edgekit.certs.pem import write_atomic
from edgekit.gateway import control, registry

ADU_DIR = "adu"
ROOT_KEY = "root.key.pem"
SIGNING_KEY = "signing.key.pem"
SIGNING_SJWK = "signing.sjwk"
UPDATES = "updates.json"
DEPLOYMENTS = "deployments.json"
KEY_BITS = 3072  # Microsoft's ADU root and signing keys are RSA-3072; the board's check costs the same
KID_PREFIX = "EDGEKIT.DEV."  # ADU's are ADU.<yymmdd>.R (root) and ADU.<yymmdd>.R.S (signing)
APPLY, CANCEL = 3, 255  # workflow actions (az_iot_adu_client.h AZ_IOT_ADU_CLIENT_SERVICE_ACTION_*)
GROUP_TAG = "ADUGroup"  # device-update-groups.md: the twin tag ADU groups devices by
# The update's "origin": ADU's are http://<instance>.b.nlu.dl.adu.microsoft.com/<region>/<instance>/<id>/<file>.
# .invalid never resolves (RFC 2606), so a device that does not swap the host for the gateway's
# (microsoft/do-client SwapUrlHostNameForMCC) cannot reach anything by mistake.
ORIGIN_HOST = "adu.edgekit.invalid"
STATES = {0: "idle", 6: "deployment in progress", 255: "failed"}  # agent state (az_iot_adu_client.h)
_NAME = re.compile(r"[a-zA-Z0-9.-]{1,64}")
_VERSION = re.compile(r"\d+(?:\.\d+){1,3}")
_HANDLER = re.compile(r"\S+/\S+:\d{1,5}")
_SHA256_B64 = re.compile(r"[A-Za-z0-9+/]{43}=")
_TOP = {"$schema", "updateId", "description", "compatibility", "instructions", "files", "manifestVersion",
        "createdDateTime", "isDeployable"}


class AduError(ValueError):
    """An ADU operation that cannot be done as asked; the message says what to do."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


def adu_dir(data_dir, create=True):
    path = os.path.join(os.fspath(data_dir), ADU_DIR)
    if create:
        os.makedirs(path, mode=0o700, exist_ok=True)
    return path


@contextlib.contextmanager
def _locked(data_dir):
    # Two deploys at once must not lose one's record: one writer of DATA/adu at a time.
    with open(os.path.join(adu_dir(data_dir), ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read(data_dir, name, default):
    path = os.path.join(adu_dir(data_dir, create=False), name)  # reading leaves DATA as it is
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as e:
        raise AduError(f"{path} is unreadable ({e}); restore it or remove it and import again", 500)
    return doc if isinstance(doc, dict) else default


def _write(data_dir, name, doc):
    write_atomic(os.path.join(adu_dir(data_dir), name), (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


# --- keys and signatures ---------------------------------------------------------------------

def b64(data):
    return base64.b64encode(data).decode()


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int_bytes(n):
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


def _kid(public_key, role):
    # The key's own fingerprint in its kid: a board trusting another emulator's dev root then says
    # "unknown kid" rather than "bad signature".
    n = _int_bytes(public_key.public_numbers().n)
    return f"{KID_PREFIX}{hashlib.sha256(n).hexdigest()[:8].upper()}.{role}"


def _load_or_make_key(path):
    try:
        with open(path, "rb") as f:
            return serialization.load_pem_private_key(f.read(), None)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as e:
        raise AduError(f"{path} is unreadable ({e}); remove it to make a new one (deployed devices then "
                       "need bundles with the new dev root)", 500)
    key = rsa.generate_private_key(65537, KEY_BITS)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, even briefly
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key


def jws(header, payload, key):
    """A compact JWS, RS256 (PKCS#1 v1.5, SHA-256) over base64url(header).base64url(payload)."""
    signing_input = b64url(json.dumps(header, separators=(",", ":")).encode()) + "." + \
        b64url(json.dumps(payload, separators=(",", ":")).encode())
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + b64url(signature)


def keys(data_dir):
    """(root key, signing key, sjwk): made once under DATA/adu (keys 0600), then reused."""
    folder = adu_dir(data_dir)
    with _locked(data_dir):
        root = _load_or_make_key(os.path.join(folder, ROOT_KEY))
        signing = _load_or_make_key(os.path.join(folder, SIGNING_KEY))
        sjwk_path = os.path.join(folder, SIGNING_SJWK)
        try:
            with open(sjwk_path) as f:
                sjwk = f.read().strip()
            if json.loads(_unb64url(sjwk.split(".")[0]))["kid"] != _kid(root.public_key(), "R"):
                raise ValueError("made by another root")
        except (OSError, ValueError, KeyError, IndexError):
            numbers = signing.public_key().public_numbers()
            sjwk = jws({"alg": "RS256", "kid": _kid(root.public_key(), "R")},
                       {"kty": "RSA", "n": b64(_int_bytes(numbers.n)), "e": b64(_int_bytes(numbers.e)),
                        "alg": "RS256", "kid": _kid(root.public_key(), "R.S")}, root)
            write_atomic(sjwk_path, sjwk.encode())
    return root, signing, sjwk


def dev_root(data_dir):
    """The dev root's public key as a bundle's `adu_roots` entry: {"kid", "n", "e"} (base64url)."""
    root, _, _ = keys(data_dir)
    numbers = root.public_key().public_numbers()
    return {"kid": _kid(root.public_key(), "R"), "n": b64url(_int_bytes(numbers.n)),
            "e": b64url(_int_bytes(numbers.e))}


def has_dev_root(data_dir):
    return os.path.exists(os.path.join(os.fspath(data_dir), ADU_DIR, ROOT_KEY))


def sign_manifest(data_dir, manifest):
    """updateManifestSignature for the manifest string: the payload is its base64 SHA-256."""
    _, signing, sjwk = keys(data_dir)
    digest = hashlib.sha256(manifest.encode()).digest()
    return jws({"alg": "RS256", "sjwk": sjwk}, {"sha256": b64(digest)}, signing)


# --- import ----------------------------------------------------------------------------------

def _where(path, what):
    return f"{path}: {what}"


def check_import_manifest(doc, path="the import manifest"):
    """Refuse (AduError, one line) what ADU's import refuses in an import manifest v5 (import-schema.md)."""
    if not isinstance(doc, dict):
        raise AduError(_where(path, "is not a JSON object; make one with 'edgekit update create'"))
    extra = sorted(set(doc) - _TOP)
    if extra:
        raise AduError(_where(path, f"has '{extra[0]}', which an import manifest v5 does not allow"))
    if doc.get("manifestVersion") != "5.0":
        raise AduError(_where(path, f"manifestVersion is {doc.get('manifestVersion')!r}; this takes \"5.0\" "
                                    "(az iot du update init v5)"))
    uid = doc.get("updateId")
    if not isinstance(uid, dict) or set(uid) != {"provider", "name", "version"}:
        raise AduError(_where(path, "updateId must hold exactly provider, name and version"))
    for k in ("provider", "name"):
        if not isinstance(uid[k], str) or not _NAME.fullmatch(uid[k]):
            raise AduError(_where(path, f"updateId.{k} {uid[k]!r} must be 1 to 64 letters, digits, '.' or '-'"))
    if not isinstance(uid["version"], str) or not _VERSION.fullmatch(uid["version"]):
        raise AduError(_where(path, f"updateId.version {uid['version']!r} must be 2 to 4 dot-separated numbers"))
    compat = doc.get("compatibility")
    if not isinstance(compat, list) or not compat:
        raise AduError(_where(path, "compatibility must be a non-empty list of {property: value} objects"))
    for c in compat:
        if not isinstance(c, dict) or not 1 <= len(c) <= 5 or not all(
                isinstance(k, str) and 1 <= len(k) <= 32 and isinstance(v, str) and 1 <= len(v) <= 64
                for k, v in c.items()):
            raise AduError(_where(path, "each compatibility entry holds 1 to 5 string properties (names up to 32, "
                                        "values up to 64 characters)"))
    if "description" in doc and (not isinstance(doc["description"], str) or not 1 <= len(doc["description"]) <= 512):
        raise AduError(_where(path, "description must be 1 to 512 characters"))
    if not isinstance(doc.get("createdDateTime"), str):
        raise AduError(_where(path, "createdDateTime is missing (ISO 8601, e.g. 2026-12-07T10:00:00Z)"))
    files = doc.get("files") or []
    if not isinstance(files, list) or len(files) > 10:
        raise AduError(_where(path, "files must be a list of at most 10 file objects"))
    names = []
    for f in files:
        if not isinstance(f, dict) or not isinstance(f.get("filename"), str) or not f["filename"] \
                or len(f["filename"]) > 255 or "/" in f["filename"] or f["filename"] in (".", ".."):
            raise AduError(_where(path, "each file needs a filename (a plain name up to 255 characters)"))
        size = f.get("sizeInBytes")
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 2147483648:
            raise AduError(_where(path, f"{f['filename']}: sizeInBytes must be a number of bytes (1 to 2 GiB)"))
        sha = (f.get("hashes") or {}).get("sha256") if isinstance(f.get("hashes"), dict) else None
        if not isinstance(sha, str) or not _SHA256_B64.fullmatch(sha):
            raise AduError(_where(path, f"{f['filename']}: hashes.sha256 must be the base64 SHA-256 of the file"))
        if f["filename"] in names:
            raise AduError(_where(path, f"{f['filename']} is listed twice"))
        names.append(f["filename"])
    steps = (doc.get("instructions") or {}).get("steps") if isinstance(doc.get("instructions"), dict) else None
    if not isinstance(steps, list) or not 1 <= len(steps) <= 10:
        raise AduError(_where(path, "instructions.steps must list 1 to 10 steps"))
    for n, step in enumerate(steps):
        if not isinstance(step, dict) or step.get("type", "inline") != "inline":
            raise AduError(_where(path, f"step {n}: only inline steps are served here (reference steps need "
                                        "ADU itself, and Azure's Embedded C SDK parser refuses them)"))
        if not isinstance(step.get("handler"), str) or not _HANDLER.fullmatch(step["handler"]) \
                or not 5 <= len(step["handler"]) <= 32:
            raise AduError(_where(path, f"step {n}: handler must look like vendor/name:1 (5 to 32 characters)"))
        listed = step.get("files")
        if not isinstance(listed, list) or not listed or any(x not in names for x in listed):
            raise AduError(_where(path, f"step {n}: files must name files of the manifest's files list"))
        props = step.get("handlerProperties", {})
        if not isinstance(props, dict):
            raise AduError(_where(path, f"step {n}: handlerProperties must be an object"))
    return doc


def _file_id(uid, filename):
    # ADU's file ids look like f2f4a804ca17afbae ('f' and 16 hex digits); stable per update and file.
    name = f"{uid['provider']}/{uid['name']}/{uid['version']}/{filename}"
    return "f" + hashlib.sha256(name.encode()).hexdigest()[:16]


def update_ref(uid):
    return f"{uid['provider']}/{uid['name']}/{uid['version']}"


def _sha256_file(path):
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
            size += len(chunk)
    return b64(h.digest()), size


def import_update(data_dir, manifest_path, replace=False, now=None):
    """Import an update (its files beside the manifest) as ADU's import does; return its record."""
    manifest_path = os.fspath(manifest_path)
    try:
        with open(manifest_path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as e:
        raise AduError(f"cannot read {manifest_path}: {e.strerror or e}")
    except ValueError as e:
        raise AduError(f"{manifest_path} is not JSON ({e}); give the .importmanifest.json that "
                       "'edgekit update create' wrote")
    check_import_manifest(doc, manifest_path)
    uid = doc["updateId"]
    ref = update_ref(uid)
    source = os.path.dirname(os.path.abspath(manifest_path))
    for f in doc.get("files") or []:
        path = os.path.join(source, f["filename"])
        if not os.path.isfile(path):
            raise AduError(f"{manifest_path} lists {f['filename']}, which is not beside it; keep the update's "
                           "files in the manifest's folder")
        sha, size = _sha256_file(path)
        if size != f["sizeInBytes"] or sha != f["hashes"]["sha256"]:
            raise AduError(f"{path} does not match the manifest (size {size}, sha256 {sha}); make the update again")
    target = os.path.join(adu_dir(data_dir), "updates", uid["provider"], uid["name"], uid["version"])
    with _locked(data_dir):
        updates = _read(data_dir, UPDATES, {})
        if ref in updates and not replace:
            raise AduError(f"update {ref} is already imported; ADU refuses it too (raise the version), or "
                           "pass --replace", 409)
        shutil.rmtree(target, ignore_errors=True)
        os.makedirs(target, mode=0o700)
        files = {}
        for f in doc.get("files") or []:
            shutil.copyfile(os.path.join(source, f["filename"]), os.path.join(target, f["filename"]))
            fid = _file_id(uid, f["filename"])
            files[fid] = {"fileName": f["filename"], "sizeInBytes": f["sizeInBytes"],
                          "sha256": f["hashes"]["sha256"],
                          # ADU's path is /<region>/<instance>/<32 hex>/<file>
                          "path": f"/local/edgekit/{fid[1:]}{hashlib.sha256(ref.encode()).hexdigest()[:16]}/"
                                  f"{f['filename']}"}
        stamp = (now or datetime.datetime.now(datetime.timezone.utc))
        record = {"updateId": uid, "import_manifest": doc, "files": files, "folder": os.path.relpath(target, data_dir),
                  # 7 fractional digits, as the service's createdDateTime (test_az_iot_adu.c)
                  "imported": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond:06d}0Z"}
        updates[ref] = record
        _write(data_dir, UPDATES, updates)
    return {"update": ref, "files": [{"id": k, **v} for k, v in files.items()]}


def updates(data_dir):
    return _read(data_dir, UPDATES, {})


def deployments(data_dir):
    """{device: its last deployment record (update, workflow, action, group, time)}."""
    return _read(data_dir, DEPLOYMENTS, {})


def find_update(data_dir, ref):
    found = updates(data_dir)
    if ref not in found:
        known = ", ".join(sorted(found)) or "none yet"
        raise AduError(f"no imported update {ref!r} (give provider/name/version; imported: {known}); import it "
                       "with 'edgekit gateway update import MANIFEST'", 404)
    return found[ref]


def served_file(data_dir, path):
    """(file path on disk, size) of the imported file whose URL path is `path`, or None."""
    for record in updates(data_dir).values():
        for f in record["files"].values():
            if f["path"] == path:
                return os.path.join(os.fspath(data_dir), record["folder"], f["fileName"]), f["sizeInBytes"]
    return None


# --- the update manifest the service sends ---------------------------------------------------

def update_manifest(record):
    """The update manifest string, as ADU generates it from the import manifest (update-manifest.md)."""
    doc = record["import_manifest"]
    by_name = {f["fileName"]: fid for fid, f in record["files"].items()}
    steps = []
    for step in doc["instructions"]["steps"]:
        out = {"handler": step["handler"], "files": [by_name[n] for n in step["files"]]}
        if step.get("handlerProperties"):
            out["handlerProperties"] = step["handlerProperties"]
        steps.append(out)
    manifest = {"manifestVersion": "5", "updateId": {k: doc["updateId"][k] for k in ("provider", "name", "version")},
                "compatibility": doc["compatibility"], "instructions": {"steps": steps},
                "files": {fid: {"fileName": f["fileName"], "sizeInBytes": f["sizeInBytes"],
                                "hashes": {"sha256": f["sha256"]}} for fid, f in record["files"].items()},
                "createdDateTime": record["imported"]}
    # Compact, non-ASCII as is: a \\uXXXX escape inside the string breaks Azure's Embedded C parser.
    return json.dumps(manifest, separators=(",", ":"), ensure_ascii=False)


def file_urls(record, cache_port=80):
    """{file id: origin URL}. A port other than 80 rides in the origin URL: SwapUrlHostNameForMCC keeps
    it when it swaps the host for the gateway's, so a board reaches the local cache unchanged."""
    host = ORIGIN_HOST if cache_port == 80 else f"{ORIGIN_HOST}:{cache_port}"
    return {fid: f"http://{host}{f['path']}" for fid, f in record["files"].items()}


def service(action, workflow_id, manifest=None, signature=None, urls=None):
    """The desired deviceUpdate component: apply (3) with manifest, signature and URLs, or cancel (255)."""
    svc = {"workflow": {"action": action, "id": workflow_id}}
    # A cancel clears what the deployment set: null removes a desired member, and the C SDK's parser
    # takes null for each of these three.
    svc["updateManifest"] = manifest
    svc["updateManifestSignature"] = signature
    svc["fileUrls"] = urls
    return {"deviceUpdate": {"__t": "c", "service": svc}}


# --- targets, deploy, cancel, status ---------------------------------------------------------

def targets(data_dir, devices=(), group=None):
    """Device ids to deploy to: the ones named, or those whose tag ADUGroup is `group`."""
    doc = registry.load(data_dir)
    if bool(devices) == bool(group):
        raise AduError("give --device (one or more) or --group, not both")
    if group:
        # The twin's tags, as ADU reads them: kept by the running gateway, which a deploy needs anyway.
        from edgekit.gateway import hub
        found = sorted(d for d in doc["devices"] if (hub.get_twin(data_dir, d).get("tags") or {}).get(GROUP_TAG) == group)
        if not found:
            raise AduError(f"no device has the tag {GROUP_TAG}={group}; tag one with "
                           f"'edgekit gateway device tag DEVICE {GROUP_TAG}={group}'", 404)
        return found
    for d in devices:
        if d not in doc["devices"]:
            raise AduError(f"no device '{d}' in the registry; 'edgekit gateway device list' shows the registered ones",
                           404)
    return list(dict.fromkeys(devices))


def deploy(data_dir, ref, devices=(), group=None, hub=None):
    """Deploy an imported update: write each target's desired deviceUpdate.service; return a summary."""
    from edgekit.gateway import hub as _hub
    hub = hub or _hub
    record = find_update(data_dir, ref)
    names = targets(data_dir, devices, group)
    cache = control.call(data_dir, "adu_cache")  # the running gateway serves the files
    manifest = update_manifest(record)
    signature = sign_manifest(data_dir, manifest)
    workflow = str(uuid.uuid4())
    patch = service(APPLY, workflow, manifest, signature, file_urls(record, cache["port"]))
    done = []
    for d in names:
        version = hub.update_twin(data_dir, d, patch)
        done.append({"device": d, "desired_version": version})
        with _locked(data_dir):
            deployments = _read(data_dir, DEPLOYMENTS, {})
            deployments[d] = {"update": ref, "workflow": workflow, "action": APPLY, "group": group,
                              "time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
            _write(data_dir, DEPLOYMENTS, deployments)
    return {"update": ref, "workflow": workflow, "group": group, "devices": done, "cache_port": cache["port"]}


def cancel(data_dir, devices=(), group=None, hub=None):
    """Cancel the deployment of each target (action 255, the deployment's workflow id)."""
    from edgekit.gateway import hub as _hub
    hub = hub or _hub
    names = targets(data_dir, devices, group)
    deployed = deployments(data_dir)
    missing = [d for d in names if d not in deployed]
    if missing:
        raise AduError(f"no deployment to '{missing[0]}' to cancel; 'edgekit gateway update status' shows them", 404)
    done = []
    for d in names:
        dep = deployed[d]
        version = hub.update_twin(data_dir, d, service(CANCEL, dep["workflow"]))
        done.append({"device": d, "workflow": dep["workflow"], "desired_version": version})
        with _locked(data_dir):
            current = _read(data_dir, DEPLOYMENTS, {})
            current[d] = dict(dep, action=CANCEL)
            _write(data_dir, DEPLOYMENTS, current)
    return {"devices": done}


def _installed(agent):
    text = agent.get("installedUpdateId")
    if isinstance(text, str):
        try:
            uid = json.loads(text)  # a JSON string (az_iot_adu_client.c writes it so)
            return update_ref(uid)
        except (ValueError, TypeError, KeyError):
            return text
    return None


def _result(agent):
    last = agent.get("lastInstallResult")
    if not isinstance(last, dict):
        return None
    out = {k: last.get(k) for k in ("resultCode", "extendedResultCode", "resultDetails") if k in last}
    # 2026 head of the C SDK: lastInstallResult.stepResults.step_N; release 1.5.0: step_N directly.
    steps = last.get("stepResults") if isinstance(last.get("stepResults"), dict) else \
        {k: v for k, v in last.items() if k.startswith("step_")}
    out["stepResults"] = steps
    return out


def device_status(deployment, twin):
    """One device's deployment state from what its agent reported."""
    component = (twin.get("reported") or {}).get("deviceUpdate") or {}
    agent = component.get("agent") if isinstance(component, dict) else None
    agent = agent if isinstance(agent, dict) else {}
    state = agent.get("state")
    workflow = (agent.get("workflow") or {}).get("id") if isinstance(agent.get("workflow"), dict) else None
    installed = _installed(agent)
    out = {"state": state, "state_name": STATES.get(state, "not reported" if state is None else f"unknown ({state})"),
           "workflow_id": workflow, "installed_update": installed, "last_install_result": _result(agent),
           "deployment": deployment}
    if deployment is None:
        out["result"] = "no deployment"
    elif workflow != deployment["workflow"]:
        out["result"] = "pending"  # the agent has not taken this workflow up yet
    elif deployment["action"] == CANCEL:
        out["result"] = "cancelled" if state == 0 else "cancelling"
    elif state == 6:
        out["result"] = "in progress"
    elif state == 255:
        out["result"] = "failed"
    elif state == 0 and installed == deployment["update"]:
        out["result"] = "succeeded"
    elif state == 0:
        out["result"] = "failed"  # idle on this workflow with another update installed: rolled back
    else:
        out["result"] = "unknown"
    return out


def status(data_dir, devices=(), group=None, hub=None):
    """Per device: the deployment, the agent's state, workflow, installed update and last result."""
    from edgekit.gateway import hub as _hub
    hub = hub or _hub
    deployed = deployments(data_dir)
    names = targets(data_dir, devices, group) if devices or group else sorted(deployed)
    rows = []
    for d in names:
        twin = hub.get_twin(data_dir, d)
        rows.append({"device": d, **device_status(deployed.get(d), twin)})
    return rows
