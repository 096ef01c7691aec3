"""IoT Hub's cloud-to-device system properties, as they travel in a device-bound topic.

IoT Hub writes them into the topic's property bag as `$.mid`, `$.cid`, `$.uid`, `$.ct`,
`$.ce` and `$.exp` (absolute expiry, ISO 8601 UTC), beside `$.to` and the custom ones; the
SDKs read exactly these back (azure-iot-sdk-python, mqtt_topic_iothub.py,
extract_message_properties_from_topic). An expired message is not delivered.
"""
import datetime

SYSTEM = ("$.mid", "$.cid", "$.uid", "$.ct", "$.ce", "$.exp")


class C2DError(ValueError):
    """A C2D message IoT Hub would refuse (HTTP 400)."""


def system_properties(system):
    """The given system properties as strings (empty ones left out); C2DError for any other name."""
    out = {}
    for k, v in (system or {}).items():
        if k not in SYSTEM:
            raise C2DError(f"{k!r} is not a C2D system property; use one of {', '.join(SYSTEM)}")
        if v is not None and str(v):
            out[k] = str(v)
    if "$.exp" in out:
        exp = parse_time(out["$.exp"], "$.exp")
        if exp <= datetime.datetime.now(datetime.timezone.utc):
            raise C2DError(f"expiry {out['$.exp']} is already past; give a later time")
        out["$.exp"] = iso_utc(exp)
    return out


def parse_time(text, what):
    """An ISO 8601 time (Z or an offset; naive means UTC) as an aware datetime; C2DError otherwise."""
    try:
        t = datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise C2DError(f"{what} {text!r} is not an ISO 8601 time such as 2026-01-31T12:00:00Z")
    return t if t.tzinfo else t.replace(tzinfo=datetime.timezone.utc)


def iso_utc(t):
    """An aware datetime as IoT Hub writes times: UTC, milliseconds, Z."""
    t = t.astimezone(datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def expired(message, now=None):
    """True when a queued message's $.exp is in the past."""
    exp = message.get("properties", {}).get("$.exp")
    if not exp:
        return False
    now = now or datetime.datetime.now(datetime.timezone.utc)
    try:
        return parse_time(exp, "$.exp") <= now
    except C2DError:
        return False
