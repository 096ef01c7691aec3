"""Hub-side actions on a running `edgekit gateway serve`, found through DATA/gateway.json.

These are what IoT Hub's service API does for a real device: read telemetry, send
cloud-to-device messages, invoke direct methods, read and patch twins. Errors are
core.HubError (with the HTTP status IoT Hub would answer) or control.NotRunning.
"""
import os

from edgekit.gateway import control, store
from edgekit.gateway.control import NotRunning  # noqa: F401  (part of this API)
from edgekit.gateway.core import HubError  # noqa: F401  (part of this API)


def read_telemetry(data_dir):
    """Stored telemetry, oldest first: [{"device", "module", "properties", "body", "time"}].

    Read from DATA/telemetry.jsonl, so it works whether or not the gateway is running.
    """
    return store.read_telemetry(os.fspath(data_dir))


def send_c2d(data_dir, device_id, body, properties=None):
    """Queue a C2D message; returns {"mid": message id, "delivered": True if the device already acked it}."""
    mid, delivered = control.call(data_dir, "send_c2d", device_id=device_id, body=body,
                                  properties=dict(properties or {}))
    return {"mid": mid, "delivered": delivered}


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


def get_twin(data_dir, device_id, module_id=None):
    """The twin: {"desired": {..., "$version": n}, "reported": {..., "$version": m}}."""
    return control.call(data_dir, "get_twin", device_id=device_id, module_id=module_id)


def status(data_dir):
    """Connected identities of the running gateway."""
    return control.call(data_dir, "status")
