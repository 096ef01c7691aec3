"""Hub-side actions on a running `edgekit gateway serve`, found through DATA/gateway.json.

These are what IoT Hub's service API does for a real device: read telemetry, send
cloud-to-device messages, invoke direct methods, read and patch twins. Errors are
core.HubError (with the HTTP status IoT Hub would answer) or control.NotRunning.
"""
import json
import os
import time

from edgekit.gateway import GATEWAY_JSON, c2d, control, registry, store, upstream as _upstream
from edgekit.gateway.control import NotRunning  # noqa: F401  (part of this API)
from edgekit.gateway.core import HubError


def read_telemetry(data_dir):
    """Stored telemetry, oldest first: [{"device", "module", "properties", "body", "time"}].

    Read from DATA/telemetry.jsonl, so it works whether or not the gateway is running.
    """
    return store.read_telemetry(os.fspath(data_dir))


def check_source(data_dir, device_id=None, module_id=None):
    """HubError 404 when there is nothing a telemetry read could ever find: a folder where no
    gateway ran (no registry, no gateway.json, no telemetry), or a device neither registered nor
    in the stored telemetry. An empty answer then would read as "the device sent nothing"."""
    data_dir = os.fspath(data_dir)
    if not any(os.path.exists(os.path.join(data_dir, f)) for f in (registry.REGISTRY, GATEWAY_JSON, store.TELEMETRY)):
        raise HubError(404, f"no gateway has run in {data_dir}: there is no telemetry to read; start one with "
                            "'edgekit gateway serve', or give its folder with --data (env EDGEKIT_GATEWAY_DATA)")
    if device_id is None:
        return
    doc = registry.load(data_dir)
    if registry.lookup(doc, device_id, module_id) is not None:
        return
    # A removed device's stored messages are still its messages.
    if any(_matches(r, device_id, module_id, None) for r in store.read_telemetry(data_dir)):
        return
    raise HubError(404, registry.unknown(data_dir, device_id, module_id, doc=doc))


def telemetry(data_dir, device_id=None, module_id=None, since=None, wait=None, follow=False, poll=0.2):
    """Yield stored telemetry records, oldest first, each with "payload": the body decoded.

    device_id/module_id keep one identity's; since (an aware datetime) keeps later ones.
    wait: seconds to wait for the first matching record (HubError 504 when none comes);
    follow: keep yielding new records (for `wait` seconds when given, else until interrupted).
    Read from DATA/telemetry.jsonl, so it works whether or not the gateway is running.
    """
    deadline = None if wait is None else time.monotonic() + wait
    found = 0

    def done():
        if deadline is not None and time.monotonic() >= deadline:
            return True
        return not follow and found > 0

    for record in store.follow_telemetry(os.fspath(data_dir), follow=follow or wait is not None, poll=poll,
                                         stop=done):
        if _matches(record, device_id, module_id, since):
            found += 1
            yield decoded(record)
    if wait is not None and not found:
        who = f" from {device_id}{'/' + module_id if module_id else ''}" if device_id else ""
        raise HubError(504, f"no telemetry{who}{' since ' + c2d.iso_utc(since) if since else ''} "
                            f"within {wait:g} s")


def _matches(record, device_id, module_id, since):
    if device_id is not None and record.get("device") != device_id:
        return False
    if module_id is not None and record.get("module") != module_id:
        return False
    if since is not None:
        try:
            return c2d.parse_time(record.get("time", ""), "time") >= since
        except c2d.C2DError:
            return False
    return True


def decoded(record):
    """The record with "payload": a JSON body parsed, a text body as it is, a hex body as hex."""
    out = dict(record)
    body = record.get("body", "")
    out["payload"] = body
    if record.get("body_encoding") != "hex":
        try:
            out["payload"] = json.loads(body)
        except ValueError:
            pass
    return out


def send_c2d(data_dir, device_id, body, properties=None, system=None, wait=None, poll=0.1):
    """Queue a C2D message: {"mid", "state", "delivered"}, returned once it is queued, as IoT Hub does.

    state is "queued" (the device has not acknowledged it yet) or, with wait (seconds), whatever
    it became within that time ("delivered", "expired"). Nothing waits on the gateway meanwhile:
    each look is its own short request (c2d_state).
    system: IoT Hub system properties by topic name ($.mid, $.cid, $.ct, $.ce, $.exp; see c2d.SYSTEM).
    """
    args = {"device_id": device_id, "body": body, "properties": dict(properties or {})}
    if system:
        args["system"] = dict(system)
    sent = control.call(data_dir, "send_c2d", **args)
    state = sent["state"]
    if wait:
        deadline = time.monotonic() + wait
        while state == "queued" and time.monotonic() < deadline:
            time.sleep(poll)
            state = c2d_state(data_dir, device_id, sent["mid"])
    return {"mid": sent["mid"], "state": state, "delivered": state == "delivered"}


def c2d_state(data_dir, device_id, mid):
    """What became of a C2D message: "queued", "delivered", "expired" or "unknown"."""
    return control.call(data_dir, "c2d_state", device_id=device_id, mid=mid)["state"]


def invoke_method(data_dir, device_id, name, payload=None, timeout=30, module_id=None):
    """Invoke a direct method and wait for the answer: (status, payload).

    HubError 404 when the identity is offline or not subscribed to methods, 504 on timeout.
    """
    status, answer = control.call(data_dir, "invoke_method", wait=timeout + 10, device_id=device_id,
                                  name=name, payload=payload, timeout=timeout, module_id=module_id)
    return status, answer


def update_twin(data_dir, device_id, desired_patch, module_id=None):
    """Apply a desired-properties patch; return the new desired $version."""
    return control.call(data_dir, "update_twin", device_id=device_id, desired_patch=desired_patch,
                        module_id=module_id)


def update_tags(data_dir, device_id, tags_patch, module_id=None):
    """Merge a tags patch (null deletes a tag) into the twin; return the tags now."""
    return control.call(data_dir, "update_tags", device_id=device_id, tags_patch=tags_patch, module_id=module_id)


def get_twin(data_dir, device_id, module_id=None):
    """The twin: {"desired": {..., "$version": n}, "reported": {..., "$version": m}}."""
    return control.call(data_dir, "get_twin", device_id=device_id, module_id=module_id)


def status(data_dir):
    """Connected identities of the running gateway."""
    return control.call(data_dir, "status")


def upstream(data_dir, state=None):
    """The gateway's link to IoT Hub: {"upstream", "held", "expired", "ttl", "reported"}; state sets it first."""
    return control.call(data_dir, "upstream", state=state)


def held_telemetry(data_dir, device_id=None, module_id=None):
    """Telemetry the gateway holds for IoT Hub (received while offline), oldest first, decoded.

    Read from DATA/held.jsonl, so it works whether or not the gateway is running; each record has
    "held_at" (when the gateway stored it, Unix seconds).
    """
    for entry in _upstream.read_held(data_dir):
        record = entry.get("record") or {}
        if _matches(record, device_id, module_id, None):
            out = decoded(record)
            out["held_at"] = entry.get("stored")
            yield out


def expired_count(data_dir):
    """How many held messages were dropped past the store-and-forward time to live."""
    return _upstream.read_state(data_dir)["expired"]
