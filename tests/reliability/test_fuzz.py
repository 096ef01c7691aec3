"""Bad input on the host side, fuzzed with hypothesis: only the documented exceptions may escape.

- the firmware's protocol core (connstr.parse, the property decoder, the topic parsers) under
  CPython directly, and the same inputs under the real MicroPython (tests/fw_runner.py), where
  the two interpreters must agree: a connection string the host accepts must not be refused
  by the board;
- the certificate and key readers (host_tools/edgekit/certs/pem.py) and the `certs inspect` / `certs
  convert` paths on mutated real certificates and keys: CertError (a ValueError) only, and from
  the CLI one `error:` line, no traceback, nothing written.

tests/test_core.py has the basic connstr and property-bag properties; these go further.
"""
import base64
import datetime
import json
import os

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from conftest import FirmwareError
from edgekit.certs import convert, inspect, pem
from edgekit.certs.demo import make_demo_pki
from edgekit.cli import main
from edgekit.gateway import registry  # noqa: F401  (puts firmware/ on sys.path)
from azure_edge import connstr, topics, url  # noqa: E402

# EDGEKIT_FUZZ_SCALE=20 runs twenty times the examples (a few minutes) for a deeper search.
SCALE = max(1, int(os.environ.get("EDGEKIT_FUZZ_SCALE", "1")))


def _settings(n):
    return settings(max_examples=n * SCALE, deadline=None, suppress_health_check=list(HealthCheck))


FAST = _settings(400)
FILES = _settings(150)
BATCH = _settings(12)

KEY = base64.b64encode(bytes(range(32))).decode()
KNOWN = ["HostName", "DeviceId", "ModuleId", "SharedAccessKey", "SharedAccessKeyName",
         "SharedAccessSignature", "GatewayHostName", "x509"]
# Text that survives a UTF-8 pipe to MicroPython (no lone surrogates), rich in the characters
# the parsers split on, and in whitespace and digits that are not ASCII.
SPECIAL = st.sampled_from(list("=;&%/?$ \t\r\n\"'.-_+#") + ["%2", "%zz", "%ff", "%C3%A9", "\xa0",
                                                             "\u2003", "\u0663", "\xb2", "_", "é"])
TEXT = st.lists(st.one_of(SPECIAL, st.characters(blacklist_categories=("Cs",))), max_size=30).map("".join)
SHORT = st.lists(st.one_of(SPECIAL, st.characters(min_codepoint=32, max_codepoint=126)),
                 max_size=12).map("".join)


# --- connection strings -----------------------------------------------------------------

@st.composite
def connection_strings(draw):
    """Mostly well-formed key=value parts with damage: odd keys, values, spacing and quotes."""
    parts = []
    for _ in range(draw(st.integers(0, 7))):
        key = draw(st.sampled_from(KNOWN) | st.sampled_from(KNOWN).map(str.lower) | SHORT)
        value = draw(st.sampled_from(["hub.azure-devices.net", "dev-1", "gw.local", KEY, "true", "false",
                                      "TRUE", "", "a=b", "x y", "https://h/"]) | SHORT | TEXT)
        sep = draw(st.sampled_from(["=", " = ", "==", ""]))
        parts.append(key + sep + value)
    text = draw(st.sampled_from([";", "; ", ";;"])).join(parts)
    pad = draw(st.sampled_from(["", " ", "\xa0", "\t", "\n", "\u2003"]))
    quote = draw(st.sampled_from(["", '"', "'"]))
    return pad + quote + text + quote + pad


@FAST
@given(text=connection_strings())
@example(text=f"HostName=h.azure-devices.net;DeviceId=d;SharedAccessKey={KEY}\xa0")
def test_connstr_raises_only_value_error_and_never_shows_the_key(text):
    try:
        cs = connstr.parse(text)
    except ValueError as e:
        assert KEY not in str(e)
        return
    assert cs.host_name and cs.device_id
    assert (cs.shared_access_key is None) == cs.x509
    assert KEY not in repr(cs)


@pytest.mark.parametrize("value", [None, 42, b"HostName=h;DeviceId=d;x509=true", ["HostName=h"], 1.5])
def test_connstr_refuses_what_is_not_text(value):
    with pytest.raises(ValueError, match="must be text"):
        connstr.parse(value)


ID = st.from_regex(r"[A-Za-z0-9\-.%_*?!(),:=@$']{1,40}", fullmatch=True)
HOST = st.from_regex(r"[a-z0-9]([a-z0-9\-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}", fullmatch=True)


@FAST
@given(host=HOST, device=ID, module=st.none() | ID, gateway=st.none() | HOST,
       raw_key=st.binary(min_size=1, max_size=64), x509=st.booleans(), order=st.randoms())
def test_connstr_well_formed_parts_round_trip(host, device, module, gateway, raw_key, x509, order):
    assume(not (x509 and module))  # a legal parse, but the client refuses it later
    parts = {"HostName": host, "DeviceId": device}
    if module:
        parts["ModuleId"] = module
    if gateway:
        parts["GatewayHostName"] = gateway
    key = base64.b64encode(raw_key).decode()
    if x509:
        parts["x509"] = "true"
    else:
        parts["SharedAccessKey"] = key
    items = [f"{k}={v}" for k, v in parts.items()]
    order.shuffle(items)
    cs = connstr.parse(";".join(items))
    assert (cs.host_name, cs.device_id, cs.module_id, cs.gateway_host_name) == (host, device, module, gateway)
    assert cs.shared_access_key == (None if x509 else key) and cs.x509 == x509
    assert cs.connect_host == (gateway or host)


# --- property bags and topics -------------------------------------------------------------

@FAST
@given(text=TEXT | st.text(max_size=40))
def test_property_decoder_and_unquote_raise_only_value_error(text):
    for fn in (topics.decode_properties, url.unquote):
        try:
            out = fn(text)
        except ValueError:
            continue
        if fn is url.unquote:
            assert isinstance(out, str)
        else:
            assert all(isinstance(k, str) and isinstance(v, str) for k, v in out.items())


PREFIXES = ["devices/d/messages/devicebound/", "$iothub/methods/POST/", "$iothub/twin/res/",
            "$iothub/twin/PATCH/properties/desired/", "$iothub/twin/res", "devices/", ""]
TOPIC = st.builds(lambda p, mid, tail: p + mid + tail, st.sampled_from(PREFIXES),
                  st.sampled_from(["", "200", "204/", "ping/", "x/", "\u0663/", "\xb2/", "1_0/", " 7/",
                                   "+3/", "-1/"]),
                  st.sampled_from(["", "?", "?$rid=1", "?$rid=", "?$version=2", "?$rid=1&$version=x",
                                   "?$version=\u0663", "?$version=1_0", "?$version= 3",
                                   "?$version=-4"]) | TEXT)


def _outcome(fn, arg):
    # Anything but ValueError escapes and fails the test.
    try:
        return ["ok", fn(arg)]
    except ValueError:
        return ["ValueError", None]


@FAST
@given(topic=TOPIC)
@example(topic="$iothub/twin/res/\u0663/?$rid=1")
@example(topic="$iothub/twin/PATCH/properties/desired/?$version=1_0")
def test_topic_parsers_raise_only_value_error_and_return_their_shapes(topic):
    c2d = _outcome(topics.parse_c2d, topic)
    if c2d[0] == "ok" and c2d[1] is not None:
        assert isinstance(c2d[1], dict)
    method = _outcome(topics.parse_method, topic)
    if method[0] == "ok" and method[1] is not None:
        name, rid = method[1]
        assert isinstance(name, str) and name and isinstance(rid, str) and rid
    twin = _outcome(topics.parse_twin_response, topic)
    if twin[0] == "ok" and twin[1] is not None:
        status, rid, version = twin[1]
        assert type(status) is int and status >= 0
        assert rid is None or isinstance(rid, str)
        assert version is None or type(version) is int
        # Only ASCII digits are a status: MicroPython's int() knows no others.
        assert topic[len("$iothub/twin/res/"):].split("/")[0].isascii()
    desired = _outcome(topics.parse_desired, topic)
    if desired[0] == "ok" and desired[1] is not None:
        assert type(desired[1]) is int


# --- the same inputs under the real MicroPython: both interpreters must agree ------------

_BATCH_CODE = """
import json
out = []
for fn, arg in json.loads(%r):
    mod, name = fn.split(".")
    try:
        r = getattr({"connstr": connstr, "topics": topics, "url": url}[mod], name)(arg)
        if mod == "connstr":
            r = [r.host_name, r.device_id, r.module_id, r.shared_access_key,
                 r.shared_access_key_name, r.gateway_host_name, r.x509]
        out.append(["ok", r])
    except Exception as e:
        out.append([type(e).__name__, None])
result = out
"""


def _on_cpython(calls):
    out = []
    mods = {"connstr": connstr, "topics": topics, "url": url}
    for fn, arg in calls:
        mod, name = fn.split(".")
        try:
            r = getattr(mods[mod], name)(arg)
            if mod == "connstr":
                r = [r.host_name, r.device_id, r.module_id, r.shared_access_key,
                     r.shared_access_key_name, r.gateway_host_name, r.x509]
            out.append(["ok", json.loads(json.dumps(r))])  # tuples become lists, as from the runner
        except Exception as e:
            out.append([type(e).__name__, None])
    return out


CALLS = st.one_of(
    st.tuples(st.just("connstr.parse"), connection_strings()),
    st.tuples(st.sampled_from(["topics.decode_properties", "url.unquote"]), TEXT),
    st.tuples(st.sampled_from(["topics.parse_c2d", "topics.parse_method", "topics.parse_twin_response",
                               "topics.parse_desired"]), TOPIC),
)


@pytest.fixture(scope="module")
def micropython(_runners):
    return _runners["micropython"]


@BATCH
@given(calls=st.lists(CALLS, min_size=50, max_size=50))
def test_micropython_agrees_with_cpython(micropython, calls):
    # 12 batches of 50: one round trip to the interpreter each, so this stays cheap.
    got = micropython.run(_BATCH_CODE % json.dumps(calls, ensure_ascii=False))
    want = _on_cpython(calls)
    for call, mp, cp in zip(calls, got, want):
        assert mp == cp, f"{call!r}: MicroPython {mp!r}, CPython {cp!r}"


def test_micropython_agrees_on_known_differences(micropython):
    # What the fuzzer found once, kept as plain cases: non-ASCII digits and spaces.
    calls = [["topics.parse_twin_response", "$iothub/twin/res/\u0663/?$rid=1"],
             ["topics.parse_desired", "$iothub/twin/PATCH/properties/desired/?$version=1_0"],
             ["topics.parse_desired", "$iothub/twin/PATCH/properties/desired/?$version=\u0663"],
             ["topics.parse_desired", "$iothub/twin/PATCH/properties/desired/?$version= 3"],
             ["connstr.parse", f"\xa0HostName=h;DeviceId=d;SharedAccessKey={KEY}\xa0"],
             ["connstr.parse", f"HostName=h;DeviceId=d;SharedAccessKey={KEY}\u2003"]]
    got = micropython.run(_BATCH_CODE % json.dumps(calls, ensure_ascii=False))
    assert got == _on_cpython(calls)


# --- certificate and key readers ------------------------------------------------------------

@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """DER seeds: ECC certificates from a demo PKI, an RSA certificate, and keys in every form."""
    pki = make_demo_pki(tmp_path_factory.mktemp("pki"), "localhost", devices=["fuzz-dev"])
    out = {"root": pem.to_der(pki.root_cert), "device": pem.to_der(pki.devices["fuzz-dev"].cert)}
    eckey = pem.load_private_key(pki.devices["fuzz-dev"].key)
    rsakey = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fuzz-rsa")])
    now = datetime.datetime.now(datetime.timezone.utc)
    rsacert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(rsakey.public_key()).serial_number(7).not_valid_before(now)
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
               .sign(rsakey, hashes.SHA256()))
    out["rsa-cert"] = rsacert.public_bytes(serialization.Encoding.DER)
    der = serialization.Encoding.DER
    out["ec-pkcs8"] = pem.key_to_der(eckey)
    out["ec-sec1"] = eckey.private_bytes(der, serialization.PrivateFormat.TraditionalOpenSSL,
                                         serialization.NoEncryption())
    out["rsa-pkcs1"] = rsakey.private_bytes(der, serialization.PrivateFormat.TraditionalOpenSSL,
                                            serialization.NoEncryption())
    out["ec-encrypted"] = eckey.private_bytes(der, serialization.PrivateFormat.PKCS8,
                                              serialization.BestAvailableEncryption(b"pw"))
    out["ed25519"] = ed25519.Ed25519PrivateKey.generate().private_bytes(
        der, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    out["ec-p384"] = pem.key_to_der(ec.generate_private_key(ec.SECP384R1()))
    return out


LABELS = ["CERTIFICATE", "PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY", "ENCRYPTED PRIVATE KEY",
          "X509 CRL", "TRUSTED CERTIFICATE", "PUBLIC KEY"]


def _pem(label, der, crlf=False):
    body = base64.encodebytes(der).decode()
    text = f"-----BEGIN {label}-----\n{body}-----END {label}-----\n"
    return (text.replace("\n", "\r\n") if crlf else text).encode()


@st.composite
def damaged_files(draw, seeds):
    """A seed's DER, damaged (flips, cuts, inserts, duplicated runs), then as DER or PEM."""
    data = bytearray(seeds[draw(st.sampled_from(sorted(seeds)))])
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "delete", "dup", "set"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "set" and data:
            data[at] = draw(st.sampled_from([0, 0x80, 0x81, 0x82, 0xFF, 0x30, 0x02, 0x05]))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif op == "dup":
            data[at:at] = data[at:at + draw(st.integers(1, 32))]
    form = draw(st.sampled_from(["der", "pem", "pem-crlf", "pem-twice", "pem-junk", "pem-cut"]))
    if form == "der":
        return bytes(data)
    label = draw(st.sampled_from(LABELS))
    text = _pem(label, bytes(data), crlf=form == "pem-crlf")
    if form == "pem-twice":
        text += _pem(draw(st.sampled_from(LABELS)), bytes(data))
    elif form == "pem-junk":
        text = draw(st.sampled_from([b"junk\n", b"", b"Bag Attributes\n"])) + text + b"\x00"
    elif form == "pem-cut":
        text = text[:draw(st.integers(0, len(text)))]
    return text


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz-files")


def test_certificate_and_key_readers_raise_only_cert_error(seeds, workdir):
    path = workdir / "input"

    @FILES
    @given(data=damaged_files(seeds) | st.binary(max_size=300))
    def check(data):
        path.write_bytes(data)
        for fn in (pem.load_certificates, pem.load_private_key, inspect.inspect_file):
            try:
                fn(str(path))
            except pem.CertError as e:
                assert str(e) and "\n" not in str(e)
        try:
            pem.load_private_key(str(path), password="pw")
        except pem.CertError:
            pass
    check()


def test_cli_inspect_and_convert_answer_one_line_and_write_nothing_on_bad_input(seeds, workdir):
    src, dst = workdir / "cli-input", workdir / "out.der"
    runner = CliRunner()

    @_settings(80)
    @given(data=damaged_files(seeds))
    def check(data):
        src.write_bytes(data)
        if dst.exists():
            dst.unlink()
        for args in (["certs", "inspect", str(src)], ["certs", "convert", str(src), str(dst)]):
            r = runner.invoke(main, args)
            assert r.exit_code in (0, 1), (args, r.output, r.exc_info)
            assert isinstance(r.exception, (SystemExit, type(None))), (args, r.exc_info)
            if r.exit_code == 1:
                lines = r.output.strip().splitlines()
                assert len(lines) == 1 and lines[0].startswith("error: "), r.output
                assert "Traceback" not in r.output
                if args[1] == "convert":
                    assert not dst.exists()
                    assert not [p for p in os.listdir(workdir) if p.startswith(".edgekit-")]
    check()
