"""ADU update manifest verification (firmware/azure_edge/adu_verify.py) under CPython and the real
MicroPython: manifests signed by Microsoft's real keys (tests/data/adu/README.md says where each
came from) verify with Microsoft's published roots; every tampering is refused with ADU's result
code and one console line. A key pair of our own gives the cases real vectors cannot."""
import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

DATA = Path(__file__).parent / "data" / "adu"
FIRMWARE = Path(__file__).parent.parent / "firmware" / "azure_edge"

# ADU's extended result codes, as the signed 32-bit numbers the twin carries.
BAD_STRUCTURE, UNSUPPORTED_ALG, BAD_SIGNATURE = 0xA0200002, 0xA0200003, 0xA0200004
DISABLED_ROOT, UNKNOWN_ROOT, BAD_HEADER, BAD_SIGNING_KEY = 0xA0200005, 0xA0200006, 0xA0200008, 0xA020000B
DISABLED_SIGNING_KEY, MANIFEST_HASH, BAD_MANIFEST = 0xA0000005, 0x80300001, 0x80300009
FILE_HASH_EMPTY, FILE_HASH = 0x00100001, 0x00100003


def signed(code):
    return code - (1 << 32) if code & 0x80000000 else code


def vector(name):
    return (DATA / f"{name}.manifest.json").read_text(), (DATA / f"{name}.jws").read_text()


def package(name):
    return (DATA / f"{name}.json").read_text()


def verify(fw, manifest, sig, roots=None, pkg=None, compat=None):
    """check() in the firmware: {"ok": manifest dict} or {"code", "extended", "msg"}."""
    if pkg is not None:
        trust = f"roots, disabled = r.from_package(json.loads({pkg!r}))"
    else:
        trust = f"roots, disabled = {roots!r} or r.MICROSOFT, ()"
    fit = f"v.check_compat(got, *{compat!r})" if compat else ""
    return fw.run(f"""
import json
from azure_edge import adu_roots as r, adu_verify as v
{trust}
try:
    got = v.check({manifest!r}, {sig!r}, roots, disabled)
    {fit}
    result = {{"ok": got}}
except v.Refused as e:
    result = {{"code": e.code, "extended": e.extended, "msg": e.msg}}
""")


def refused(got, extended, words):
    assert "ok" not in got, got
    assert (got["code"], got["extended"]) == (0, signed(extended)), got
    assert "\n" not in got["msg"] and len(got["msg"]) < 120, got["msg"]
    assert words in got["msg"] and f"0x{extended:08X}" in got["msg"], got["msg"]


def b64u(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64u(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def flip(text, at):
    """text with the base64 character at `at` changed to another one of the same alphabet."""
    return text[:at] + ("B" if text[at] != "B" else "C") + text[at + 1:]


def rebuild(sig, header=None, sjwk_header=None, jwk=None):
    """The real JWS with its header, the sjwk's header or the signing key edited; signatures kept."""
    h, p, s = sig.split(".")
    outer = json.loads(unb64u(h))
    kh, kp, ks = outer["sjwk"].split(".")
    if sjwk_header:
        kh = b64u(json.dumps({**json.loads(unb64u(kh)), **sjwk_header}).encode())
    if jwk:
        kp = b64u(json.dumps({**json.loads(unb64u(kp)), **jwk}).encode())
    outer = {**outer, "sjwk": f"{kh}.{kp}.{ks}", **(header or {})}
    return f"{b64u(json.dumps(outer, separators=(',', ':')).encode())}.{p}.{s}"


# --- Microsoft's real signatures -----------------------------------------------------------

@pytest.mark.parametrize("name,update_id", [
    ("freertos_esp32", {"provider": "ESPRESSIF", "name": "ESP32-Azure-IoT-Kit", "version": "1.1"}),
    ("agent_script_handler", {"provider": "Contoso", "name": "VacuumBundleUpdate", "version": "1.0"}),
])
def test_real_manifests_verify_with_microsofts_roots(fw, name, update_id):
    got = verify(fw, *vector(name))
    assert got["ok"]["updateId"] == update_id


def test_real_signature_over_an_edited_manifest_is_refused(fw):
    # The Embedded C SDK's test pairs a real signature with a manifest edited after signing (its
    # parser never checks): the chain verifies, the manifest's SHA-256 does not.
    refused(verify(fw, *vector("sdk_for_c_contoso")), MANIFEST_HASH, "manifest does not match")


def test_changed_byte_in_the_manifest(fw):
    manifest, sig = vector("freertos_esp32")
    refused(verify(fw, manifest.replace("866128", "866129"), sig), MANIFEST_HASH, "manifest does not match")


@pytest.mark.parametrize("part,words", [(0, "JWS header"), (2, "manifest signature")])
def test_changed_byte_in_the_signature(fw, part, words):
    manifest, sig = vector("freertos_esp32")
    parts = sig.split(".")
    parts[part] = flip(parts[part], len(parts[part]) // 2)
    got = verify(fw, manifest, ".".join(parts))
    if part == 0:  # the header's base64url now decodes to JSON no more, or to another sjwk
        assert got.get("extended") in (signed(BAD_HEADER), signed(BAD_STRUCTURE), signed(BAD_SIGNATURE)), got
    else:
        refused(got, BAD_SIGNATURE, words)


def test_changed_byte_in_the_signing_key(fw):
    manifest, sig = vector("freertos_esp32")
    n = json.loads(unb64u(json.loads(unb64u(sig.split(".")[0]))["sjwk"].split(".")[1]))["n"]
    refused(verify(fw, manifest, rebuild(sig, jwk={"n": flip(n, 100)})), BAD_SIGNATURE,
            "signing key signature does not verify")


def test_changed_byte_in_the_sjwk_signature(fw):
    manifest, sig = vector("agent_script_handler")
    h, p, s = sig.split(".")
    outer = json.loads(unb64u(h))
    kh, kp, ks = outer["sjwk"].split(".")
    outer["sjwk"] = f"{kh}.{kp}.{flip(ks, 7)}"
    refused(verify(fw, manifest, f"{b64u(json.dumps(outer).encode())}.{p}.{s}"), BAD_SIGNATURE,
            "signing key signature")


def test_unknown_kid(fw):
    manifest, sig = vector("freertos_esp32")
    refused(verify(fw, manifest, rebuild(sig, sjwk_header={"kid": "ADU.200704.R"})), UNKNOWN_ROOT,
            "root key ADU.200704.R is not trusted")
    only_703 = {"ADU.200703.R": json.loads(json.dumps(root_list()["ADU.200703.R"]))}
    refused(verify(fw, manifest, sig, roots=only_703), UNKNOWN_ROOT, "ADU.200702.R is not trusted")


def root_list():
    ns = {}
    exec((FIRMWARE / "adu_roots.py").read_text(), ns)
    return ns["MICROSOFT"]


def test_disabled_root_kid_from_the_agents_root_key_package(fw):
    manifest, sig = vector("freertos_esp32")
    refused(verify(fw, manifest, sig, pkg=package("disabledRootKeyProd")), DISABLED_ROOT,
            "root key ADU.200702.R is disabled")


def test_disabled_signing_key_from_the_agents_root_key_package(fw):
    # The agent's test package disables ADU.210609.R.S by the SHA-256 of its DER RSAPublicKey:
    # the FreeRTOS vector's signing key is refused, the agent's (ADU.200702.R.S) still verifies.
    pkg = package("disabledSigningKeyProd")
    refused(verify(fw, *vector("freertos_esp32"), pkg=pkg), DISABLED_SIGNING_KEY,
            "signing key ADU.210609.R.S is disabled")
    assert verify(fw, *vector("agent_script_handler"), pkg=pkg)["ok"]["manifestVersion"] == "2.0"


@pytest.mark.parametrize("edit,words", [
    ({"header": {"alg": "RS384"}}, "alg is not RSA RS256"),
    ({"sjwk_header": {"alg": "HS256"}}, "sjwk alg is not RS256"),
    ({"jwk": {"alg": "none"}}, "alg is not RSA RS256"),
])
def test_wrong_alg(fw, edit, words):
    manifest, sig = vector("freertos_esp32")
    got = verify(fw, manifest, rebuild(sig, **edit))
    if "jwk" in edit:  # the key is under the root's signature: an edit breaks that first
        refused(got, BAD_SIGNATURE, "signing key signature")
    else:
        refused(got, UNSUPPORTED_ALG, words)


@pytest.mark.parametrize("sig,extended,words", [
    ("", BAD_STRUCTURE, "not a JWS"),
    ("a.b", BAD_STRUCTURE, "not a JWS"),
    ("a.b.c.d", BAD_STRUCTURE, "not a JWS"),
    ("e30.e30.", BAD_STRUCTURE, "not a JWS"),
    ("!!!.e30.AA", BAD_HEADER, "JWS header is not base64url"),
    (b64u(b"[1]") + ".e30.AA", BAD_HEADER, "JWS header is not a JSON object"),
    ("e30.e30.AA", BAD_STRUCTURE, "JWS header has no sjwk"),
])
def test_malformed_signatures(fw, sig, extended, words):
    refused(verify(fw, "{}", sig), extended, words)


def test_compatibility_with_the_bundles_manufacturer_and_model(fw):
    manifest, sig = vector("freertos_esp32")
    assert verify(fw, manifest, sig, compat=["ESPRESSIF", "ESP32-Azure-IoT-Kit"])["ok"]
    refused(verify(fw, manifest, sig, compat=["ESPRESSIF", "ESP32-S3-Box"]), BAD_MANIFEST,
            "update is not for ESPRESSIF ESP32-S3-Box")


@pytest.mark.parametrize("entries, fits", [
    ([{"manufacturer": "Contoso", "model": "S3"}], True),    # import manifest v5 (az iot du update init)
    ([{"model": "S3"}], True),                               # an entry naming fewer properties
    ([{"manufacturer": "contoso", "model": "S3"}], False),   # values compared exactly
    ([{"manufacturer": "Contoso", "model": "S3", "os": "rtos"}], False),  # a property not reported
    ([{}], False),
    ([{"model": "X"}, {"deviceManufacturer": "Contoso", "deviceModel": "S3"}], True),
])
def test_compatibility_by_the_reported_property_names(fw, entries, fits):
    got = fw.run(f"""
from azure_edge import adu_verify as v
try:
    v.check_compat({{"compatibility": {entries!r}}}, "Contoso", "S3")
    result = True
except v.Refused as e:
    result = e.msg
""")
    assert got is True if fits else "update is not for Contoso S3" in got, got


# --- a key pair of our own: what real vectors cannot show ----------------------------------

@pytest.fixture(scope="module")
def keys():
    return (rsa.generate_private_key(65537, 3072), rsa.generate_private_key(65537, 2048),
            rsa.generate_private_key(3, 2048), rsa.generate_private_key(65537, 1024))


def int_bytes(i):
    return i.to_bytes((i.bit_length() + 7) // 8, "big")


def jws(header, payload, key):
    h, p = b64u(json.dumps(header).encode()), b64u(payload)
    return f"{h}.{p}.{b64u(key.sign(f'{h}.{p}'.encode(), padding.PKCS1v15(), hashes.SHA256()))}"


def ours(manifest, root, signer, jwk=None, claim=None):
    """A signature over `manifest` as the ADU service makes it, under our root TEST.R."""
    pub = signer.public_key().public_numbers()
    key = {"kty": "RSA", "n": base64.b64encode(int_bytes(pub.n)).decode(),
           "e": base64.b64encode(int_bytes(pub.e)).decode(), "alg": "RS256", "kid": "TEST.S", **(jwk or {})}
    sjwk = jws({"alg": "RS256", "kid": "TEST.R"}, json.dumps(key).encode(), root)
    digest = base64.b64encode(hashlib.sha256(manifest.encode()).digest()).decode()
    body = json.dumps(claim if claim is not None else {"sha256": digest}).encode()
    return jws({"alg": "RS256", "sjwk": sjwk}, body, signer)


def our_roots(root):
    return {"TEST.R": {"kty": "RSA", "n": b64u(int_bytes(root.public_key().public_numbers().n)), "e": 65537}}


MANIFEST = json.dumps({"manifestVersion": "5", "updateId": {"provider": "edgekit", "name": "Zürich-app",
                       "version": "2"}, "compatibility": [{"deviceManufacturer": "edgekit", "deviceModel": "esp32"}]},
                      ensure_ascii=False)


def test_our_key_pair_verifies_a_utf8_manifest(fw, keys):
    root, signer = keys[:2]
    got = verify(fw, MANIFEST, ours(MANIFEST, root, signer), roots=our_roots(root))
    assert got["ok"]["updateId"]["name"] == "Zürich-app"


def test_our_root_is_not_microsofts(fw, keys):
    root, signer = keys[:2]
    refused(verify(fw, MANIFEST, ours(MANIFEST, root, signer)), UNKNOWN_ROOT, "TEST.R is not trusted")


@pytest.mark.parametrize("case,extended,words", [
    ("e=3", BAD_SIGNING_KEY, "not an RSA-2048..3072 key with e=65537"),
    ("1024-bit", BAD_SIGNING_KEY, "not an RSA-2048..3072 key"),
    ("kty", UNSUPPORTED_ALG, "alg is not RSA RS256"),
    ("n in base64url", BAD_SIGNING_KEY, "signing key n is not base64"),
    ("no sha256", MANIFEST_HASH, "JWS payload has no sha256"),
    ("short sha256", MANIFEST_HASH, "manifest does not match"),
    ("sha256 as hex", MANIFEST_HASH, "manifest does not match"),
])
def test_signing_key_and_claim_refusals(fw, keys, case, extended, words):
    root, signer, e3, small = keys
    kw = {}
    if case == "e=3":
        signer = e3
    elif case == "1024-bit":
        signer = small
    elif case == "kty":
        kw["jwk"] = {"kty": "EC"}
    elif case == "n in base64url":
        n = int_bytes(signer.public_key().public_numbers().n)
        kw["jwk"] = {"n": base64.urlsafe_b64encode(n).decode().replace("=", "")}
        assert "-" in kw["jwk"]["n"] or "_" in kw["jwk"]["n"]
    elif case == "no sha256":
        kw["claim"] = {"sha": "x"}
    elif case == "short sha256":
        kw["claim"] = {"sha256": base64.b64encode(hashlib.sha256(MANIFEST.encode()).digest()[:31]).decode()}
    else:
        kw["claim"] = {"sha256": hashlib.sha256(MANIFEST.encode()).hexdigest()}
    refused(verify(fw, MANIFEST, ours(MANIFEST, root, signer, **kw), roots=our_roots(root)), extended, words)


DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


def encodings(body_hash):
    """Encoded messages a verifier that parses PKCS#1 v1.5 might take; the whole compare takes none."""
    ok = b"\x00\x01" + b"\xff" * (256 - 3 - 51) + b"\x00" + DIGEST_INFO + body_hash
    no_null = bytes.fromhex("302f300b0609608648016503040201" "0420")  # parameters left out
    return {
        "exact": ok,
        "DigestInfo without NULL": b"\x00\x01" + b"\xff" * (256 - 3 - 49) + b"\x00" + no_null + body_hash,
        "garbage after the hash": b"\x00\x01" + b"\xff" * (256 - 3 - 59) + b"\x00" + DIGEST_INFO + body_hash + b"\x00" * 8,
        "short padding": b"\x00\x01" + b"\xff" * 7 + b"\x00" + DIGEST_INFO + body_hash + b"\x5a" * (256 - 61),
        "block type 2": b"\x00\x02" + ok[2:],
    }


@pytest.mark.parametrize("name", ["exact", "DigestInfo without NULL", "garbage after the hash",
                                  "short padding", "block type 2"])
def test_pkcs1_is_compared_whole_never_parsed(fw, keys, name):
    root, signer = keys[:2]
    h, p, _ = ours(MANIFEST, root, signer).split(".")
    em = encodings(hashlib.sha256(f"{h}.{p}".encode()).digest())[name]
    assert len(em) == 256
    nums = signer.private_numbers()  # the chosen encoding raised to d: a signature "of" it
    s = pow(int.from_bytes(em, "big"), nums.d, nums.public_numbers.n).to_bytes(256, "big")
    got = verify(fw, MANIFEST, f"{h}.{p}.{b64u(s)}", roots=our_roots(root))
    if name == "exact":
        assert got["ok"]["manifestVersion"] == "5"
    else:
        refused(got, BAD_SIGNATURE, "manifest signature does not verify")


def test_signature_of_the_wrong_length(fw, keys):
    root, signer = keys[:2]
    h, p, s = ours(MANIFEST, root, signer).split(".")
    longer = b64u(bytes(1) + unb64u(s))
    refused(verify(fw, MANIFEST, f"{h}.{p}.{longer}", roots=our_roots(root)),
            BAD_SIGNATURE, "wrong size")


def test_signed_manifest_that_is_not_json(fw, keys):
    root, signer = keys[:2]
    refused(verify(fw, "not json", ours("not json", root, signer), roots=our_roots(root)), BAD_MANIFEST,
            "updateManifest is not a JSON object")


# --- files: size and SHA-256 while they stream ---------------------------------------------

def entry(data, **kw):
    return {"fileName": "app.bin", "sizeInBytes": len(data),
            "hashes": {"sha256": base64.b64encode(hashlib.sha256(data).digest()).decode()}, **kw}


def test_file_ok_and_refusals(fw, tmp_path):
    data = bytes(range(256)) * 9 + b"tail"
    path = tmp_path / "app.bin"
    path.write_bytes(data)
    call = "from azure_edge import adu_verify as v\ntry:\n    result = v.file_ok(%r, %r)\n" \
           "except v.Refused as e:\n    result = {'code': e.code, 'extended': e.extended, 'msg': e.msg}"
    assert fw.run(call % (entry(data), str(path))) is True
    refused(fw.run(call % (entry(data, sizeInBytes=len(data) + 1), str(path))), FILE_HASH, "has 2308 bytes, not 2309")
    refused(fw.run(call % (entry(data[:-1] + b"!"), str(path))), FILE_HASH, "app.bin does not match its SHA-256")
    refused(fw.run(call % ({"fileName": "app.bin", "sizeInBytes": 4}, str(path))), FILE_HASH_EMPTY, "no sizeInBytes or sha256")


def test_hasher_refuses_at_the_first_byte_too_many(fw):
    data = b"x" * 100
    got = fw.run(f"""
from azure_edge import adu_verify as v
h = v.Hasher({entry(data)!r})
seen = []
try:
    for i in range(0, 160, 32):
        h.update({data + b"y" * 60!r}[i:i + 32])
        seen.append(h.got)
    h.finish()
    result = "finished"
except v.Refused as e:
    result = [seen, e.extended, e.msg]
""")
    assert got[0] == [32, 64, 96] and got[1] == signed(FILE_HASH) and "longer than its 100 bytes" in got[2]


def test_roots_from_the_bundle(fw, tmp_path):
    got = fw.run(f"from azure_edge import adu_roots as r\nroots, d = r.load({str(tmp_path)!r})\n"
                 "result = [sorted(roots), sorted(d), roots is r.MICROSOFT]")
    assert got == [["ADU.200702.R", "ADU.200703.R"], [], True]
    (tmp_path / "adu_roots.json").write_text(package("disabledRootKeyProd"))
    got = fw.run(f"from azure_edge import adu_roots as r\nroots, d = r.load({str(tmp_path)!r})\n"
                 "result = [sorted(roots), sorted(d), roots is r.MICROSOFT]")
    assert got == [["ADU.200702.R", "ADU.200703.R"], ["ADU.200702.R"], False]
    # the local gateway's dev root (edgekit bundle --adu-dev-root): beside Microsoft's, not instead
    (tmp_path / "adu_roots.json").write_text(json.dumps({"rootKeys": {"EDGEKIT.DEV.0A1B2C3D.R": {
        "keyType": "RSA", "n": "AQAB", "e": 65537}}, "disabledRootKeys": [], "disabledSigningKeys": []}))
    got = fw.run(f"from azure_edge import adu_roots as r\nroots, d = r.load({str(tmp_path)!r})\n"
                 "result = [sorted(roots), sorted(d), sorted(r.MICROSOFT)]")
    assert got == [["ADU.200702.R", "ADU.200703.R", "EDGEKIT.DEV.0A1B2C3D.R"], [],
                   ["ADU.200702.R", "ADU.200703.R"]]


def test_not_imported_at_boot():
    # Only code that handles a deployment may import these, inside a function: never at module level.
    for path in FIRMWARE.glob("*.py"):
        for line in path.read_text().splitlines():
            if line.startswith(("import ", "from ")) and ("adu_verify" in line or "adu_roots" in line):
                raise AssertionError(f"{path.name} imports the ADU verifier at module level: {line}")
