# The device twin: the whole document fetched after each connect, desired patches as they
# come, and the reported properties that describe the device. Twin traffic comes at connect
# and with the odd patch, so azure_edge.client loads this module for each twin message and
# unloads it again rather than keep its code in the heap.
import gc
import json

from azure_edge import run_and_unload, topics
from adafruit_ticks import ticks_add, ticks_ms


def on_message(c, topic, msg):
    """Handle a twin response (`$iothub/twin/res/...`) or a desired patch for client c."""
    if topic.startswith(topics.DESIRED_PREFIX):
        apply_desired(c, _json_obj(msg), topics.parse_desired(topic))
        return
    status, rid, _version = topics.parse_twin_response(topic)
    if rid is not None and rid == c._twin_rid:
        c._twin_rid = None
        if status != 200:
            # Throttled (429) or the gateway busy (5xx): ask again later, backing off.
            delay = min(300, 5 << min(c._twin_tries, 6))
            c._twin_tries += 1
            c._twin_at = ticks_add(ticks_ms(), delay * 1000)
            c.log("twin GET refused with status %d; asking again in %d s" % (status, delay))
            return
        c._twin_tries = 0
        apply_desired(c, _json_obj(msg).get("desired") or {}, None, whole=True)
    elif status >= 300:
        c.log("twin request $rid=%s failed with status %d" % (rid, status))
    elif status == 200:
        # Only a GET is answered with 200, and not the one we wait for: stale or unknown.
        c.log("ignored twin response with unknown $rid=%s" % rid)


def apply_desired(c, desired, version, whole=False):
    """Apply desired properties (a patch, or with whole the twin's whole desired section);
    patches no newer than the last one seen are ignored. Reports the device afterwards."""
    if not isinstance(desired, dict):
        raise ValueError("desired properties are not a JSON object")
    if version is None:
        version = desired.get("$version")
    if isinstance(version, int) and version <= c._desired_version and not whole:
        c.log("ignored stale desired patch $version=%d" % version)
        return
    if isinstance(version, int):
        c._desired_version = version
    if "interval" in desired and set_interval(c, desired["interval"])[0] != 200:
        c.log("desired 'interval' ignored: it must be a number of seconds (0.1-86400)")
    if c.on_desired:
        c.on_desired(desired, whole)
    if c.du is not None:
        # Device Update's component is handled from the loop, not in MiniMQTT's receive path
        # with the message in the heap: kept until then (azure_edge/adu_boot.py, kick).
        c.du["twin"] = (desired, whole)
        if c.adu is None:
            import azure_edge
            c.adu = azure_edge  # its step() loads the agent
    if c.info is not None:
        c.report(device_report(c))


def set_interval(c, payload):
    """The built-in set_interval method (and desired 'interval'): seconds, 0.1 to 86400."""
    seconds = payload.get("seconds") if isinstance(payload, dict) else payload
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
            or not 0.1 <= seconds <= 86400:
        return 400, {"error": "give seconds as a number from 0.1 to 86400"}
    c.interval = seconds
    return 200, {"interval": seconds}


def device_report(c):
    """Reported properties that describe the device now."""
    r = dict(c.info)
    r["interval"] = c.interval
    r["queued"] = len(c.outbox)
    r["dropped"] = getattr(c.outbox, "dropped", 0)
    r["set_aside"] = c.set_aside
    r["methods"] = list(c.methods)  # what the hub side may call (the web view lists them)
    r["free_heap"] = gc.mem_free() if hasattr(gc, "mem_free") else None
    # The IDF heap, read now through the adapter function app.start put in info: on esp32,
    # where mbedTLS's buffers and Wi-Fi live, {"free", "largest_block"}; null elsewhere.
    idf = r.get("idf_heap")
    r["idf_heap"] = idf() if idf else None
    return r


def _json_obj(msg):
    try:
        obj = json.loads(msg)
    except ValueError:
        raise ValueError("body is not JSON")
    if not isinstance(obj, dict):
        raise ValueError("body is not a JSON object")
    return obj
