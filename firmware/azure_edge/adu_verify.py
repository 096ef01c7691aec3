# Verifies Device Update for IoT Hub (ADU) update manifests on the board, in pure Python.
# Imported only while a deployment is handled, then dropped: nothing here is loaded at boot.
#
# updateManifestSignature is a JWS "h.p.s" (base64url, RS256). Its header carries "sjwk": a
# second JWS whose header names a root key ("kid") and whose payload is the signing key
# {"kty", "n", "e", "alg", "kid"}, signed by that root. The signing key signs the outer JWS,
# whose payload is {"sha256": base64 SHA-256 of the updateManifest string, byte for byte}.
# Order and checks follow AzureIoTJWS_ManifestAuthenticate in Azure/azure-iot-middleware-freertos
# ports/mbedTLS/azure_iot_jws_mbedtls.c; result codes are those of Azure/iot-hub-device-update
# (src/utils/workflow_utils .../trust_utils.c validate_update_manifest_signature, jws_utils.h
# JWSResult, scripts/error_code_generator_defs/result_codes.json).
import binascii
import json

from azure_edge.adu_hash import (  # noqa: F401  (Hasher, file_ok: this module's API as before)
    FAILURE, FILE_HASH, FILE_HASH_EMPTY, Hasher, Refused, _b64, _no, _sha256, file_ok)



# Extended result codes: facility << 28 | component << 20 | value (result_codes.json), kept as
# the signed 32-bit numbers the twin carries (lastInstallResult is int32 in az_iot_adu_client.h);
# the console line shows them in hex, as ADU's docs do.
# JWS failures: ADUC_FACILITY_INFRA_MGMT (0xA), ADUC_COMPONENT_JWS_UPDATE_MANIFEST_VALIDATION (2),
# value = JWSResult (jws_utils.h), as trust_utils.c validate_update_manifest_signature packs them.
_JWS = 0xA0200000 - (1 << 32)
BAD_STRUCTURE = _JWS | 2  # JWSResult_BadStructure
UNSUPPORTED_ALG = _JWS | 3  # JWSResult_UnsupportedAlg
BAD_SIGNATURE = _JWS | 4  # JWSResult_InvalidSignature
DISABLED_ROOT = _JWS | 5  # JWSResult_DisallowedRootKid
UNKNOWN_ROOT = _JWS | 6  # JWSResult_MissingRootKid
BAD_HEADER = _JWS | 8  # JWSResult_InvalidEncodingJWSHeader
BAD_SIGNING_KEY = _JWS | 11  # JWSResult_InvalidSWJKPayload (the .c: JWSResult_InvalidSJWKPayload)
DISABLED_SIGNING_KEY = 0xA0000005 - (1 << 32)  # ADUC_ERC_ROOTKEY_SIGNING_KEY_IS_DISABLED
MANIFEST_HASH = 0x80300001 - (1 << 32)  # ADUC_ERC_UTILITIES_UPDATE_DATA_PARSER_MANIFEST_VALIDATION_FAILED
BAD_MANIFEST = 0x80300009 - (1 << 32)  # ADUC_ERC_UTILITIES_UPDATE_DATA_PARSER_BAD_UPDATE_MANIFEST
# File checks: ADUC_COMPONENT_CRYPTO (1), which result_codes.json files under facility 0; the
# agent's result-code doc table still shows them as 0x801000xx, from an older result.h.


# DER DigestInfo of SHA-256 (RFC 8017 section 9.2, note 1): the fixed 19 bytes before the hash.
_DIGEST_INFO = b"\x30\x31\x30\x0d\x06\x09\x60\x86\x48\x01\x65\x03\x04\x02\x01\x05\x00\x04\x20"


def _split(jws, what):
    # Exactly three non-empty parts (prvSplitJWS: two dots, a signature after the second).
    parts = jws.split(".") if isinstance(jws, str) else ()
    if len(parts) != 3 or not parts[0] or not parts[1] or not parts[2]:
        _no(BAD_STRUCTURE, what + " is not a JWS (header.payload.signature)")
    return parts


def _obj(raw, extended, what):
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeError):
        obj = None
    if not isinstance(obj, dict):
        _no(extended, what + " is not a JSON object")
    return obj


def _text(obj, name, extended, what):
    value = obj.get(name)
    if not isinstance(value, str) or not value:
        _no(extended, what + " has no " + name)
    return value


def _key(n, e, extended, what):
    # (modulus as int, its length in bytes) from big-endian bytes; e must be 65537, as the agent
    # demands of signing keys (IsSigningKeyDisallowed: e == "AQAB"); it bounds pow()'s cost too.
    i = 0
    while i < len(n) and n[i] == 0:
        i += 1
    size = len(n) - i
    # 2048..3072 bits: the middleware's buffer holds 3072 (azureiotjwsRSA3072_SIZE); the floor is ours.
    if e != 65537 or size < 256 or size > 384 or not n[-1] & 1:
        _no(extended, what + " is not an RSA-2048..3072 key with e=65537")
    return int.from_bytes(n[i:], "big"), size


def _signed(head, body):
    # SHA-256 of the JWS signing input "head.body", hashed without joining the two.
    h = _sha256(head.encode())
    h.update(b".")
    h.update(body.encode())
    return h.digest()


def _rs256(digest, sig, key, what):
    # RSASSA-PKCS1-v1_5 with SHA-256 (RFC 8017 8.2.2): compute s^e mod n and compare the whole
    # encoding 00 01 FF..FF 00 DigestInfo hash with the one we build; nothing in it is parsed.
    n, size = key
    s = int.from_bytes(sig, "big")
    if len(sig) != size or s >= n:
        _no(BAD_SIGNATURE, what + " has a signature of the wrong size")
    tail = _DIGEST_INFO + digest
    want = b"\x00\x01" + b"\xff" * (size - 3 - len(tail)) + b"\x00" + tail
    if pow(s, 65537, n).to_bytes(size, "big") != want:
        _no(BAD_SIGNATURE, what + " signature does not verify")


def _der(tag, body):
    n = len(body)
    if n < 0x80:
        return bytes((tag, n)) + body
    if n < 0x100:
        return bytes((tag, 0x81, n)) + body
    return bytes((tag, 0x82, n >> 8, n & 0xFF)) + body


def _der_int(b):
    i = 0
    while i < len(b) - 1 and b[i] == 0:
        i += 1
    return _der(2, (b"\x00" if b[i] & 0x80 else b"") + b[i:])


def key_hash(n, e):
    """The base64url SHA-256 a root-key package's disabledSigningKeys lists for a signing key:
    the hash of its DER RSAPublicKey (PKCS#1), as the agent's IsSigningKeyDisallowed computes
    (checked against src/utils/root_key_utils/tests/testdata/.../disabledSigningKeyProd.json)."""
    der = _der(0x30, _der_int(n) + _der_int(e))
    digest = binascii.b2a_base64(_sha256(der).digest())[:-1]
    return digest.decode().replace("+", "-").replace("/", "_").rstrip("=")


def _root(roots, kid, disabled):
    # roots: {kid: {"n": base64url modulus, "e": 65537 or base64url exponent}} as in a root-key
    # package's "rootKeys" (the agent's own list carries the same n, with or without a 00 byte).
    if kid in disabled:
        _no(DISABLED_ROOT, "root key %s is disabled" % kid)
    entry = roots.get(kid)
    if not isinstance(entry, dict):
        _no(UNKNOWN_ROOT, "root key %s is not trusted" % kid)
    e = entry.get("e")
    if isinstance(e, str):
        e = int.from_bytes(_b64(e, True, UNKNOWN_ROOT, "root key " + kid + " e"), "big")
    return _key(_b64(entry.get("n"), True, UNKNOWN_ROOT, "root key " + kid + " n"), e,
                UNKNOWN_ROOT, "root key " + kid)


def check(manifest, signature, roots, disabled=()):
    """Verify `manifest` (the exact updateManifest string from the twin) against `signature`
    (updateManifestSignature) with the trusted `roots`; return the parsed manifest dict or raise
    Refused. `disabled` holds root kids and signing-key hashes (key_hash) no longer trusted."""
    head, body, sig = _split(signature, "updateManifestSignature")
    # Hash the signing inputs first so that the ~2 KB header and its copies can go early: the
    # heap is small. The checks still run in the middleware's order.
    signed = _signed(head, body)
    header = _obj(_b64(head, True, BAD_HEADER, "JWS header"), BAD_HEADER, "JWS header")
    head = None
    sjwk = _text(header, "sjwk", BAD_STRUCTURE, "JWS header")
    alg = header.get("alg")
    header = None
    k_head, k_body, k_sig = _split(sjwk, "sjwk")
    sjwk = None
    k_signed = _signed(k_head, k_body)
    k_header = _obj(_b64(k_head, True, BAD_STRUCTURE, "sjwk header"), BAD_STRUCTURE, "sjwk header")
    root = _root(roots, _text(k_header, "kid", BAD_STRUCTURE, "sjwk header"), disabled)
    # The middleware checks only the signing key's "alg"; we also demand RS256 in both headers.
    if k_header.get("alg") != "RS256":
        _no(UNSUPPORTED_ALG, "sjwk alg is not RS256")
    _rs256(k_signed, _b64(k_sig, True, BAD_SIGNATURE, "sjwk signature"), root, "signing key")
    jwk = _obj(_b64(k_body, True, BAD_SIGNING_KEY, "signing key"), BAD_SIGNING_KEY, "signing key")
    k_head = k_body = k_sig = None
    if jwk.get("kty") != "RSA" or jwk.get("alg") != "RS256" or alg != "RS256":
        _no(UNSUPPORTED_ALG, "signing key or JWS alg is not RSA RS256")
    # n and e of the signing key are standard base64 (az_base64_decode), not base64url.
    n = _b64(_text(jwk, "n", BAD_SIGNING_KEY, "signing key"), False, BAD_SIGNING_KEY, "signing key n")
    e = _b64(_text(jwk, "e", BAD_SIGNING_KEY, "signing key"), False, BAD_SIGNING_KEY, "signing key e")
    if disabled and key_hash(n, e) in disabled:
        _no(DISABLED_SIGNING_KEY, "signing key %s is disabled" % jwk.get("kid"))
    signing = _key(n, int.from_bytes(e, "big"), BAD_SIGNING_KEY, "signing key")
    n = e = jwk = None
    _rs256(signed, _b64(sig, True, BAD_SIGNATURE, "JWS signature"), signing, "manifest")
    claim = _obj(_b64(body, True, MANIFEST_HASH, "JWS payload"), MANIFEST_HASH, "JWS payload")
    want = _b64(_text(claim, "sha256", MANIFEST_HASH, "JWS payload"), False, MANIFEST_HASH,
                "JWS payload sha256")
    data = manifest.encode() if isinstance(manifest, str) else manifest
    if _sha256(data).digest() != want:
        _no(MANIFEST_HASH, "manifest does not match its signed SHA-256")
    return _obj(data, BAD_MANIFEST, "updateManifest")


# The device's properties as its agent reports them (deviceProperties), by the names it lists in
# compatPropertyNames ("manufacturer,model", azure_edge.adu.COMPAT): an entry of the manifest's
# "compatibility" names some of them, and ADU targets a device whose reported values equal all of
# the entry's (device-update-plug-and-play.md, import-schema.md; values compared exactly). The
# update manifests Microsoft signed for its C SDK and FreeRTOS samples name them with the older
# keys deviceManufacturer and deviceModel, read here as manufacturer and model.
def deployment(svc, du):
    """The update agent's check of a desired `service` (azure_edge/adu.py), before the rest of
    the deployment's code loads: the trusted roots, read from the bundle for this check only
    (adu_roots.load, never kept in the heap), the signature, the compatibility with the bundle's
    `du` manufacturer and model. The manifest dict, or (code, extended, message) refused."""
    from azure_edge import adu_roots, unload
    roots, disabled = adu_roots.load(du["b"])
    unload("adu_roots")
    adu_roots = None  # (the name held the module's code)
    try:
        m = check(svc.get("updateManifest") or "", svc.get("updateManifestSignature") or "",
                  roots, disabled)
        roots = disabled = None
        check_compat(m, du["manufacturer"], du["model"])
        return m
    except Refused as e:
        return e.code, e.extended, e.msg


_OLD = {"deviceManufacturer": "manufacturer", "deviceModel": "model"}


def check_compat(update, manufacturer, model):
    """Refuse unless one of the manifest's "compatibility" entries matches this device's reported
    manufacturer and model (the bundle's "adu" entry): every property the entry names equal."""
    mine = {"manufacturer": manufacturer, "model": model}
    for c in update.get("compatibility") or ():
        if isinstance(c, dict) and c and all(mine.get(_OLD.get(k, k)) == v for k, v in c.items()):
            return
    _no(BAD_MANIFEST, "update is not for %s %s" % (manufacturer, model))


