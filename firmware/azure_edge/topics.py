# The IoT Hub MQTT topic surface that edgeHub relays: builders, filters and parsers.
from azure_edge.url import quote, unquote

API_VERSION = "2021-04-12"

# What the hub sends a device starts with one of these; the filters subscribe to them.
METHOD_PREFIX = "$iothub/methods/POST/"
TWIN_RES_PREFIX = "$iothub/twin/res/"
DESIRED_PREFIX = "$iothub/twin/PATCH/properties/desired/"
METHODS_FILTER = METHOD_PREFIX + "#"
TWIN_RES_FILTER = TWIN_RES_PREFIX + "#"
DESIRED_FILTER = DESIRED_PREFIX + "#"
_C2D_MARK = "/messages/devicebound/"
# '$' stays readable in property names such as $.mid; IoT Hub accepts it either way.
_SAFE = b"$"


def client_id(device_id, module_id=None):
    """MQTT client id: `<device>` or `<device>/<module>`."""
    return device_id + "/" + module_id if module_id else device_id


def username(host_name, device_id, module_id=None):
    """MQTT username: `<hub>/<device>[/<module>]/?api-version=...` (the hub name, not the gateway's)."""
    return host_name + "/" + client_id(device_id, module_id) + "/?api-version=" + API_VERSION


def telemetry(device_id, module_id=None, properties=None):
    """Topic for device-to-cloud messages, with an optional property bag."""
    if module_id:
        topic = "devices/" + device_id + "/modules/" + module_id + "/messages/events/"
    else:
        topic = "devices/" + device_id + "/messages/events/"
    if properties:
        topic += encode_properties(properties)
    return topic


def c2d_filter(device_id):
    """Subscription filter for cloud-to-device messages (devices only: IoT Hub has no C2D for modules)."""
    return "devices/" + device_id + "/messages/devicebound/#"


def method_response(status, rid):
    """Topic to answer a direct method request."""
    return "$iothub/methods/res/" + str(int(status)) + "/?$rid=" + quote(rid, _SAFE)


def twin_get(rid):
    """Topic to request the whole twin."""
    return "$iothub/twin/GET/?$rid=" + quote(rid, _SAFE)


def twin_reported(rid):
    """Topic to PATCH the reported properties."""
    return "$iothub/twin/PATCH/properties/reported/?$rid=" + quote(rid, _SAFE)


def encode_properties(props):
    """URL-encode a dict as an IoT Hub property bag `k=v&k=v` (values made text)."""
    out = []
    for k in props:
        v = props[k]
        out.append(quote(str(k), _SAFE) + "=" + quote("" if v is None else str(v), _SAFE))
    return "&".join(out)


def decode_properties(text):
    """Decode a property bag into a dict; raise ValueError on a malformed escape."""
    props = {}
    if not text:
        return props
    for item in text.split("&"):
        if not item:
            continue
        eq = item.find("=")
        if eq < 0:
            props[unquote(item)] = ""
        else:
            props[unquote(item[:eq])] = unquote(item[eq + 1:])
    return props


def parse_c2d(topic):
    """Properties of a C2D message topic as a dict, or None if the topic is not C2D."""
    at = topic.find(_C2D_MARK)
    if not topic.startswith("devices/") or at < 0:
        return None
    return decode_properties(topic[at + len(_C2D_MARK):])


def parse_method(topic):
    """(name, rid) of a direct method request topic, or None if it is not one."""
    if not topic.startswith(METHOD_PREFIX):
        return None
    rest = topic[len(METHOD_PREFIX):]
    slash = rest.find("/")
    if slash == 0 or not rest:
        raise ValueError("method request without a name: " + topic[:80])
    rid = _query(rest[slash + 1:]).get("$rid") if slash > 0 else None
    if not rid:
        raise ValueError("method request without $rid: " + topic[:80])
    return unquote(rest[:slash]), rid


def parse_twin_response(topic):
    """(status, rid, version or None) of a twin response topic, or None if it is not one."""
    if not topic.startswith(TWIN_RES_PREFIX):
        return None
    rest = topic[len(TWIN_RES_PREFIX):]
    slash = rest.find("/")
    status = rest[:slash] if slash >= 0 else rest
    if not _digits(status):
        raise ValueError("twin response with a bad status: " + topic[:80])
    q = _query(rest[slash + 1:]) if slash >= 0 else {}
    return int(status), q.get("$rid"), _int_or_none(q.get("$version"))


def parse_desired(topic):
    """The $version of a desired-properties patch topic, or None if it is not one."""
    if not topic.startswith(DESIRED_PREFIX):
        return None
    version = _int_or_none(_query(topic[len(DESIRED_PREFIX):]).get("$version"))
    if version is None:
        raise ValueError("desired patch without $version: " + topic[:80])
    return version


def _query(tail):
    # "?$rid=1&$version=2" -> dict; the leading '?' is optional.
    if tail.startswith("?"):
        tail = tail[1:]
    return decode_properties(tail)


def _int_or_none(v):
    if v is None or v == "":
        return None
    if not _digits(v):
        raise ValueError("not a number: %r" % v[:20])
    return int(v)


def _digits(s):
    # ASCII digits only: CPython's isdigit() and int() also take other scripts' digits and
    # MicroPython's do not; the device must read a topic as the host does.
    if not s:
        return False
    for b in s.encode():  # bytes, not one-character strs, which MicroPython interns (url.py)
        if b < 48 or b > 57:
            return False
    return True
