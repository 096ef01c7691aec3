"""How big a twin may grow: IoT Hub's 32 KB for the desired and for the reported properties.

edgeHub checks each reported patch before it stores it (`Hub.Core/twin/StoringTwinManager.cs`
`UpdateReportedPropertiesAsync` -> `ReportedPropertiesValidator.Validate`, whose
`ValidateTwinCollectionSize` throws InvalidOperationException "Twin properties size {size} exceeds
maximum 32768" over `TwinPropertyDocMaxLength` = 32 * 1024, "taken from IoTHub"); the device gets
`$iothub/twin/res/400/?$rid=R` with an empty body (`Hub.Core/device/DeviceMessageHandler.cs`
`HandleTwinOperationException`: InvalidOperationException or ArgumentException -> 400). IoT Hub
itself caps the whole reported and the whole desired document at 32 KB each (IoT Hub quotas,
"device twin size") and refuses an update that would pass it; edgeHub would answer such a patch
204 from its own store and fail when it syncs it to the hub, so a twin never holds more there.
Here both are refused at once with 400, which keeps every twin (and so every twin file and
every twin GET) under 64 KB.
"""
import copy
import json
import re

MAX_PROPERTIES = 32 * 1024  # bytes of one side's JSON, without $version
MAX_TAGS = 8 * 1024  # IoT Hub quotas, "device twin size": 8 KB for the tags section


def size(properties):
    """Bytes of a properties document as Newtonsoft writes it (compact UTF-8), $ names left out."""
    plain = {k: v for k, v in properties.items() if not k.startswith("$")}
    return len(json.dumps(plain, separators=(",", ":"), ensure_ascii=False).encode())


# IoT Hub's property and tag names: up to 128 characters without '.', '$', space or control
# characters (iot-hub-devguide-device-twins, "Tags and properties format").
_NAME = re.compile(r"[^.$ \x00-\x1f\x7f]{1,128}")


def refusal(current, patch, side, merge):
    """Why IoT Hub or edgeHub refuses this patch of one side ("reported", "desired" or "tags"), or None."""
    if side == "tags":
        bad = next((k for k in patch if not _NAME.fullmatch(k)), None)
        if bad is not None:
            return (f"tag name {bad[:130]!r} must be 1 to 128 characters without '.', '$', spaces or"
                    " control characters (IoT Hub's rule)")
    cap = MAX_TAGS if side == "tags" else MAX_PROPERTIES
    own = size(patch)
    if own > cap:
        return f"{side} patch of {own} bytes is over the {cap} bytes IoT Hub and edgeHub allow"
    after = copy.deepcopy(current)
    merge(after, patch)
    total = size(after)
    if total > cap:
        what = side if side == "tags" else side + " properties"
        return (f"{what} would be {total} bytes, over IoT Hub's {cap}; "
                "remove some (a null value deletes a property)")
    return None
