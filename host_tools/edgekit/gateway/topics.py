"""edgeHub's MQTT topic names and property bags, with the gateway's own code (never the firmware's).

The device builds these with firmware/azure_edge/topics.py and url.py. If the gateway parsed them
with the same code, a bug there (a space written as '+', a '/' left raw in a value) would be made
on one side and accepted on the other, and every end-to-end test would pass: so this module is
written from edgeHub's own source, with CPython's urllib.parse, and shares nothing with the board.

- Inbound telemetry topics are matched against `mqttTopicNameConversion.InboundTemplates`
  (Azure/iotedge `edge-hub/core/src/Microsoft.Azure.Devices.Edge.Hub.Service/appsettings_hub.json`):
  `devices/{deviceId}/messages/events[/[{params}[/]]]` and the same under `/modules/{moduleId}`.
  A `{name}` matches one segment, `[^/]*` (Azure/azure-iot-protocol-gateway
  `src/ProtocolGateway.Core/UriPathTemplate.cs` `Compile`), so a property bag holding a raw '/'
  matches no template: `MessageAddressConverter.TryParseProtocolMessagePropsFromAddress` finds
  nothing, `ProtocolGatewayMessageConverter.ToMessage` throws and `MessagingServiceClient.
  ProcessMessageAsync` logs and drops the message (the PUBACK still goes).
- `{params}` is read by `UrlEncodedDictionarySerializer.Deserialize` (Azure/azure-iot-sdk-csharp
  `iothub/device/src/Transport/Mqtt/UrlEncodedDictionarySerializer.cs`, the class edgeHub's
  MessageAddressConverter calls): `k=v&k` pairs, '/' ends the bag, a key without a value has a
  null value, a second '=' in a pair or an empty pair is a FormatException, the last of repeated
  keys wins, and every name and value goes through `Uri.UnescapeDataString`: %XX only, '+' stays
  '+'.
- Outbound bags (C2D) are `Serialize`d with `Uri.EscapeDataString`: every byte but the RFC 3986
  unreserved `A-Z a-z 0-9 - . _ ~` is escaped, '$' too (`%24.mid=...`), as edgeHub sends them
  (`MessageAddressConverter.TryBuildProtocolAddressFromEdgeHubMessage`).
"""
from urllib.parse import quote, unquote

API_VERSION = "2021-04-12"
METHODS_FILTER = "$iothub/methods/POST/#"
TWIN_RES_FILTER = "$iothub/twin/res/#"
DESIRED_FILTER = "$iothub/twin/PATCH/properties/desired/#"


def telemetry(device_id, module_id=None):
    """The identity's telemetry topic with its trailing '/': what a property bag follows."""
    if module_id:
        return f"devices/{device_id}/modules/{module_id}/messages/events/"
    return f"devices/{device_id}/messages/events/"


def c2d_filter(device_id):
    """The C2D subscription filter of a device (IoT Hub has no C2D for modules)."""
    return f"devices/{device_id}/messages/devicebound/#"


def c2d_topic(device_id, properties):
    """OutboundTemplates.C2D `devices/{deviceId}/messages/devicebound`, '/', the serialized bag."""
    return f"devices/{device_id}/messages/devicebound/" + encode_properties(properties)


def twin_response(status, rid, version=None):
    """OutboundTemplates.TwinEndpoint `$iothub/twin/res/{statusCode}/?$rid={correlationId}`."""
    topic = f"$iothub/twin/res/{status}/?$rid={quote(rid, safe='$')}"
    return topic if version is None else topic + f"&$version={version}"


def telemetry_properties(topic, device_id, module_id=None):
    """The property bag of a telemetry topic of this identity, as a dict; None when the topic
    matches none of the inbound templates (edgeHub drops it). ValueError for a bag that
    Deserialize refuses (edgeHub drops that too)."""
    own = telemetry(device_id, module_id)
    if topic == own[:-1] or topic == own:
        return {}
    if not topic.startswith(own):
        return None
    params = topic[len(own):]
    if params.endswith("/"):  # the templates ending in "{params}/"
        params = params[:-1]
    if "/" in params:  # {params} is one segment: no template matches
        return None
    return decode_properties(params)


def query(topic):
    """The `k=v&...` after the first '?' of a topic ($rid, $version), decoded; {} when it has none."""
    at = topic.find("?")
    return decode_properties(topic[at + 1:]) if at >= 0 else {}


def decode_properties(text):
    """UrlEncodedDictionarySerializer.Deserialize, with urllib.parse.unquote for UnescapeDataString.

    Returns {name: value}; a key without a value maps to "" (edgeHub's null; JSON keeps it a
    string). ValueError where the serializer throws its FormatException.
    """
    props = {}
    if not text:
        return props
    text, cut, _ = text.partition("/")  # '/' ends the bag (the Finish state)
    pairs = text.split("&")
    if cut and not pairs[-1]:
        pairs.pop()  # "a=1&/" and "/": the '/' is read where a name could start, and ends the bag
    for n, pair in enumerate(pairs):
        if not pair or pair.startswith("="):
            # ReadyToReadKey meets '&', '=' or the end: "a=1&", "&a", "a&&b", "=v"
            raise ValueError(f"property bag {text[:80]!r}: empty name at pair {n + 1}")
        name, eq, value = pair.partition("=")
        if "=" in value:
            raise ValueError(f"property bag {text[:80]!r}: a second '=' in pair {n + 1}")
        # unquote: %XX only ('+' stays '+', as Uri.UnescapeDataString); an escape that is not
        # %XX is kept as written, as .NET does.
        props[unquote(name)] = unquote(value) if eq and value else ""
    return props


def encode_properties(props):
    """UrlEncodedDictionarySerializer.Serialize: `k=v&k=v`, each escaped as Uri.EscapeDataString."""
    return "&".join(quote(str(k), safe="") + "=" + quote("" if v is None else str(v), safe="")
                    for k, v in props.items())
