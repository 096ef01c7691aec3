"""The portable protocol core, run under CPython and the real MicroPython interpreter.

Every test takes the `fw` fixture, so each case runs once per interpreter
(ids `[cpython]` and `[micropython]`).
"""
import base64
import hashlib
import hmac
from urllib.parse import quote as py_quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FirmwareError

HYPO = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
# Text that can cross a UTF-8 pipe (no lone surrogates).
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
KEY = base64.b64encode(bytes(range(32))).decode()

# RFC 4231 section 4: HMAC-SHA256 test cases 1-4, 6 and 7 (5 is a truncated output).
RFC4231 = [
    (b"\x0b" * 20, b"Hi There",
     "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (b"Jefe", b"what do ya want for nothing?",
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    (b"\xaa" * 20, b"\xdd" * 50,
     "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
    (bytes(range(1, 26)), b"\xcd" * 50,
     "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
    (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First",
     "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
    (b"\xaa" * 131, b"This is a test using a larger than block-size key and a larger than "
     b"block-size data. The key needs to be hashed before being used by the HMAC algorithm.",
     "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
]


@pytest.mark.parametrize("key,data,expected", RFC4231, ids=["tc1", "tc2", "tc3", "tc4", "tc6", "tc7"])
def test_hmac_sha256_rfc4231(fw, key, data, expected):
    got = fw.run(f"result = sas.hmac_sha256({key!r}, {data!r})")
    assert got == {"hex": expected}


# --- SAS tokens ---------------------------------------------------------------------------

def test_sas_signing_string_embedded_c_vector(fw):
    # Azure Embedded C SDK, test_az_iot_hub_client_sas.c
    uri = fw.call("sas.resource_uri", "myiothub.azure-devices.net", "my_device")
    assert fw.call("sas.signing_string", uri, 1578941692) == \
        "myiothub.azure-devices.net%2Fdevices%2Fmy_device\n1578941692"


def reference_token(uri, key_b64, expiry, key_name=None):
    """The token as azure-iot-device builds it, with CPython's hmac and urllib."""
    sr = py_quote(uri, safe="")
    sig = base64.b64encode(hmac.new(base64.b64decode(key_b64), f"{sr}\n{expiry}".encode(),
                                    hashlib.sha256).digest()).decode()
    token = f"SharedAccessSignature sr={sr}&sig={py_quote(sig, safe='')}&se={expiry}"
    return token + (f"&skn={py_quote(key_name, safe='')}" if key_name else "")


@pytest.mark.parametrize("module", [None, "filter"])
@pytest.mark.parametrize("key_name", [None, "iothubowner"])
def test_sas_generate_matches_reference(fw, module, key_name):
    uri = fw.call("sas.resource_uri", "myiothub.azure-devices.net", "my_device", module)
    assert uri == "myiothub.azure-devices.net/devices/my_device" + (f"/modules/{module}" if module else "")
    token = fw.call("sas.generate", uri, KEY, 1578941692, key_name)
    assert token == reference_token(uri, KEY, 1578941692, key_name)
    assert fw.call("sas.expiry_of", token) == 1578941692


@HYPO
@given(device=st.from_regex(r"[A-Za-z0-9\-._:@$]{1,30}", fullmatch=True),
       raw_key=st.binary(min_size=1, max_size=64), expiry=st.integers(0, 2**32))
def test_sas_generate_property(fw, device, raw_key, expiry):
    key = base64.b64encode(raw_key).decode()
    uri = f"hub.azure-devices.net/devices/{device}"
    assert fw.call("sas.generate", uri, key, expiry) == reference_token(uri, key, expiry)


# --- connection strings -------------------------------------------------------------------

GOOD = f"HostName=hub.azure-devices.net;DeviceId=dev-1;SharedAccessKey={KEY};GatewayHostName=gw.local"


def test_connstr_device_with_gateway(fw):
    cs = fw.call("connstr.parse", GOOD)
    assert cs == {"host_name": "hub.azure-devices.net", "device_id": "dev-1", "module_id": None,
                  "shared_access_key": KEY, "shared_access_key_name": None,
                  "gateway_host_name": "gw.local", "x509": False}


def test_connstr_module_and_x509(fw):
    cs = fw.call("connstr.parse", "HostName=h.azure-devices.net;DeviceId=d;ModuleId=m;"
                 f"SharedAccessKey={KEY};SharedAccessKeyName=owner;")
    assert (cs["module_id"], cs["shared_access_key_name"], cs["gateway_host_name"]) == ("m", "owner", None)
    cs = fw.call("connstr.parse", " HostName=h.azure-devices.net;DeviceId=d;x509=true;GatewayHostName=gw ")
    assert cs["x509"] is True and cs["shared_access_key"] is None


@pytest.mark.parametrize("text,words", [
    ("", "empty"),
    ("HostName=h;DeviceId", "part 2"),
    (f"HostName=h;DeviceID=d;SharedAccessKey={KEY}", "did you mean 'DeviceId'"),
    (f"HostName=h;Foo=1;DeviceId=d;SharedAccessKey={KEY}", "unknown key 'Foo'"),
    (f"HostName=h;DeviceId=d;DeviceId=e;SharedAccessKey={KEY}", "twice"),
    (f"DeviceId=d;SharedAccessKey={KEY}", "no HostName"),
    (f"HostName=h;SharedAccessKey={KEY}", "no DeviceId"),
    ("HostName=h;DeviceId=d", "neither SharedAccessKey nor x509"),
    (f"HostName=h;DeviceId=d;SharedAccessKey={KEY};x509=true", "both"),
    ("HostName=h;DeviceId=d;SharedAccessKey=not*base64!", "not valid base64"),
    ("HostName=h;DeviceId=d;SharedAccessKey=abc", "not valid base64"),
    ("HostName=h;DeviceId=d;x509=maybe", "x509"),
    ("HostName=https://h/;DeviceId=d;x509=true", "not a host name"),
    ("HostName=h;DeviceId=d e;x509=true", "does not allow"),
    ("HostName=h;DeviceId=d;SharedAccessSignature=SharedAccessSignature sr=x", "cannot be renewed"),
], ids=lambda v: v[:24] if isinstance(v, str) else None)
def test_connstr_errors_name_the_part(fw, text, words):
    with pytest.raises(FirmwareError) as err:
        fw.call("connstr.parse", text)
    assert err.value.kind == "ValueError"
    assert words in err.value.message
    assert KEY not in err.value.message


@HYPO
@given(text=TEXT | st.lists(st.sampled_from(
    ["HostName=h", "DeviceId=d", "ModuleId=m", f"SharedAccessKey={KEY}", "x509=true", "=", ";",
     "GatewayHostName=g", "SharedAccessKeyName=n", "x509=", "Bogus=1", "SharedAccessKey=%%"]),
    max_size=7).map(";".join))
def test_connstr_raises_only_value_error(fw, text):
    try:
        cs = fw.call("connstr.parse", text)
    except FirmwareError as e:
        assert e.kind == "ValueError", e
        assert KEY not in e.message
    else:
        assert cs["host_name"] and cs["device_id"]
        assert (cs["shared_access_key"] is None) == cs["x509"]


# --- topics -------------------------------------------------------------------------------

def test_topic_builders(fw):
    assert fw.call("topics.client_id", "d") == "d"
    assert fw.call("topics.client_id", "d", "m") == "d/m"
    assert fw.call("topics.username", "hub.azure-devices.net", "d") == \
        "hub.azure-devices.net/d/?api-version=2021-04-12"
    assert fw.call("topics.username", "hub.azure-devices.net", "d", "m") == \
        "hub.azure-devices.net/d/m/?api-version=2021-04-12"
    assert fw.call("topics.telemetry", "d") == "devices/d/messages/events/"
    assert fw.call("topics.telemetry", "d", "m", {"$.ct": "application/json", "$.ce": "utf-8"}) == \
        "devices/d/modules/m/messages/events/$.ct=application%2Fjson&$.ce=utf-8"
    assert fw.call("topics.c2d_filter", "d") == "devices/d/messages/devicebound/#"
    assert fw.call("topics.method_response", 200, "7") == "$iothub/methods/res/200/?$rid=7"
    assert fw.call("topics.twin_get", "1") == "$iothub/twin/GET/?$rid=1"
    assert fw.call("topics.twin_reported", "2") == "$iothub/twin/PATCH/properties/reported/?$rid=2"
    assert fw.run("result = [topics.METHODS_FILTER, topics.TWIN_RES_FILTER, topics.DESIRED_FILTER]") == \
        ["$iothub/methods/POST/#", "$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#"]


@pytest.mark.parametrize("props", [
    {"a b": "c d"}, {"path": "/x/y"}, {"q": "a&b=c"}, {"pct": "100%"}, {"empty": ""},
    {"$.mid": "42", "temp": "21.5"}, {"ünï": "日本語"}, {"+": "+"},
])
def test_property_bag_round_trip(fw, props):
    text = fw.call("topics.encode_properties", props)
    assert " " not in text and "/" not in text
    assert fw.call("topics.decode_properties", text) == props


@HYPO
@given(props=st.dictionaries(TEXT.filter(bool), TEXT, max_size=5))
def test_property_bag_inverse(fw, props):
    assert fw.call("topics.decode_properties", fw.call("topics.encode_properties", props)) == props


def test_incoming_topic_parsers(fw):
    assert fw.call("topics.parse_c2d",
                   "devices/d/messages/devicebound/%24.mid=1&%24.to=%2Fdevices%2Fd&k=v%20w") == \
        {"$.mid": "1", "$.to": "/devices/d", "k": "v w"}
    assert fw.call("topics.parse_c2d", "devices/d/messages/devicebound/") == {}
    assert fw.call("topics.parse_c2d", "$iothub/twin/res/200/?$rid=1") is None
    assert fw.call("topics.parse_method", "$iothub/methods/POST/reboot/?$rid=5") == ["reboot", "5"]
    assert fw.call("topics.parse_method", "$iothub/twin/res/200/") is None
    assert fw.call("topics.parse_twin_response", "$iothub/twin/res/204/?$rid=3&$version=9") == [204, "3", 9]
    assert fw.call("topics.parse_twin_response", "$iothub/twin/res/200/?$rid=3") == [200, "3", None]
    assert fw.call("topics.parse_desired", "$iothub/twin/PATCH/properties/desired/?$version=12") == 12
    assert fw.call("topics.parse_desired", "devices/d/messages/devicebound/") is None


@pytest.mark.parametrize("call,topic", [
    ("topics.parse_c2d", "devices/d/messages/devicebound/a=%zz"),
    ("topics.parse_c2d", "devices/d/messages/devicebound/a=%ff%fe"),
    ("topics.parse_method", "$iothub/methods/POST/reboot/"),
    ("topics.parse_method", "$iothub/methods/POST//?$rid=1"),
    ("topics.parse_twin_response", "$iothub/twin/res/abc/?$rid=1"),
    ("topics.parse_twin_response", "$iothub/twin/res/200/?$rid=1&$version=x"),
    ("topics.parse_desired", "$iothub/twin/PATCH/properties/desired/"),
])
def test_malformed_topics_raise_value_error(fw, call, topic):
    with pytest.raises(FirmwareError) as err:
        fw.call(call, topic)
    assert err.value.kind == "ValueError"


# --- clock --------------------------------------------------------------------------------

def test_clock_is_unix_time(fw):
    import time
    now = fw.call("clock.unix_time")
    assert abs(now - time.time()) < 5
    assert fw.call("clock.is_set") is True


def test_clock_handles_2000_epoch(fw):
    # Pretend to be the esp32 port: time.gmtime(0) says 2000 and time.time() counts from there.
    got = fw.run(
        "import time\n"
        "class T:\n"
        "    def gmtime(self, s=0): return (2000, 1, 1, 0, 0, 0, 5, 1)\n"
        "    def time(self): return 1000\n"
        "import sys\n"
        "saved = sys.modules.get('time')\n"
        "sys.modules['time'] = T()\n"
        "sys.modules.pop('azure_edge.clock', None)\n"
        "try:\n"
        "    import azure_edge.clock as c\n"
        "    result = c.unix_time()\n"
        "finally:\n"
        "    sys.modules.pop('time')\n"
        "    if saved is not None:\n"
        "        sys.modules['time'] = saved\n"
        "    sys.modules.pop('azure_edge.clock', None)\n")
    assert got == 946684800 + 1000


def test_hot_paths_intern_no_strings_under_micropython():
    # MicroPython interns every one-character str it makes (chr(), iterating or indexing a
    # str) for good; once its qstr pool is full the next one doubles the pool (about 7 KB
    # here). Property bags, topics and ids must go through bytes instead.
    import subprocess

    from conftest import FIRMWARE, tool
    code = """
import micropython
from azure_edge import url, topics, connstr
def n_qstr():
    micropython.qstr_info()
text = (bytes(range(32, 127)) + b'\\xc3\\xa9\\xe2\\x98\\x83').decode()  # made without interning
n_qstr()
url.quote(text)
url.unquote(url.quote(text))
topics.encode_properties({'$.mid': 'a-1', 'k y': text})
topics.parse_twin_response('$iothub/twin/res/200/?$rid=7&$version=12')
connstr.parse('HostName=h.azure-devices.net;DeviceId=Dev-1.x_(2);SharedAccessKey=c2VjcmV0')
n_qstr()
"""
    out = subprocess.run([tool("micropython"), "-c", code], capture_output=True, text=True,
                         timeout=30, env={"MICROPYPATH": f".frozen:{FIRMWARE}"})
    counts = [line.split("n_qstr=")[1].split(",")[0] for line in out.stdout.splitlines()
              if "n_qstr=" in line]
    assert len(counts) == 2, out.stdout + out.stderr
    assert counts[0] == counts[1], out.stdout
